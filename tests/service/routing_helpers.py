"""Driving routing_service's DistributeLead in service tests: routing replicas on one database,
with a real delivery service, a real buyer over HTTP, and a client that acknowledges offerings."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import grpc
from aiohttp import web

from delivery_service.config import Settings as DeliverySettings
from delivery_service.server import create_server as create_delivery
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, parse_config
from leadflow.kit import ServiceSettings, stop_server
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.pricing.v1 import pricing_service_pb2_grpc
from leadflow.routing.v1 import routing_service_pb2 as pb
from leadflow.routing.v1 import routing_service_pb2_grpc as pb_grpc
from leadflow.wire import LeadData, PriceAudit, outcome_from_proto, to_proto
from pricing_service.server import create_server as create_pricing
from routing_service.peers import Addresses, Peers
from routing_service.server import create_server
from routing_service.store import RoutingStore
from tests.conftest import Database

RecipientEvent = ledger_service_pb2.RecipientEvent
# Called with each `offering`: True acknowledges it, False closes the stream unacknowledged.
Acknowledge = Callable[[RecipientEvent], Awaitable[bool]]


@dataclass
class Buyers:
    """Buyer endpoints `POST /<name>` (pricing services too): each records what it got, then
    answers with its status (200 unless a test sets another) and body once `gate` is open (if
    it is `gated`: all are unless a test names some)."""

    statuses: dict[str, int] = field(default_factory=dict)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gated: set[str] | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.received.append((name, await request.json()))
        if self.gated is None or name in self.gated:
            await self.gate.wait()
        body = self.bodies.get(name, {"ok": True})
        return web.json_response(body, status=self.statuses.get(name, 200))

    def names(self) -> list[str]:
        return [name for name, _ in self.received]


@dataclass
class Routing:
    config: Config
    stubs: list[pb_grpc.RoutingServiceStub]
    stores: list[RoutingStore]
    buyers: Buyers
    pricing: pricing_service_pb2_grpc.PricingServiceStub | None = None  # when running


def _settings() -> ServiceSettings:
    return ServiceSettings(
        config_path="", data_dir="", database_url=None, host="127.0.0.1", port=0, metrics_port=None
    )


def closed_port() -> int:
    """A loopback port nothing listens on (a peer that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@asynccontextmanager
async def stores(database: Database, count: int) -> AsyncIterator[list[RoutingStore]]:
    opened = [await RoutingStore.open(database.url, database.schema) for _ in range(count)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


@asynccontextmanager
async def routing_suite(
    config_text: str,
    database: Database,
    count: int = 2,
    pricing: Literal["none", "running", "down"] = "none",
) -> AsyncIterator[Routing]:
    """`count` routing servers built by create_server, each with its own store, on one database,
    offering leads through a real delivery service to `Buyers` (`URL` in `config_text` is their
    base URL). `pricing`: no pricing peer, a real pricing service, or one that is down."""
    buyers = Buyers()
    app = web.Application()
    app.router.add_post("/{name}", buyers.handle)
    async with AsyncExitStack() as stack:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        config = parse_config(config_text.replace("URL", url), {})

        delivery, delivery_port, delivery_health = await create_delivery(
            DeliverySettings(service=_settings()), config
        )
        stack.push_async_callback(stop_server, delivery, delivery_health, 1)
        addresses = Addresses(delivery=f"127.0.0.1:{delivery_port}")
        pricing_stub = None
        if pricing == "running":
            server, port, health = await create_pricing("127.0.0.1:0", config)
            stack.push_async_callback(stop_server, server, health, 1)
            addresses = Addresses(delivery=addresses.delivery, pricing=f"127.0.0.1:{port}")
            channel = grpc.aio.insecure_channel(addresses.pricing)
            stack.push_async_callback(channel.close)
            pricing_stub = pricing_service_pb2_grpc.PricingServiceStub(channel)
        elif pricing == "down":
            addresses = Addresses(delivery=addresses.delivery, pricing=f"127.0.0.1:{closed_port()}")

        opened = await stack.enter_async_context(stores(database, count))
        stubs = []
        for store in opened:
            peers = Peers(addresses)
            stack.push_async_callback(peers.close)
            server, port, health = await create_server("127.0.0.1:0", config, store, peers)
            stack.push_async_callback(stop_server, server, health, 1)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stack.push_async_callback(channel.close)
            stubs.append(pb_grpc.RoutingServiceStub(channel))
        try:
            yield Routing(config, stubs, opened, buyers, pricing_stub)
        finally:
            buyers.gate.set()  # no buyer answer left hanging while the servers stop


def step_quote(
    stage_index: int, step_index: int, price: str, layer: str = "buyer_rules"
) -> lead_pb2.StepQuote:
    """A sale quote as QuotePurchasePrice gives it with `quote_sales`."""
    amount = Decimal(price)
    return lead_pb2.StepQuote(
        stage_index=stage_index,
        step_index=step_index,
        price=to_proto(amount),
        audit=PriceAudit(layer=layer, amount=amount).to_proto(),
    )


class Distribution(NamedTuple):
    """The lead's recipient events (an offering replaced by its answer), outcome and reason."""

    events: list[RecipientEvent]
    outcome: str
    reason: str


async def _acknowledge_all(event: RecipientEvent) -> bool:
    return True


async def distribute(
    stub: pb_grpc.RoutingServiceStub,
    lead: LeadData,
    price: Decimal | str,
    quotes: Sequence[lead_pb2.StepQuote] = (),
    *,
    acknowledge: Acknowledge = _acknowledge_all,
    deadline_s: float = 20,
) -> Distribution:
    """One DistributeLead call as the gateway makes it: the lead, then an acknowledgement for
    each `offering` (unless `acknowledge` says no: the stream is then closed without one).
    Raises the call's error; cancelling the caller cuts the stream."""
    call = stub.DistributeLead(timeout=deadline_s)
    try:
        await call.write(
            pb.DistributeLeadRequest(
                lead=lead.to_proto(), purchase_price=to_proto(Decimal(price)), sale_quotes=quotes
            )
        )
        events: dict[str, RecipientEvent] = {}
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise AssertionError(f"stream ended without its last message: {await call.code()}")
            for event in response.recipients:
                events[event.id] = event
            if response.HasField("offering"):
                offering = response.offering
                assert offering.outcome == lead_pb2.OUTCOME_UNKNOWN
                events[offering.id] = offering
                if await acknowledge(offering):
                    await call.write(pb.DistributeLeadRequest(acknowledged_id=offering.id))
                else:
                    await call.done_writing()
            if response.done:
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
                assert await call.code() == grpc.StatusCode.OK
                return Distribution(
                    list(events.values()), outcome_from_proto(response.outcome), response.reason
                )
    finally:
        call.cancel()  # a no-op once the call has ended


def offered(events: Sequence[RecipientEvent]) -> list[tuple[str, int]]:
    """(buyer, outcome) of each offer, in order."""
    return [(e.buyer_id, e.outcome) for e in events if e.outcome != lead_pb2.OUTCOME_SKIP]


def skipped(events: Sequence[RecipientEvent]) -> list[tuple[str, str]]:
    """(buyer, reason) of each skipped step, in order."""
    return [(e.buyer_id, e.reason) for e in events if e.outcome == lead_pb2.OUTCOME_SKIP]
