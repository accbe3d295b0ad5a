"""routing_service settings, read from the environment once in main()."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from leadflow.kit import ServiceSettings, env_number
from routing_service.peers import STATS_TTL_S, Addresses
from routing_service.router import DEFAULT_HOLD

DEFAULT_PORT = 50052
DEFAULT_METRICS_PORT = 50062


@dataclass(frozen=True)
class Settings:
    """The common settings, routing's schema, its peers and how long a reservation lives."""

    service: ServiceSettings
    peers: Addresses
    schema: str = "routing"
    hold: timedelta = DEFAULT_HOLD
    stats_ttl_s: float = STATS_TTL_S

    @classmethod
    def from_env(cls) -> Settings:
        hold = env_number("LEADFLOW_ROUTING_HOLD_SECONDS", DEFAULT_HOLD.total_seconds(), 0, 86_400)
        return cls(
            service=ServiceSettings.from_env(DEFAULT_PORT, DEFAULT_METRICS_PORT),
            peers=Addresses(
                pricing=os.environ.get("LEADFLOW_PRICING_ADDR") or None,
                delivery=os.environ.get("LEADFLOW_DELIVERY_ADDR") or None,
                ledger=os.environ.get("LEADFLOW_LEDGER_ADDR") or None,
            ),
            hold=timedelta(seconds=hold),
            stats_ttl_s=env_number("LEADFLOW_ROUTING_STATS_SECONDS", STATS_TTL_S, 0, 86_400),
        )
