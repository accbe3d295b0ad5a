"""gateway settings, read from the environment once in main()."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.clients import Addresses
from gateway.http_server import DEFAULT_LIMITS, HttpLimits
from leadflow.kit import ServiceSettings

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


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None


def settings_from_env() -> GatewaySettings:
    service = ServiceSettings.from_env(DEFAULT_PORT, DEFAULT_METRICS_PORT)
    return GatewaySettings(
        service=service,
        http_host=os.environ.get("LEADFLOW_HTTP_HOST", service.host),
        http_port=int(os.environ.get("LEADFLOW_HTTP_PORT", str(DEFAULT_HTTP_PORT))),
        addresses=Addresses(
            pricing=os.environ.get("LEADFLOW_PRICING_ADDR", "127.0.0.1:50051"),
            routing=os.environ.get("LEADFLOW_ROUTING_ADDR", "127.0.0.1:50052"),
            delivery=os.environ.get("LEADFLOW_DELIVERY_ADDR", "127.0.0.1:50053"),
            ledger=os.environ.get("LEADFLOW_LEDGER_ADDR", "127.0.0.1:50054"),
        ),
        http_limits=HttpLimits(
            header_timeout_s=_seconds("LEADFLOW_HTTP_HEADER_TIMEOUT", HttpLimits.header_timeout_s),
            body_timeout_s=_seconds("LEADFLOW_HTTP_BODY_TIMEOUT", HttpLimits.body_timeout_s),
        ),
    )
