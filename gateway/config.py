"""gateway settings, read from the environment once in main()."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BeforeValidator

from gateway.clients import Addresses
from gateway.http_server import HttpLimits
from leadflow.settings import Port, ServiceSettings, number

Timeout = Annotated[float, BeforeValidator(number(0.001, 3600))]


class Settings(ServiceSettings):
    """The common settings, the HTTP front door, its request deadlines and where the four
    services are."""

    grpc_port: Port = 50055
    metrics_port: Port = 50065
    # None: LEADFLOW_HOST.
    http_host: str | None = None
    http_port: Port = 8080
    http_header_timeout: Timeout = HttpLimits.header_timeout_s
    http_body_timeout: Timeout = HttpLimits.body_timeout_s
    pricing_addr: str = "127.0.0.1:50051"
    routing_addr: str = "127.0.0.1:50052"
    delivery_addr: str = "127.0.0.1:50053"
    ledger_addr: str = "127.0.0.1:50054"

    db_schema: ClassVar[str] = "gateway"

    @property
    def http_address(self) -> tuple[str, int]:
        return (self.host if self.http_host is None else self.http_host), self.http_port

    @property
    def addresses(self) -> Addresses:
        return Addresses(self.pricing_addr, self.routing_addr, self.delivery_addr, self.ledger_addr)

    @property
    def http_limits(self) -> HttpLimits:
        return HttpLimits(self.http_header_timeout, self.http_body_timeout)
