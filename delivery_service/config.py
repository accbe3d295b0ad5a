"""The delivery service's settings, read from the environment once in main()."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BeforeValidator

from delivery_service.batches import Backoff
from delivery_service.runner import RunnerSettings
from leadflow.settings import Port, ServiceSettings, integer, number

Seconds = Annotated[float, BeforeValidator(number(0, 86_400))]


class Settings(ServiceSettings):
    """Where to listen, the recent results that answer a retried DeliverLead, where the ledger
    is (for batch outcomes) and how the batch scheduler runs."""

    grpc_port: Port = 50053
    metrics_port: Port = 50063
    delivery_recent_results: Annotated[int, BeforeValidator(integer(0, 10_000_000))] = 10_000
    shutdown_grace_seconds: Annotated[float, BeforeValidator(number(0, 3600))] = 10.0
    ledger_addr: str | None = None
    # Where routing is: recovery settles the caps of a late outcome there (SPEC 8.1).
    routing_addr: str | None = None
    delivery_tick_seconds: Seconds = 1.0
    delivery_lease_seconds: Seconds = 60.0
    delivery_retry_seconds: Seconds = 30.0
    delivery_max_retry_seconds: Seconds = 900.0

    db_schema: ClassVar[str] = "delivery"

    @property
    def runner(self) -> RunnerSettings:
        return RunnerSettings(
            tick_seconds=self.delivery_tick_seconds,
            lease_seconds=self.delivery_lease_seconds,
            backoff=Backoff(self.delivery_retry_seconds, self.delivery_max_retry_seconds),
        )
