"""ledger_service settings, read from the environment once in main()."""

from __future__ import annotations

from dataclasses import dataclass

from leadflow.kit import ServiceSettings

DEFAULT_PORT = 50054
DEFAULT_METRICS_PORT = 50064


@dataclass(frozen=True)
class Settings:
    """The common service settings plus the PostgreSQL schema the ledger owns."""

    service: ServiceSettings
    schema: str = "ledger"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(service=ServiceSettings.from_env(DEFAULT_PORT, DEFAULT_METRICS_PORT))

    @property
    def address(self) -> str:
        return self.service.address
