"""pricing_service and routing_service through their own create_server() on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from leadflow.routing.v1 import routing_service_pb2_grpc
from leadflow.wire import LeadData, from_proto, to_proto
from pricing_service.server import create_server as create_pricing
from routing_service.peers import Addresses, Peers
from routing_service.server import create_server as create_routing
from routing_service.store import RoutingStore
from tests.service.routing_helpers import distribute, skipped

CONFIG = """
account: {name: Test}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers:
  - id: ca-only
    name: CA only
    criteria: [{lhv: state, op: is equal to, rhv: CA, reason: California only}]
    pricing: {prices: [{amount: 40}]}
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - {id: anyone, name: Anyone, delivery: {type: http, url: "http://127.0.0.1:9/"}}
flows:
  - id: auto
    name: Auto
    pricing: {prices: [{amount: 10}, {amount: 12.34, rule_set: [{lhv: state, op: is equal to, rhv: CA}]}]}
    sources: [{source: vendor}]
    stages:
      - name: first-look
        steps: [{buyer: anyone, priority: 2}, {buyer: ca-only, priority: 1}]
  - id: priced
    name: Priced by services and expressions
    pricing: {prices: [{amount: 10}]}
    sources: [{source: vendor}]
    stages:
      - name: mixed
        steps:
          - {buyer: anyone, pricing: {prices: [{amount: "purchase_price * 1.4"}]}}
          - buyer: anyone
            pricing: {service: {url: "http://127.0.0.1:9/", timeout_ms: 200, fallback_price: 3}}
          - {buyer: ca-only}
      - name: later
        steps: [{buyer: anyone}, {buyer: ca-only}]
  - id: wide
    name: A wide stage
    sources: [{source: vendor}]
    stages:
      - name: many
        steps: [{buyer: ca-only}, {buyer: ca-only}, {buyer: ca-only}, {buyer: ca-only},
          {buyer: ca-only}, {buyer: ca-only}, {buyer: ca-only}, {buyer: ca-only},
          {buyer: ca-only}, {buyer: anyone}]
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, {})


def lead(state: str, flow: str = "auto", source: str = "vendor") -> LeadData:
    return LeadData("L1", flow, source, parse_lead({"state": state}), datetime.now(UTC))


@pytest.fixture
async def pricing(config: Config) -> AsyncIterator[pricing_service_pb2_grpc.PricingServiceStub]:
    server, port, _ = await create_pricing("127.0.0.1:0", config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pricing_service_pb2_grpc.PricingServiceStub(channel)
    await server.stop(None)


@pytest.fixture
async def routing_channel(config: Config, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    store = await RoutingStore.open(f"sqlite+aiosqlite:///{tmp_path / 'routing.db'}", "routing")
    server, port, _ = await create_routing("127.0.0.1:0", config, store, Peers(Addresses()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)
    await store.close()


async def test_purchase_price_comes_back_exact_with_its_layer(
    pricing: pricing_service_pb2_grpc.PricingServiceStub,
) -> None:
    reply = await pricing.QuotePurchasePrice(
        pricing_service_pb2.QuotePurchasePriceRequest(lead=lead("California").to_proto()), timeout=5
    )
    assert from_proto(reply.price) == Decimal("12.34")
    assert (reply.audit.layer, reply.audit.rule_index) == ("flow_rules", 1)


async def test_sale_price_uses_the_buyer_rules(
    pricing: pricing_service_pb2_grpc.PricingServiceStub,
) -> None:
    reply = await pricing.QuoteSalePrice(
        pricing_service_pb2.QuoteSalePriceRequest(
            lead=lead("CA").to_proto(),
            stage_index=0,
            step_index=1,
            purchase_price=to_proto(Decimal(10)),
        ),
        timeout=5,
    )
    assert (from_proto(reply.price), reply.audit.layer) == (Decimal("40.00"), "buyer_rules")


async def test_sale_quotes_come_with_the_purchase_price_for_every_rules_priced_step(
    pricing: pricing_service_pb2_grpc.PricingServiceStub,
) -> None:
    request = pricing_service_pb2.QuotePurchasePriceRequest(
        lead=lead("CA", flow="priced").to_proto(), quote_sales=True
    )
    reply = await pricing.QuotePurchasePrice(request, timeout=5)
    # Every stage: step (0, 1) calls a pricing service and (1, 0) has no sale pricing, so
    # routing quotes the one itself and prices the other at $0.00.
    assert [(q.stage_index, q.step_index) for q in reply.sales] == [(0, 0), (0, 2), (1, 1)]
    for quoted in reply.sales:
        alone = await pricing.QuoteSalePrice(
            pricing_service_pb2.QuoteSalePriceRequest(
                lead=request.lead,
                stage_index=quoted.stage_index,
                step_index=quoted.step_index,
                purchase_price=reply.price,
            ),
            timeout=5,
        )
        assert (quoted.price, quoted.audit) == (alone.price, alone.audit)
    assert from_proto(reply.sales[0].price) == Decimal("14.00")  # 1.4 times the purchase
    assert from_proto(reply.sales[2].price) == Decimal("40.00")  # the buyer's rules


async def test_no_sale_quotes_unless_asked_and_a_wide_stage_is_quoted_whole(
    pricing: pricing_service_pb2_grpc.PricingServiceStub,
) -> None:
    unasked = pricing_service_pb2.QuotePurchasePriceRequest(
        lead=lead("CA", flow="priced").to_proto()
    )
    assert list((await pricing.QuotePurchasePrice(unasked, timeout=5)).sales) == []
    wide = pricing_service_pb2.QuotePurchasePriceRequest(
        lead=lead("CA", flow="wide").to_proto(), quote_sales=True
    )
    reply = await pricing.QuotePurchasePrice(wide, timeout=5)
    assert [q.step_index for q in reply.sales] == list(range(9))
    assert {from_proto(q.price) for q in reply.sales} == {Decimal(40)}


@pytest.mark.parametrize(("flow", "source"), [("nope", "vendor"), ("auto", "nope")])
async def test_unknown_flow_or_source_is_not_found(
    pricing: pricing_service_pb2_grpc.PricingServiceStub, flow: str, source: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pricing.QuotePurchasePrice(
            pricing_service_pb2.QuotePurchasePriceRequest(lead=lead("CA", flow, source).to_proto()),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_step_is_not_found(
    pricing: pricing_service_pb2_grpc.PricingServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pricing.QuoteSalePrice(
            pricing_service_pb2.QuoteSalePriceRequest(
                lead=lead("CA").to_proto(), stage_index=0, step_index=7
            ),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_routing_offers_by_priority_at_the_quoted_prices_and_reports_skips(
    pricing: pricing_service_pb2_grpc.PricingServiceStub,
    routing_channel: grpc.aio.Channel,
) -> None:
    stub = routing_service_pb2_grpc.RoutingServiceStub(routing_channel)
    for state, offers, skips in (
        ("CA", [("ca-only", Decimal(40)), ("anyone", Decimal(0))], []),
        ("TX", [("anyone", Decimal(0))], [("ca-only", "California only")]),
    ):
        item = lead(state)
        purchase = await pricing.QuotePurchasePrice(
            pricing_service_pb2.QuotePurchasePriceRequest(lead=item.to_proto(), quote_sales=True),
            timeout=5,
        )
        result = await distribute(stub, item, from_proto(purchase.price), purchase.sales)
        # No delivery service here: each offer is that step's error and the next step runs.
        assert [
            (e.buyer_id, from_proto(e.sale_price))
            for e in result.events
            if e.outcome == lead_pb2.OUTCOME_ERROR
        ] == offers
        assert {e.stage_name for e in result.events} == {"first-look"}
        assert skipped(result.events) == skips
        assert result.outcome == "success"


async def test_routing_unknown_flow_or_source_is_not_found(
    routing_channel: grpc.aio.Channel,
) -> None:
    stub = routing_service_pb2_grpc.RoutingServiceStub(routing_channel)
    for flow, source in (("nope", "vendor"), ("auto", "nope")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await distribute(stub, lead("CA", flow, source), "1")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_serving_and_reflection_lists_the_service(
    routing_channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(routing_channel)
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="leadflow.routing.v1.RoutingService"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(routing_channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in responses:
        names = {service.name for service in response.list_services_response.service}
        assert "leadflow.routing.v1.RoutingService" in names
        break
