"""ledger_service settings, read from the environment once in main()."""

from __future__ import annotations

from typing import ClassVar

from leadflow.settings import Port, ServiceSettings


class Settings(ServiceSettings):
    """The common service settings; the ledger owns the `ledger` PostgreSQL schema."""

    grpc_port: Port = 50054
    metrics_port: Port = 50064

    db_schema: ClassVar[str] = "ledger"
