"""routing_service settings, read from the environment once in main()."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, ClassVar

from pydantic import BeforeValidator

from leadflow.settings import Port, ServiceSettings, number
from routing_service.peers import STATS_TTL_S, Addresses
from routing_service.router import DEFAULT_HOLD

Seconds = Annotated[float, BeforeValidator(number(0, 86_400))]


class Settings(ServiceSettings):
    """The common settings, routing's peers, how long a reservation lives and how long peers'
    statistics are reused."""

    grpc_port: Port = 50052
    metrics_port: Port = 50062
    pricing_addr: str | None = None
    delivery_addr: str | None = None
    ledger_addr: str | None = None
    routing_hold_seconds: Seconds = DEFAULT_HOLD.total_seconds()
    routing_stats_seconds: Seconds = STATS_TTL_S

    db_schema: ClassVar[str] = "routing"

    @property
    def peers(self) -> Addresses:
        return Addresses(self.pricing_addr, self.delivery_addr, self.ledger_addr)

    @property
    def hold(self) -> timedelta:
        return timedelta(seconds=self.routing_hold_seconds)
