"""The delivery service's settings, read from the environment once in main()."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from delivery_service.runner import RunnerSettings
from leadflow.kit import ServiceSettings, env_int, env_number

DEFAULT_PORT = 50053
DEFAULT_METRICS_PORT = 50063


@dataclass(frozen=True)
class Settings:
    """Where to listen, the recent results that answer a retried DeliverLead, where the ledger
    is (for batch outcomes) and how the batch scheduler runs."""

    service: ServiceSettings
    recent_results: int = 10_000
    grace_seconds: float = 10.0
    ledger_address: str | None = None
    # Where routing is: recovery settles the caps of a late outcome there (SPEC 8.1).
    routing_address: str | None = None
    schema: str = "delivery"
    runner: RunnerSettings = field(default_factory=RunnerSettings)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            service=ServiceSettings.from_env(DEFAULT_PORT, DEFAULT_METRICS_PORT),
            recent_results=env_int("LEADFLOW_DELIVERY_RECENT_RESULTS", 10_000, 0, 10_000_000),
            grace_seconds=env_number("LEADFLOW_SHUTDOWN_GRACE_SECONDS", 10, 0, 3600),
            ledger_address=os.environ.get("LEADFLOW_LEDGER_ADDR") or None,
            routing_address=os.environ.get("LEADFLOW_ROUTING_ADDR") or None,
            runner=RunnerSettings.from_env(),
        )
