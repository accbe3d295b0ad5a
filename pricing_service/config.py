"""pricing_service settings, read from the environment once in main()."""

from __future__ import annotations

from leadflow.settings import Port, ServiceSettings


class Settings(ServiceSettings):
    """The common service settings, with pricing's ports."""

    grpc_port: Port = 50051
    metrics_port: Port = 50061
