"""External pricing services (SPEC 6.1) against a real HTTP server on loopback: the purchase
layers in every combination, and every way a service can fail falling back within its timeout."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from time import perf_counter
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web

from leadflow.config import parse_config
from leadflow.fields import parse_lead
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from leadflow.wire import LeadData, from_proto
from pricing_service.config import Settings
from pricing_service.server import Deps, create_server

TIMEOUT_MS = 300
FALLBACK = Decimal("4.25")
LOCAL = Settings(host="127.0.0.1", grpc_port=0)


class PricingServiceServer:
    """A pricing service that behaves as its path says, and records what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(await request.json())
        behaviour = request.match_info["behaviour"]
        if behaviour.startswith("price-"):
            return web.json_response({"price": float(behaviour[6:]), "reason": "market"})
        if behaviour == "hang":
            await asyncio.sleep(3600)
        if behaviour == "error":
            return web.json_response({"price": 9}, status=500)
        if behaviour == "abc":
            return web.json_response({"price": "abc"})
        if behaviour == "huge":
            return web.json_response({"price": 2_000_000})
        if behaviour == "drip":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(100):
                await response.write(b" ")
                await asyncio.sleep(0.05)
            return response
        if behaviour == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        raise web.HTTPNotFound()


@pytest.fixture
async def service() -> AsyncIterator[PricingServiceServer]:
    server = PricingServiceServer()
    app = web.Application()
    app.router.add_post("/{behaviour}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


CONFIG = """
account: {{name: Test}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers: [{{id: acme, name: Acme, delivery: {{type: http, url: "http://127.0.0.1:9/"}}}}]
flows:
  - id: auto
    name: Auto
    pricing: {flow}
    sources: [{{source: vendor, pricing: {source}}}]
    stages: [{{name: main, steps: [{{buyer: acme}}]}}]
"""

LEAD = LeadData(
    "L1", "auto", "vendor", parse_lead({"state": "CA", "phone_1": "5125550142"}), datetime.now(UTC)
)


async def quote(
    text: str, override: str = ""
) -> tuple[pricing_service_pb2.QuotePurchasePriceResponse, float]:
    """A purchase quote through the real pricing server; the reply and how long it took."""
    running = await create_server(LOCAL, Deps(parse_config(text, {})))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pricing_service_pb2_grpc.PricingServiceStub(channel)
            request = pricing_service_pb2.QuotePurchasePriceRequest(
                lead=LEAD.to_proto(), override_price_text=override
            )
            started = perf_counter()
            reply = await stub.QuotePurchasePrice(request, timeout=10)
            return reply, perf_counter() - started
    finally:
        await running.stop(0)


def service_block(url: str) -> str:
    return f'service: {{url: "{url}", timeout_ms: {TIMEOUT_MS}, fallback_price: {FALLBACK}}}'


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("hang", f"timeout after {TIMEOUT_MS} ms"),
        ("drip", f"timeout after {TIMEOUT_MS} ms"),
        ("error", "HTTP 500"),
        ("abc", "not a price"),
        ("huge", "not a price"),
        ("close", "connection failed"),
    ],
)
async def test_a_failing_service_gives_the_fallback_within_its_timeout(
    service: PricingServiceServer, behaviour: str, error: str
) -> None:
    text = CONFIG.format(
        flow="null", source="{" + service_block(f"{service.url}/{behaviour}") + "}"
    )
    reply, elapsed = await quote(text)
    assert from_proto(reply.price) == FALLBACK
    audit = reply.audit
    assert (audit.layer, audit.fallback_used) == ("source_service", True)
    assert error in audit.service_error
    # 100 ms of slack: a fresh channel, the reply, and a shared 2-core machine (a bare aiohttp
    # request cut at 300 ms already ends 15-25 ms late here).
    assert elapsed < (TIMEOUT_MS + 100) / 1000, f"{behaviour} took {elapsed * 1000:.0f} ms"


async def test_a_service_price_is_used_with_its_status_and_latency(
    service: PricingServiceServer,
) -> None:
    text = CONFIG.format(flow="{" + service_block(f"{service.url}/price-18.5") + "}", source="null")
    reply, _ = await quote(text)
    assert from_proto(reply.price) == Decimal("18.50")
    assert (reply.audit.layer, reply.audit.service_status, reply.audit.fallback_used) == (
        "flow_service",
        200,
        False,
    )
    assert reply.audit.note == "market"


async def test_the_service_is_sent_the_spec_request(service: PricingServiceServer) -> None:
    text = CONFIG.format(flow="{" + service_block(f"{service.url}/price-1") + "}", source="null")
    await quote(text)
    [sent] = service.received
    assert sent["lead"] == {"state": "CA", "phone_1": "5125550142"}
    assert sent["flow"] == {"id": "auto", "name": "Auto"}
    assert sent["source"] == {"id": "vendor", "name": "Vendor"}
    assert "timestamp" in sent["submission"]
    assert "buyer" not in sent and "purchase_price" not in sent


# The five purchase layers, each absent or present (and rules layers matching or not): the first
# layer that returns a price wins. Each layer has its own amount, so the price names the winner.
AMOUNTS = {
    "override": "1.11",
    "source_service": "2.22",
    "source_rules": "3.33",
    "flow_service": "4.44",
    "flow_rules": "5.55",
}
RULES = {
    "absent": None,
    "no_match": "[{lhv: state, op: is equal to, rhv: NV}]",
    "match": "[{lhv: state, op: is equal to, rhv: CA}]",
}
COMBINATIONS = list(itertools.product([False, True], [False, True], RULES, [False, True], RULES))


def pricing_block(url: str, layer: str, service: bool, rules: str, override: bool = False) -> str:
    parts = []
    if override:
        parts.append("override: true")
    if service:
        parts.append(service_block(f"{url}/price-{AMOUNTS[layer + '_service']}"))
    if RULES[rules] is not None:
        parts.append(f"prices: [{{amount: {AMOUNTS[layer + '_rules']}, rule_set: {RULES[rules]}}}]")
    return "{" + ", ".join(parts) + "}" if parts else "null"


def expected_winner(
    override: bool, source_service: bool, source_rules: str, flow_service: bool, flow_rules: str
) -> str:
    for layer, returns in (
        ("override", override),
        ("source_service", source_service),
        ("source_rules", source_rules == "match"),
        ("flow_service", flow_service),
        ("flow_rules", flow_rules == "match"),
    ):
        if returns:
            return layer
    return "none"


@pytest.mark.parametrize(
    ("override", "source_service", "source_rules", "flow_service", "flow_rules"), COMBINATIONS
)
async def test_first_layer_that_returns_a_price_wins(
    service: PricingServiceServer,
    override: bool,
    source_service: bool,
    source_rules: str,
    flow_service: bool,
    flow_rules: str,
) -> None:
    text = CONFIG.format(
        source=pricing_block(service.url, "source", source_service, source_rules, override),
        flow=pricing_block(service.url, "flow", flow_service, flow_rules),
    )
    reply, _ = await quote(text, override=AMOUNTS["override"] if override else "")
    winner = expected_winner(override, source_service, source_rules, flow_service, flow_rules)
    assert reply.audit.layer == winner
    assert from_proto(reply.price) == Decimal(AMOUNTS.get(winner, "0"))
    assert reply.audit.rule_index == (0 if winner.endswith("_rules") else -1)


def test_the_table_covers_every_combination() -> None:
    assert len(COMBINATIONS) == 2 * 2 * 3 * 2 * 3
    assert {expected_winner(*combination) for combination in COMBINATIONS} == {*AMOUNTS, "none"}


async def test_sale_service_is_sent_the_buyer_and_purchase_price(
    service: PricingServiceServer,
) -> None:
    text = CONFIG.format(flow="null", source="null").replace(
        "{id: acme, name: Acme,",
        "{id: acme, name: Acme, pricing: {" + service_block(f"{service.url}/price-30") + "},",
    )
    running = await create_server(LOCAL, Deps(parse_config(text, {})))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pricing_service_pb2_grpc.PricingServiceStub(channel)
            reply = await stub.QuoteSalePrice(
                pricing_service_pb2.QuoteSalePriceRequest(
                    lead=LEAD.to_proto(),
                    stage_index=0,
                    step_index=0,
                    purchase_price={"units": 12, "nanos": 500_000_000},
                ),
                timeout=10,
            )
    finally:
        await running.stop(0)
    assert (from_proto(reply.price), reply.audit.layer) == (Decimal("30.00"), "buyer_service")
    [sent] = service.received
    assert sent["buyer"] == {"id": "acme", "name": "Acme"}
    assert orjson.loads(orjson.dumps(sent["purchase_price"])) == 12.5
