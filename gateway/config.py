"""gateway settings, read from the environment once in main()."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.clients import Addresses
from gateway.http_server import DEFAULT_LIMITS, HttpLimits
from leadflow.kit import ServiceSettings, env_int, env_number

DEFAULT_PORT = 50055
DEFAULT_METRICS_PORT = 50065
DEFAULT_HTTP_PORT = 8080


@dataclass(frozen=True)
class GatewaySettings:
    service: ServiceSettings
    http_host: str
    http_port: int
    addresses: Addresses
    schema: str = "gateway"
    http_limits: HttpLimits = DEFAULT_LIMITS


def settings_from_env() -> GatewaySettings:
    service = ServiceSettings.from_env(DEFAULT_PORT, DEFAULT_METRICS_PORT)
    return GatewaySettings(
        service=service,
        http_host=os.environ.get("LEADFLOW_HTTP_HOST", service.host),
        http_port=env_int("LEADFLOW_HTTP_PORT", DEFAULT_HTTP_PORT),
        addresses=Addresses(
            pricing=os.environ.get("LEADFLOW_PRICING_ADDR", "127.0.0.1:50051"),
            routing=os.environ.get("LEADFLOW_ROUTING_ADDR", "127.0.0.1:50052"),
            delivery=os.environ.get("LEADFLOW_DELIVERY_ADDR", "127.0.0.1:50053"),
            ledger=os.environ.get("LEADFLOW_LEDGER_ADDR", "127.0.0.1:50054"),
        ),
        http_limits=HttpLimits(
            header_timeout_s=env_number(
                "LEADFLOW_HTTP_HEADER_TIMEOUT", HttpLimits.header_timeout_s, 0.001, 3600
            ),
            body_timeout_s=env_number(
                "LEADFLOW_HTTP_BODY_TIMEOUT", HttpLimits.body_timeout_s, 0.001, 3600
            ),
        ),
    )
