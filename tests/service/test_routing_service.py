"""routing_service through its real servers and stores, on SQLite and on PostgreSQL.

"Two replicas" here means two RoutingStore instances (two engines, two connection pools) or two
routing gRPC servers built by create_server, all in this test's process and event loop, against
ONE database (the same SQLite file, the same PostgreSQL schema). The decisions race in the
database exactly as they would between processes: nothing is shared in memory between them.
The e2e tier (tests/e2e/test_routing_replicas_e2e.py) runs real processes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from delivery_service.config import Settings as DeliverySettings
from delivery_service.server import Deps as DeliveryDeps
from delivery_service.server import create_server as create_delivery
from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.routing.v1 import routing_service_pb2 as pb
from leadflow.routing.v1 import routing_service_pb2_grpc as pb_grpc
from leadflow.wire import LeadData, from_proto, to_proto
from pricing_service.config import Settings as PricingSettings
from pricing_service.server import Deps as PricingDeps
from pricing_service.server import create_server as create_pricing
from routing_service.caps import CapRule, Claim, window_start
from routing_service.config import Settings
from routing_service.peers import Addresses, Peers
from routing_service.router import Router, SoldStep
from routing_service.routing import RoutingPlan, lead_claims
from routing_service.server import Deps, create_server
from routing_service.store import LEAD_SCOPE, DuplicateClaim, RoutingStore
from tests.conftest import Database

pytestmark = pytest.mark.timeout(60)

OPEN = {day: ["00:00-24:00"] for day in ("monday", "tuesday", "wednesday", "thursday")} | {
    day: ["00:00-24:00"] for day in ("friday", "saturday", "sunday")
}

CONFIG = f"""
account: {{name: Test, time_zone: America/Chicago}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - id: capped
    name: Capped
    caps: [{{max_leads: 10, per: day}}]
    delivery: {{type: http, url: "http://127.0.0.1:9/"}}
  - id: spender
    name: Spender
    caps: [{{max_amount: 50, per: month, reason: Monthly budget spent}}]
    delivery: {{type: http, url: "http://127.0.0.1:9/"}}
  - {{id: free, name: Free, delivery: {{type: http, url: "http://127.0.0.1:9/"}}}}
  - id: closed
    name: Closed
    hours: {{time_zone: UTC}}
    delivery: {{type: http, url: "http://127.0.0.1:9/"}}
flows:
  - id: auto
    name: Auto
    hours: {json.dumps(OPEN)}
    duplicates: {{fields: [email, phone_1], within_days: 30, reason: Seen this one}}
    caps: [{{max_leads: 10, per: day}}]
    sources: [{{source: vendor}}]
    stages:
      - name: first
        steps: [{{buyer: capped}}, {{buyer: spender}}, {{buyer: free}}, {{buyer: closed}}]
      - name: rotation
        strategy: round_robin
        steps: [{{buyer: capped}}, {{buyer: free}}, {{buyer: spender}}]
  - id: closed-flow
    name: Closed flow
    hours: {{monday: ["00:00-00:01"], time_zone: Pacific/Kiritimati}}
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: free}}]}}]
  - id: priced
    name: Priced
    sources: [{{source: vendor}}]
    stages:
      - name: by purchase price
        steps:
          - buyer: free
            criteria: [{{lhv: purchase_price, op: is greater than, rhv: 4, reason: Too cheap}}]
          - {{buyer: spender}}
          - {{buyer: closed}}
      - name: later
        steps: [{{buyer: capped}}]
  - id: stateless
    name: Stateless
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: free}}]}}]
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, {})


_serial = 0


def lead(flow: str = "auto", **fields: str) -> LeadData:
    global _serial
    _serial += 1
    return LeadData(
        f"lead-{_serial}-{id(fields)}", flow, "vendor", parse_lead(fields), datetime.now(UTC)
    )


@asynccontextmanager
async def stores(database: Database, count: int) -> AsyncIterator[list[RoutingStore]]:
    opened = [await RoutingStore.open(database.url, database.schema) for _ in range(count)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


@asynccontextmanager
async def replicas(
    config: Config, database: Database, count: int = 2, peers: Addresses | None = None
) -> AsyncIterator[list[pb_grpc.RoutingServiceStub]]:
    """`count` routing servers, each with its own store, on one database."""
    async with stores(database, count) as opened:
        running = []
        channels = []
        peer_clients = []
        try:
            for store in opened:
                peer = Peers(peers or Addresses())
                peer_clients.append(peer)
                server = await create_server(
                    Settings(host="127.0.0.1", grpc_port=0), Deps(config, store, peer)
                )
                running.append(server)
                channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
            yield [pb_grpc.RoutingServiceStub(channel) for channel in channels]
        finally:
            for channel in channels:
                await channel.close()
            for server in running:
                await server.stop(1)
            for peer in peer_clients:
                await peer.close()


# --- the store: atomic decisions shared by replicas --------------------------------------------


async def test_fifty_concurrent_reservations_on_two_replicas_take_exactly_the_cap(
    config: Config, database: Database
) -> None:
    plan = RoutingPlan(config)
    flow = plan.flow("auto")
    async with stores(database, 2) as (one, two):
        leads = [lead() for _ in range(50)]

        async def reserve(i: int) -> bool:
            claims = lead_claims(flow, plan.facts(leads[i]), Decimal(1))
            store = one if i % 2 else two
            return (
                await store.reserve(leads[i].id, LEAD_SCOPE, claims, timedelta(minutes=5)) is None
            )

        results = await asyncio.gather(*(reserve(i) for i in range(50)))
        assert results.count(True) == 10
        window = window_start(leads[0].submit_time, "day", 1, "America/Chicago")
        assert await one.counter("flow:auto:0", window) == (0, 0, 10, 10_000_000)


async def test_twenty_identical_leads_at_once_claim_the_duplicate_key_once(
    database: Database,
) -> None:
    async with stores(database, 2) as (one, two):
        claim = DuplicateClaim("auto", "d" * 64, "Seen this one")
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).admit(f"L{i}", claim, [], timedelta(minutes=5))
                for i in range(20)
            )
        )
        refusals = [r for r in results if r is not None]
        assert len(refusals) == 19
        assert {(r.check, r.reason) for r in refusals} == {("duplicates", "Seen this one")}


async def test_a_released_duplicate_key_can_be_claimed_again_a_committed_one_cannot(
    database: Database,
) -> None:
    async with stores(database, 1) as (store,):
        claim = DuplicateClaim("auto", "e" * 64, "dup")
        ttl = timedelta(minutes=5)
        assert await store.admit("L1", claim, [], ttl) is None
        await store.settle_lead("L1", False, claim, None, [], datetime.now(UTC))
        assert await store.admit("L2", claim, [], ttl) is None
        until = datetime.now(UTC) + timedelta(days=30)
        await store.settle_lead("L2", True, claim, until, [], datetime.now(UTC))
        refusal = await store.admit("L3", claim, [], ttl)
        assert refusal is not None and refusal.reason == "dup"
        assert await store.admit("L2", claim, [], ttl) is None  # a retry of the holder


async def test_a_reservation_nobody_settles_expires_instead_of_blocking_the_cap(
    config: Config, database: Database
) -> None:
    plan = RoutingPlan(config)
    flow = plan.flow("auto")
    async with stores(database, 1) as (store,):
        crashed = [lead() for _ in range(10)]
        for item in crashed:  # ten gateways that died mid-lead: holds that lapsed already
            claims = lead_claims(flow, plan.facts(item), Decimal(1))
            assert await store.reserve(item.id, LEAD_SCOPE, claims, timedelta(seconds=-1)) is None
        fresh = lead()
        claims = lead_claims(flow, plan.facts(fresh), Decimal(1))
        assert await store.reserve(fresh.id, LEAD_SCOPE, claims, timedelta(minutes=5)) is None
        window = claims[0].window
        assert await store.counter("flow:auto:0", window) == (0, 0, 1, 1_000_000)


async def test_a_cap_no_lead_fits_refuses_all_or_nothing_and_a_retry_counts_once(
    database: Database,
) -> None:
    # A reservation creates a window's counter and takes from it in one statement: a cap that
    # cannot take even one lead (max 0, or less money than the lead's price) must still refuse,
    # and the windows taken before it in the same reservation must be given back.
    now = datetime.now(UTC)

    def claim(key: str, max_leads: int | None, max_micros: int | None, micros: int) -> Claim:
        rule = CapRule(key, "buyer", "day", 1, "UTC", max_leads, max_micros, None, f"{key} full")
        return Claim(rule, rule.window(now), micros)

    roomy = claim("buyer:a-roomy:0", 5, None, 2_000_000)
    zero = claim("buyer:b-zero:0", 0, None, 2_000_000)
    small = claim("buyer:c-small:0", None, 1_000_000, 2_000_000)
    ttl = timedelta(minutes=5)
    async with stores(database, 1) as (store,):
        refused = await store.reserve("L1", "step:0:0", [zero, roomy], ttl)
        assert refused is not None and refused.reason == "buyer:b-zero:0 full"
        refused = await store.reserve("L1", "step:0:0", [small, roomy], ttl)
        assert refused is not None and refused.reason == "buyer:c-small:0 full"
        assert await store.counter("buyer:a-roomy:0", roomy.window) is None
        assert await store.reserve("L2", "step:0:0", [roomy], ttl) is None
        assert await store.reserve("L2", "step:0:0", [roomy], ttl) is None  # a retried request
        assert await store.counter("buyer:a-roomy:0", roomy.window) == (0, 0, 1, 2_000_000)
        assert await store.settle("L2", "step:0:0", True) == 1
        assert await store.counter("buyer:a-roomy:0", roomy.window) == (1, 2_000_000, 0, 0)


async def test_commit_counts_the_final_amount_and_release_gives_capacity_back(
    config: Config, database: Database
) -> None:
    plan = RoutingPlan(config)
    flow = plan.flow("auto")
    async with stores(database, 1) as (store,):
        sold, failed = lead(), lead()
        for item in (sold, failed):
            claims = lead_claims(flow, plan.facts(item), Decimal(3))
            await store.reserve(item.id, LEAD_SCOPE, claims, timedelta(minutes=5))
        await store.settle(sold.id, LEAD_SCOPE, True)
        await store.settle(failed.id, LEAD_SCOPE, False)
        window = lead_claims(flow, plan.facts(sold), Decimal(3))[0].window
        assert await store.counter("flow:auto:0", window) == (1, 3_000_000, 0, 0)


async def test_settling_a_lead_commits_sold_steps_it_was_not_told_about_and_releases_the_rest(
    config: Config, database: Database
) -> None:
    store = await RoutingStore.open(database.url, database.schema)
    router = Router(RoutingPlan(config), store, Peers(Addresses()))
    try:
        item = lead()
        # The capped buyer is reserved in two stages for one lead; stage 0's SettleStep never
        # arrived (the gateway lost routing), and the lead sold there.
        assert await router.reserve_step(item, 0, 0, Decimal(2)) is None
        assert await router.reserve_step(item, 1, 0, Decimal(2)) is None
        window = window_start(item.submit_time, "day", 1, "America/Chicago")
        assert await store.counter("buyer:capped:0", window) == (0, 0, 2, 4_000_000)
        committed, released = await router.settle_lead(item, False, [SoldStep(0, 0, "capped")])
        assert (committed, released) == (1, 1)
        assert await store.counter("buyer:capped:0", window) == (1, 2_000_000, 0, 0)
    finally:
        await store.close()


async def test_an_unknown_offer_keeps_its_holds_past_their_lapse_until_resolved(
    config: Config, database: Database
) -> None:
    """SPEC 8.1: the lead is over, but whether the buyer has it is not known: the step's holds
    stay held (never swept, though reserved with a lapsed expiry) until ResolveStep."""
    store = await RoutingStore.open(database.url, database.schema)
    router = Router(RoutingPlan(config), store, Peers(Addresses()), hold=timedelta(seconds=-1))
    try:
        kept, sold = lead(), lead()
        window = window_start(kept.submit_time, "day", 1, "America/Chicago")
        for item in (kept, sold):
            assert await router.reserve_step(item, 0, 0, Decimal(2)) is None
        await router.settle_lead(kept, True, [], unknown=[SoldStep(0, 0, "capped")])
        await store.purge(datetime.now(UTC))  # sweeps what lapsed: not the unknown offer's hold
        assert await store.counter("buyer:capped:0", window) == (0, 0, 1, 2_000_000)

        assert await router.resolve_step(kept.id, 0, 0, sold=True) == 1
        assert await router.resolve_step(kept.id, 0, 0, sold=True) == 0  # a repeat: nothing left
        assert await store.counter("buyer:capped:0", window) == (1, 2_000_000, 0, 0)
    finally:
        await store.close()


async def test_an_unknown_offer_resolved_as_no_sale_gives_its_capacity_back(
    config: Config, database: Database
) -> None:
    store = await RoutingStore.open(database.url, database.schema)
    router = Router(RoutingPlan(config), store, Peers(Addresses()))
    try:
        item = lead()
        window = window_start(item.submit_time, "day", 1, "America/Chicago")
        assert await router.reserve_step(item, 0, 0, Decimal(2)) is None
        await router.settle_lead(item, True, [], unknown=[SoldStep(0, 0, "capped")])

        assert await router.resolve_step(item.id, 0, 0, sold=False) == 1
        assert await store.counter("buyer:capped:0", window) == (0, 0, 0, 0)
    finally:
        await store.close()


async def test_the_round_robin_cursor_is_shared_and_strict_across_replicas(
    database: Database,
) -> None:
    async with stores(database, 2) as (one, two):
        firsts = await asyncio.gather(
            *((one if i % 2 else two).rotate("auto", 1, [0, 1, 2]) for i in range(30))
        )
        assert sorted(firsts.count(i) for i in range(3)) == [10, 10, 10]
        # Sequentially the rotation is exact, whichever replica answers.
        sequence = [await (one if i % 2 else two).rotate("auto", 1, [0, 2]) for i in range(4)]
        assert sequence in ([0, 2, 0, 2], [2, 0, 2, 0])


# --- the gRPC service ----------------------------------------------------------------------


async def test_flow_cap_admits_exactly_ten_of_fifty_concurrent_leads_on_two_servers(
    config: Config, database: Database
) -> None:
    async with replicas(config, database) as stubs:
        leads = [lead(email=f"u{i}@example.com") for i in range(50)]
        replies = await asyncio.gather(
            *(
                stubs[i % 2].AdmitLead(
                    pb.AdmitLeadRequest(lead=item.to_proto(), purchase_price=to_proto(Decimal(5))),
                    timeout=20,
                )
                for i, item in enumerate(leads)
            )
        )
        assert sum(r.admitted for r in replies) == 10
        refused = [r for r in replies if not r.admitted]
        assert {(r.reason, r.check) for r in refused} == {("Cap reached", pb.ADMISSION_CHECK_CAPS)}
        # Leads that end in failure give their place back.
        admitted = [item for item, r in zip(leads, replies, strict=True) if r.admitted]
        for item in admitted[:3]:
            await stubs[0].SettleLead(pb.SettleLeadRequest(lead=item.to_proto()), timeout=5)
        retry = await stubs[1].AdmitLead(
            pb.AdmitLeadRequest(lead=lead(email="late@example.com").to_proto()), timeout=5
        )
        assert retry.admitted


async def test_duplicates_and_hours_refuse_with_their_reasons(
    config: Config, database: Database
) -> None:
    async with replicas(config, database, count=1) as (stub,):
        first = lead(email="ada@example.com", phone_1="5125550142")
        twin = lead(email="ADA@example.com", phone_1="(512) 555-0142")
        reply = await stub.AdmitLead(pb.AdmitLeadRequest(lead=first.to_proto()), timeout=5)
        assert reply.admitted
        reply = await stub.AdmitLead(pb.AdmitLeadRequest(lead=twin.to_proto()), timeout=5)
        assert (reply.admitted, reply.reason, reply.check) == (
            False,
            "Seen this one",
            pb.ADMISSION_CHECK_DUPLICATES,
        )
        closed = lead("closed-flow")
        reply = await stub.AdmitLead(pb.AdmitLeadRequest(lead=closed.to_proto()), timeout=5)
        assert (reply.admitted, reply.reason) == (False, "Outside hours of operation")


async def test_full_buyer_caps_skip_the_step_and_reservations_never_overshoot(
    config: Config, database: Database
) -> None:
    async with replicas(config, database) as stubs:
        rank = await stubs[0].RankStage(
            pb.RankStageRequest(lead=lead().to_proto(), stage_index=0), timeout=5
        )
        assert [c.buyer_id for c in rank.candidates] == ["capped", "spender", "free"]
        assert [c.capped for c in rank.candidates] == [True, True, False]
        assert [(s.buyer_id, s.reason) for s in rank.skipped] == [
            ("closed", "Outside hours of operation")
        ]

        leads = [lead() for _ in range(50)]

        async def sell(i: int) -> bool:
            stub = stubs[i % 2]
            request = pb.ReserveStepRequest(
                lead=leads[i].to_proto(),
                stage_index=0,
                step_index=0,
                sale_price=to_proto(Decimal(2)),
            )
            reply = await stub.ReserveStep(request, timeout=20)
            if reply.reserved:
                await stub.SettleStep(
                    pb.SettleStepRequest(
                        lead=leads[i].to_proto(),
                        stage_index=0,
                        step_index=0,
                        sold=True,
                        sale_price=to_proto(Decimal(2)),
                    ),
                    timeout=20,
                )
            else:
                assert reply.reason == "Cap reached"
            return reply.reserved

        sold = await asyncio.gather(*(sell(i) for i in range(50)))
        assert sold.count(True) == 10
        rank = await stubs[1].RankStage(
            pb.RankStageRequest(lead=lead().to_proto(), stage_index=0), timeout=5
        )
        assert [c.buyer_id for c in rank.candidates] == ["spender", "free"]
        assert ("capped", "Cap reached") in [(s.buyer_id, s.reason) for s in rank.skipped]


async def test_an_amount_cap_counts_sale_prices_and_uses_its_own_reason(
    config: Config, database: Database
) -> None:
    async with replicas(config, database, count=1) as (stub,):

        async def reserve(price: str) -> pb.ReserveStepResponse:
            request = pb.ReserveStepRequest(
                lead=lead().to_proto(),
                stage_index=0,
                step_index=1,
                sale_price=to_proto(Decimal(price)),
            )
            reply: pb.ReserveStepResponse = await stub.ReserveStep(request, timeout=5)
            return reply

        assert (await reserve("30")).reserved
        assert (await reserve("20")).reserved
        refused = await reserve("0.01")
        assert (refused.reserved, refused.reason) == (False, "Monthly budget spent")


async def test_round_robin_rotates_strictly_through_the_service(
    config: Config, database: Database
) -> None:
    async with replicas(config, database) as stubs:
        firsts = []
        for i in range(6):
            reply = await stubs[i % 2].RankStage(
                pb.RankStageRequest(lead=lead().to_proto(), stage_index=1), timeout=5
            )
            firsts.append(reply.candidates[0].buyer_id)
            assert len(reply.candidates) == 3
        assert firsts == ["capped", "free", "spender"] * 2


async def test_admission_asked_to_rank_answers_the_first_stage_as_rank_stage_would(
    config: Config, database: Database
) -> None:
    async with replicas(config, database, count=1) as (stub,):
        rankings = {}
        for price in ("3", "5"):
            item = lead("priced")
            reply = await stub.AdmitLead(
                pb.AdmitLeadRequest(
                    lead=item.to_proto(),
                    purchase_price=to_proto(Decimal(price)),
                    rank_first_stage=True,
                ),
                timeout=5,
            )
            assert reply.admitted and reply.HasField("first_stage")
            rank = await stub.RankStage(
                pb.RankStageRequest(
                    lead=item.to_proto(), stage_index=0, purchase_price=to_proto(Decimal(price))
                ),
                timeout=5,
            )
            assert reply.first_stage == rank
            rankings[price] = reply.first_stage
    # The request's purchase price is the one the criteria see.
    assert [c.buyer_id for c in rankings["5"].candidates] == ["free", "spender"]
    assert [c.buyer_id for c in rankings["3"].candidates] == ["spender"]
    assert [(s.buyer_id, s.reason) for s in rankings["3"].skipped] == [
        ("free", "Too cheap"),
        ("closed", "Outside hours of operation"),
    ]


async def test_admission_says_whether_the_lead_needs_settling(
    config: Config, database: Database
) -> None:
    async with replicas(config, database, count=1) as (stub,):
        # `auto` checks duplicates (the key is committed when the lead settles), `priced` has a
        # capped buyer; `stateless` keeps nothing, so its leads need no SettleLead round trip.
        for flow, needed in (("auto", True), ("priced", True), ("stateless", False)):
            reply = await stub.AdmitLead(pb.AdmitLeadRequest(lead=lead(flow).to_proto()), timeout=5)
            assert (reply.admitted, reply.needs_settlement) == (True, needed)


async def test_admission_ranks_nothing_unless_asked(config: Config, database: Database) -> None:
    async with replicas(config, database, count=1) as (stub,):
        reply = await stub.AdmitLead(pb.AdmitLeadRequest(lead=lead("priced").to_proto()), timeout=5)
        assert reply.admitted
        assert not reply.HasField("first_stage")


async def test_a_refused_lead_gets_no_first_stage_ranking(
    config: Config, database: Database
) -> None:
    async with replicas(config, database, count=1) as (stub,):

        async def admit(item: LeadData) -> pb.AdmitLeadResponse:
            reply: pb.AdmitLeadResponse = await stub.AdmitLead(
                pb.AdmitLeadRequest(lead=item.to_proto(), rank_first_stage=True), timeout=5
            )
            return reply

        assert (await admit(lead(email="bo@example.com"))).HasField("first_stage")
        for refused, check in (
            (lead(email="bo@example.com"), pb.ADMISSION_CHECK_DUPLICATES),
            (lead("closed-flow"), pb.ADMISSION_CHECK_HOURS),
        ):
            reply = await admit(refused)
            assert (reply.admitted, reply.check) == (False, check)
            assert not reply.HasField("first_stage")


async def test_unknown_flow_and_stage_are_not_found(config: Config, database: Database) -> None:
    async with replicas(config, database, count=1) as (stub,):
        for request in (
            pb.RankStageRequest(lead=lead("nope").to_proto()),
            pb.RankStageRequest(lead=lead().to_proto(), stage_index=9),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RankStage(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- auctions: routing pings real buyers through the real delivery service -----------------------

AUCTION = """
account: {name: Test, allow_private_network_delivery: true}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers:
  - id: five
    name: Five
    ping: {type: http, url: "URL/five", timeout_ms: 500, response: {price_path: bid, reference_path: id}}
    delivery: {type: http, url: "URL/post"}
  - id: nine
    name: Nine
    ping: {type: http, url: "URL/nine", timeout_ms: 500, response: {price_path: bid, reference_path: id}}
    delivery: {type: http, url: "URL/post"}
  - id: seven
    name: Seven
    ping: {type: http, url: "URL/seven", timeout_ms: 500, response: {price_path: bid, reference_path: id}}
    delivery: {type: http, url: "URL/post"}
  - id: sleepy
    name: Sleepy
    ping: {type: http, url: "URL/sleepy", timeout_ms: 5000, response: {price_path: bid}}
    delivery: {type: http, url: "URL/post"}
  - id: cheap
    name: Cheap
    ping: {type: http, url: "URL/cheap", timeout_ms: 500, response: {price_path: bid}}
    delivery: {type: http, url: "URL/post"}
  - id: fixed
    name: Fixed
    pricing: {prices: [{amount: 6}]}
    delivery: {type: http, url: "URL/post"}
flows:
  - id: auto
    name: Auto
    sources: [{source: vendor}]
    stages:
      - name: auction
        strategy: auction
        deadline_ms: 400
        min_bid: 4
        steps: [{buyer: five}, {buyer: nine}, {buyer: seven}, {buyer: sleepy}, {buyer: cheap}, {buyer: fixed}]
"""
BIDS = {"five": "5", "nine": "9", "seven": "7", "cheap": "1.5"}


async def test_auction_orders_by_bid_drops_low_and_late_bidders_and_sends_no_pii(
    database: Database,
) -> None:
    pinged: list[dict[str, Any]] = []
    release = asyncio.Event()

    async def bid(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pinged.append(await request.json())
        if name == "sleepy":
            await release.wait()
        return web.json_response({"bid": BIDS.get(name, "0"), "id": f"bid-{name}"})

    app = web.Application()
    app.router.add_post("/{name}", bid)
    buyers = TestServer(app, host="127.0.0.1")
    await buyers.start_server()
    config = parse_config(AUCTION.replace("URL", str(buyers.make_url("")).rstrip("/")), {})
    delivery = await create_delivery(
        DeliverySettings(host="127.0.0.1", grpc_port=0), DeliveryDeps(config)
    )
    pricing = await create_pricing(
        PricingSettings(host="127.0.0.1", grpc_port=0), PricingDeps(config)
    )
    try:
        peers = Addresses(
            delivery=f"127.0.0.1:{delivery.port}", pricing=f"127.0.0.1:{pricing.port}"
        )
        async with replicas(config, database, count=1, peers=peers) as (stub,):
            item = lead(first_name="Ada", email="ada@example.com", phone_1="5125550142", state="CA")
            started = asyncio.get_running_loop().time()
            reply = await stub.RankStage(
                pb.RankStageRequest(
                    lead=item.to_proto(), stage_index=0, purchase_price=to_proto(Decimal(3))
                ),
                timeout=10,
            )
            elapsed = asyncio.get_running_loop().time() - started
            release.set()
    finally:
        await delivery.stop(1)
        await pricing.stop(1)
        await buyers.close()
    assert elapsed < 1.5, "the auction closes by its deadline"
    # A step without a ping bids its quoted sale price (the buyer's pricing: 6).
    assert [(c.buyer_id, from_proto(c.price)) for c in reply.candidates] == [
        ("nine", Decimal(9)),
        ("seven", Decimal(7)),
        ("fixed", Decimal(6)),
        ("five", Decimal(5)),
    ]
    assert [c.price_audit.layer for c in reply.candidates] == ["bid", "bid", "buyer_rules", "bid"]
    assert reply.candidates[0].bid_id == "bid-nine"
    assert len(reply.candidates[0].ping_attempts) == 1
    left_out = {s.buyer_id: s.reason for s in reply.skipped}
    assert left_out["sleepy"] == "No bid within the auction deadline"
    assert left_out["cheap"] == "Bid 1.50 under the minimum of 4.00"
    assert len(pinged) == 5
    for body in pinged:
        assert set(body) == {"state"}, body
