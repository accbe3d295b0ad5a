"""pricing_service settings, read from the environment once in main()."""

from __future__ import annotations

from leadflow.kit import ServiceSettings

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 50061


def settings_from_env() -> ServiceSettings:
    return ServiceSettings.from_env(DEFAULT_PORT, DEFAULT_METRICS_PORT)
