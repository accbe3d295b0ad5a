"""routing_service through its real servers and stores, on SQLite and on PostgreSQL.

"Two replicas" here means two RoutingStore instances (two engines, two connection pools) or two
routing gRPC servers built by create_server, all in this test's process and event loop, against
ONE database (the same SQLite file, the same PostgreSQL schema). The decisions race in the
database exactly as they would between processes: nothing is shared in memory between them.
The gRPC tests drive DistributeLead as the gateway does (tests/service/routing_helpers.py), with
a real delivery service offering the leads to a real buyer over HTTP.
The e2e tier (tests/e2e/test_routing_replicas_e2e.py) runs real processes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from leadflow import db
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.pricing.v1 import pricing_service_pb2
from leadflow.routing.v1 import routing_service_pb2 as pb
from leadflow.wire import LeadData, from_proto
from routing_service.caps import CapRule, Claim, window_start
from routing_service.peers import Addresses, Peers
from routing_service.router import Router, SoldStep
from routing_service.routing import RoutingPlan, lead_claims
from routing_service.store import LEAD_SCOPE, DuplicateClaim, HeldStep, RoutingStore
from routing_service.tables import Base
from tests.conftest import Database
from tests.service.routing_helpers import (
    Routing,
    distribute,
    offered,
    routing_suite,
    skipped,
    step_quote,
    stores,
)

pytestmark = pytest.mark.timeout(60)

SUCCESS = lead_pb2.OUTCOME_SUCCESS
FAILURE = lead_pb2.OUTCOME_FAILURE
RecipientEvent = ledger_service_pb2.RecipientEvent

OPEN = {day: ["00:00-24:00"] for day in ("monday", "tuesday", "wednesday", "thursday")} | {
    day: ["00:00-24:00"] for day in ("friday", "saturday", "sunday")
}

# `URL` is the test buyer's base URL (routing_helpers.Buyers): each buyer posts to its own path.
CONFIG = f"""
account: {{name: Test, time_zone: America/Chicago, allow_private_network_delivery: true}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - id: capped
    name: Capped
    caps: [{{max_leads: 10, per: day}}]
    delivery: {{type: http, url: "URL/capped"}}
  - id: spender
    name: Spender
    caps: [{{max_amount: 50, per: month, reason: Monthly budget spent}}]
    delivery: {{type: http, url: "URL/spender"}}
  - {{id: free, name: Free, delivery: {{type: http, url: "URL/free"}}}}
  - id: closed
    name: Closed
    hours: {{time_zone: UTC}}
    delivery: {{type: http, url: "URL/closed"}}
  - id: fixed
    name: Fixed
    pricing: {{prices: [{{amount: 7}}]}}
    delivery: {{type: http, url: "URL/fixed"}}
  - id: quoted
    name: Quoted
    pricing: {{service: {{url: "URL/price", timeout_ms: 2000, fallback_price: 1}}}}
    delivery: {{type: http, url: "URL/quoted"}}
flows:
  - id: auto
    name: Auto
    require_sale: true
    hours: {json.dumps(OPEN)}
    duplicates: {{fields: [email, phone_1], within_days: 30, reason: Seen this one}}
    caps: [{{max_leads: 10, per: day}}]
    sources: [{{source: vendor}}]
    stages:
      - name: first
        exclusive: true
        steps: [{{buyer: capped}}, {{buyer: spender}}, {{buyer: free}}, {{buyer: closed}}]
      - name: rotation
        strategy: round_robin
        steps: [{{buyer: capped}}, {{buyer: free}}, {{buyer: spender}}]
  - id: open
    name: No flow caps
    sources: [{{source: vendor}}]
    stages:
      - name: first
        steps: [{{buyer: capped}}, {{buyer: spender}}, {{buyer: free}}, {{buyer: closed}}]
  - id: budget
    name: Budget
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: spender}}]}}]
  - id: rotating
    name: Rotating
    sources: [{{source: vendor}}]
    stages:
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
  - id: by-value
    name: By sale price
    sources: [{{source: vendor}}]
    stages:
      - name: best
        strategy: highest_price
        steps: [{{buyer: free}}, {{buyer: fixed}}, {{buyer: quoted}}]
  - id: stateless
    name: Stateless
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: free}}]}}]
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG.replace("URL", "http://127.0.0.1:9"), {})


@pytest.fixture
async def routing(database: Database) -> AsyncIterator[Routing]:
    """Two routing replicas on `database`, a real delivery service and the test buyer."""
    async with routing_suite(CONFIG, database) as running:
        yield running


_serial = 0


def lead(flow: str = "auto", **fields: str) -> LeadData:
    global _serial
    _serial += 1
    return LeadData(
        f"lead-{_serial}-{id(fields)}", flow, "vendor", parse_lead(fields), datetime.now(UTC)
    )


def today(item: LeadData) -> datetime:
    """The day window of the account's zone (buyer and flow day caps)."""
    return window_start(item.submit_time, "day", 1, "America/Chicago")


async def eventually(check: Any, within_s: float = 10) -> None:
    """Wait until `check()` (a coroutine function) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


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
        window = today(leads[0])
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


async def test_twenty_identical_leads_admitted_with_their_first_offer_hold_it_once(
    database: Database,
) -> None:
    # Admission with a probe and a first offer (on PostgreSQL the key is claimed in the
    # statement that reads the probe's counters): one lead wins the key and holds the step.
    now = datetime.now(UTC)
    rule = CapRule("buyer:acme:0", "buyer", "day", 1, "UTC", 100, None, None, "full")
    step = [Claim(rule, rule.window(now), 1_000_000)]
    async with stores(database, 2) as (one, two):
        claim = DuplicateClaim("auto", "f" * 64, "Seen this one")
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).admit_and_probe(
                    f"L{i}", claim, [], timedelta(minutes=5), step, lambda full: ("step:0:0", step)
                )
                for i in range(20)
            )
        )
        admitted = [(full, held) for refusal, full, held in results if refusal is None]
        assert admitted == [(set(), HeldStep("step:0:0", None))]
        refusals = [refusal for refusal, _, _ in results if refusal is not None]
        assert {(r.check, r.reason) for r in refusals} == {("duplicates", "Seen this one")}
        assert await one.counter("buyer:acme:0", step[0].window) == (0, 0, 1, 1_000_000)


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


async def test_a_first_offer_refused_inside_admission_gives_back_its_taken_caps_and_admits(
    database: Database,
) -> None:
    # Admission also reserves the first offer's step caps in its transaction: a full cap there
    # must not fail the admission, and the step's caps taken before it must be given back.
    now = datetime.now(UTC)

    def claim(key: str, max_leads: int | None, max_micros: int | None, micros: int) -> Claim:
        rule = CapRule(key, "buyer", "day", 1, "UTC", max_leads, max_micros, None, f"{key} full")
        return Claim(rule, rule.window(now), micros)

    flow_cap = claim("flow:f:0", 5, None, 1_000_000)
    roomy = claim("buyer:a-roomy:0", 5, None, 2_000_000)
    small = claim("step:f:0:0:0", None, 1_000_000, 2_000_000)  # less money than the price
    duplicate = DuplicateClaim("f", "digest-1", "Seen")
    ttl = timedelta(minutes=5)
    async with stores(database, 1) as (store,):
        refusal, full, held = await store.admit_and_probe(
            "L1", duplicate, [flow_cap], ttl, (), lambda full: ("step:0:0", [roomy, small])
        )
        assert refusal is None and full == set()
        assert held is not None and held.scope == "step:0:0"
        assert held.refusal is not None and held.refusal.reason == "step:f:0:0:0 full"
        assert await store.counter("buyer:a-roomy:0", roomy.window) == (0, 0, 0, 0)
        assert await store.counter("flow:f:0", flow_cap.window) == (0, 0, 1, 1_000_000)
        # The admission stands: the duplicate key is this lead's, its flow hold settles.
        assert await store.admit("L2", duplicate, [], ttl) is not None
        assert await store.settle_lead("L1", True, duplicate, now, [], now) == (1, 0)
        assert await store.counter("flow:f:0", flow_cap.window) == (1, 1_000_000, 0, 0)


async def test_full_caps_before_and_after_a_taken_one_leave_every_counter_as_it_was(
    database: Database,
) -> None:
    # A step's claims are held together and then counted together (in key order): a refusal
    # gives back the one taken between two full ones and deletes the full ones' holds uncounted.
    now = datetime.now(UTC)

    def claim(key: str, max_leads: int | None, max_micros: int | None) -> Claim:
        rule = CapRule(key, "buyer", "day", 1, "UTC", max_leads, max_micros, None, f"{key} full")
        return Claim(rule, rule.window(now), 2_000_000)

    first_full = claim("buyer:a:0", 0, None)  # no lead fits, not even into an empty window
    roomy = claim("buyer:b:0", 5, None)
    money_full = claim("buyer:c:0", None, 1_000_000)
    last_full = claim("buyer:d:0", 1, None)
    ttl = timedelta(minutes=5)
    async with stores(database, 1) as (store,):
        assert await store.reserve("L0", LEAD_SCOPE, [last_full], ttl) is None
        offer = [money_full, last_full, roomy, first_full]
        refusal, _, held = await store.admit_and_probe(
            "L1", None, [], ttl, (), lambda full: ("step:0:0", offer)
        )
        assert refusal is None and held is not None and held.refusal is not None
        assert held.refusal.reason == "buyer:a:0 full"  # the first in key order
        assert await store.counter("buyer:a:0", first_full.window) is None
        assert await store.counter("buyer:b:0", roomy.window) == (0, 0, 0, 0)
        assert await store.counter("buyer:c:0", money_full.window) is None
        assert await store.counter("buyer:d:0", last_full.window) == (0, 0, 1, 2_000_000)
        # L1 holds nothing: settling it gives nothing back, and L0's hold is still counted.
        assert await store.settle_lead("L1", False, None, None, [], now) == (0, 0)
        assert await store.counter("buyer:d:0", last_full.window) == (0, 0, 1, 2_000_000)
        # Without the full ones the step is taken, each cap once.
        assert await store.reserve("L2", "step:0:0", [roomy, roomy], ttl) is None
        assert await store.counter("buyer:b:0", roomy.window) == (0, 0, 1, 2_000_000)


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


async def test_settling_a_lead_commits_sold_steps_at_their_final_price_and_releases_the_rest(
    config: Config, database: Database
) -> None:
    store = await RoutingStore.open(database.url, database.schema)
    plan = RoutingPlan(config)
    router = Router(plan, store, Peers(Addresses()))
    try:
        item = lead()
        flow, facts = plan.flow("auto"), plan.facts(item)
        capped = flow.stages[0].steps[0]
        # The capped buyer is held in two stages for one lead (each at its quoted price); it
        # took the lead in stage 0 and answered with a price of its own, 3.
        assert await router.reserve_step(facts, 0, capped, Decimal(2)) is None
        assert await router.reserve_step(facts, 1, flow.stages[1].steps[0], Decimal(2)) is None
        window = today(item)
        assert await store.counter("buyer:capped:0", window) == (0, 0, 2, 4_000_000)
        committed, released = await router.settle_lead(
            flow, facts, False, [SoldStep(0, 0, "capped", Decimal(3))]
        )
        assert (committed, released) == (1, 1)
        assert await store.counter("buyer:capped:0", window) == (1, 3_000_000, 0, 0)
    finally:
        await store.close()


async def test_an_unknown_offer_keeps_its_holds_past_their_lapse_until_resolved(
    config: Config, database: Database
) -> None:
    """SPEC 8.1: the lead is over, but whether the buyer has it is not known: the step's holds
    stay held (never swept, though reserved with a lapsed expiry) until ResolveStep."""
    store = await RoutingStore.open(database.url, database.schema)
    plan = RoutingPlan(config)
    router = Router(plan, store, Peers(Addresses()), hold=timedelta(seconds=-1))
    try:
        kept, sold = lead(), lead()
        window = today(kept)
        flow = plan.flow("auto")
        capped = flow.stages[0].steps[0]
        for item in (kept, sold):
            assert await router.reserve_step(plan.facts(item), 0, capped, Decimal(2)) is None
        await router.settle_lead(
            flow, plan.facts(kept), True, [], unknown=[SoldStep(0, 0, "capped")]
        )
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
    plan = RoutingPlan(config)
    router = Router(plan, store, Peers(Addresses()))
    try:
        item = lead()
        window = today(item)
        flow, facts = plan.flow("auto"), plan.facts(item)
        assert await router.reserve_step(facts, 0, flow.stages[0].steps[0], Decimal(2)) is None
        await router.settle_lead(flow, facts, True, [], unknown=[SoldStep(0, 0, "capped")])

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


# --- the gRPC service: DistributeLead -------------------------------------------------------


async def test_flow_cap_admits_exactly_ten_of_fifty_concurrent_leads_on_two_servers(
    routing: Routing,
) -> None:
    # Admitted leads wait at their first offering until the gate opens, holding their places.
    gate = asyncio.Event()
    waiting: list[str] = []

    async def hold(event: RecipientEvent) -> bool:
        waiting.append(event.id)
        await gate.wait()
        return True

    leads = [lead(email=f"u{i}@example.com") for i in range(50)]
    calls = [
        asyncio.create_task(distribute(routing.stubs[i % 2], item, "5", acknowledge=hold))
        for i, item in enumerate(leads)
    ]

    async def refused_all_others() -> bool:
        return sum(call.done() for call in calls) >= 40

    async def ten_at_their_offering() -> bool:
        return len(waiting) == 10

    await eventually(refused_all_others, within_s=30)
    await eventually(ten_at_their_offering)
    await asyncio.sleep(0.2)  # room for an eleventh admission, were there one
    refused = [call.result() for call in calls if call.done()]
    assert len(refused) == 40 and len(waiting) == 10
    assert {(r.outcome, r.reason, len(r.events)) for r in refused} == {
        ("failure", "Cap reached", 0)
    }
    assert routing.buyers.received == []  # nothing is offered before its acknowledgement

    # Leads that end in failure give their place back: every buyer declines (require_sale).
    routing.buyers.statuses.update(capped=422, spender=422, free=422)
    gate.set()
    failed = await asyncio.gather(*(call for call in calls if not call.done()))
    assert {(r.outcome, r.reason) for r in failed} == {("failure", "No buyer accepted the lead")}
    assert await routing.stores[0].counter("flow:auto:0", today(leads[0])) == (0, 0, 0, 0)
    routing.buyers.statuses.clear()
    late = await distribute(routing.stubs[1], lead(email="late@example.com"), "5")
    assert late.outcome == "success"
    assert offered(late.events) == [("capped", SUCCESS)]


async def test_duplicates_and_hours_refuse_with_their_reasons_and_offer_nothing(
    routing: Routing,
) -> None:
    stub = routing.stubs[0]
    first = lead(email="ada@example.com", phone_1="5125550142")
    twin = lead(email="ADA@example.com", phone_1="(512) 555-0142")
    assert (await distribute(stub, first, "5")).outcome == "success"
    assert routing.buyers.names() == ["capped"]
    for refused, reason in (
        (twin, "Seen this one"),
        (lead("closed-flow"), "Outside hours of operation"),
    ):
        assert await distribute(routing.stubs[1], refused, "5") == ([], "failure", reason)
    assert routing.buyers.names() == ["capped"]  # a refused lead is offered to no one


async def test_full_buyer_caps_skip_the_step_and_reservations_never_overshoot(
    routing: Routing,
) -> None:
    leads = [lead("open") for _ in range(50)]
    results = await asyncio.gather(
        *(distribute(routing.stubs[i % 2], item, "5") for i, item in enumerate(leads))
    )
    assert {r.outcome for r in results} == {"success"}
    sold_to = [offered(r.events) for r in results]
    assert sold_to.count([("capped", SUCCESS)]) == 10
    assert sold_to.count([("spender", SUCCESS)]) == 40
    for result in results:
        left_out = skipped(result.events)
        assert ("closed", "Outside hours of operation") in left_out
        if offered(result.events) == [("spender", SUCCESS)]:
            assert ("capped", "Cap reached") in left_out
    assert routing.buyers.names().count("capped") == 10
    assert await routing.stores[1].counter("buyer:capped:0", today(leads[0])) == (10, 0, 0, 0)

    after = await distribute(routing.stubs[1], lead("open"), "5")
    assert skipped(after.events) == [
        ("closed", "Outside hours of operation"),
        ("capped", "Cap reached"),
    ]
    assert offered(after.events) == [("spender", SUCCESS)]


async def test_an_amount_cap_counts_sale_prices_and_uses_its_own_reason(
    routing: Routing,
) -> None:
    async def sell(price: str) -> list[RecipientEvent]:
        # The sale quote comes with the lead, as the gateway has it from QuotePurchasePrice.
        result = await distribute(routing.stubs[0], lead("budget"), "5", [step_quote(0, 0, price)])
        return result.events

    for price in ("30", "20"):
        (event,) = await sell(price)
        assert (event.outcome, from_proto(event.sale_price)) == (SUCCESS, Decimal(price))
    (refused,) = await sell("0.01")
    assert (refused.outcome, refused.reason) == (lead_pb2.OUTCOME_SKIP, "Monthly budget spent")
    assert routing.buyers.names() == ["spender", "spender"]


async def test_round_robin_rotates_strictly_through_the_service(routing: Routing) -> None:
    firsts = []
    for i in range(6):
        result = await distribute(routing.stubs[i % 2], lead("rotating"), "5")
        (sale,) = offered(result.events)
        firsts.append(sale[0])
    assert firsts == ["capped", "free", "spender"] * 2
    assert routing.buyers.names() == firsts


async def test_the_request_purchase_price_is_the_one_the_criteria_see(routing: Routing) -> None:
    cheap = await distribute(routing.stubs[0], lead("priced"), "3")
    assert skipped(cheap.events) == [
        ("free", "Too cheap"),
        ("closed", "Outside hours of operation"),
    ]
    assert offered(cheap.events) == [("spender", SUCCESS), ("capped", SUCCESS)]
    item = lead("priced")
    dear = await distribute(routing.stubs[0], item, "5")
    assert skipped(dear.events) == [("closed", "Outside hours of operation")]
    assert offered(dear.events) == [("free", SUCCESS), ("capped", SUCCESS)]
    # Events are numbered per lead in the order they were decided.
    assert [e.id for e in dear.events] == [f"{item.id}-{n}" for n in (1, 2, 3)]


async def _rows(database: Database) -> dict[str, int]:
    engine = db.create_engine(database.url, database.schema)
    try:
        async with engine.connect() as conn:
            return {
                table.name: int(
                    (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                )
                for table in Base.metadata.sorted_tables
            }
    finally:
        await engine.dispose()


async def test_only_a_flow_that_keeps_state_writes_any(
    routing: Routing, database: Database
) -> None:
    # `stateless` has no duplicate check, no cap and no strategy that counts sales: its leads
    # cost routing no write at all. `auto` keeps its duplicate key once the lead is settled.
    assert (await distribute(routing.stubs[0], lead("stateless"), "5")).outcome == "success"
    assert set((await _rows(database)).values()) == {0}
    assert (await distribute(routing.stubs[0], lead(email="kept@example.com"), "5")).outcome == (
        "success"
    )
    rows = await _rows(database)
    assert rows["duplicate_keys"] == 1 and rows["cap_holds"] == 0


async def test_unknown_flow_or_source_is_not_found_and_a_stream_without_a_lead_invalid(
    routing: Routing,
) -> None:
    for item in (lead("nope"), LeadData("L1", "auto", "nope", parse_lead({}), datetime.now(UTC))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await distribute(routing.stubs[0], item, "5")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    call = routing.stubs[0].DistributeLead(timeout=5)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the offering handshake: no buyer has a lead the gateway does not know of ------------------


async def test_an_unacknowledged_offering_is_never_sent_and_its_holds_go_back(
    routing: Routing,
) -> None:
    item = lead(email="shy@example.com")

    async def never(event: RecipientEvent) -> bool:
        await asyncio.sleep(0.5)  # routing waits: delivery is not called meanwhile
        assert routing.buyers.received == []
        return False  # the gateway goes away without acknowledging

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await distribute(routing.stubs[0], item, "5", [step_quote(0, 0, "2")], acknowledge=never)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    await asyncio.sleep(0.3)
    assert routing.buyers.received == []
    store = routing.stores[0]
    assert await store.counter("flow:auto:0", today(item)) == (0, 0, 0, 0)
    assert await store.counter("buyer:capped:0", today(item)) == (0, 0, 0, 0)
    # The duplicate key was given back too: the same lead is taken when it comes again.
    again = await distribute(routing.stubs[1], item, "5")
    assert (again.outcome, offered(again.events)) == ("success", [("capped", SUCCESS)])


async def test_a_stream_cut_after_an_acknowledged_offering_keeps_that_offers_holds_for_resolution(
    routing: Routing,
) -> None:
    """The gateway records an acknowledged offering it hears no more of as `unknown` (SPEC 8.1):
    its buyer may have the lead, so routing keeps that step's holds, past the hold time, until
    ResolveStep; the rest of the lead is settled at once, in the distribution's `finally`."""
    routing.buyers.gate.clear()  # the buyer has the lead and has not answered yet
    item = lead(email="cut@example.com")
    call = asyncio.create_task(
        distribute(routing.stubs[0], item, "5", [step_quote(0, 0, "2")], deadline_s=30)
    )

    async def buyer_has_it() -> bool:
        return routing.buyers.names() == ["capped"]

    await eventually(buyer_has_it)
    call.cancel()  # the gateway dies: the stream is cut
    with pytest.raises(asyncio.CancelledError):
        await call
    store = routing.stores[1]
    window = today(item)

    async def settled() -> bool:
        return await store.counter("flow:auto:0", window) == (0, 0, 0, 0)

    await eventually(settled)
    assert await store.counter("buyer:capped:0", window) == (0, 0, 1, 2_000_000)
    routing.buyers.gate.set()
    await store.purge(datetime.now(UTC) + timedelta(days=1))  # long past the hold time
    assert await store.counter("buyer:capped:0", window) == (0, 0, 1, 2_000_000)
    resolved = await routing.stubs[1].ResolveStep(
        pb.ResolveStepRequest(lead_id=item.id, stage_index=0, step_index=0, sold=True), timeout=5
    )
    assert resolved.settled == 1
    assert await store.counter("buyer:capped:0", window) == (1, 2_000_000, 0, 0)


# --- sale quotes: given with the lead, or asked of pricing once per step -----------------------


async def test_sale_quotes_given_with_the_lead_are_used_without_asking_pricing(
    database: Database,
) -> None:
    # Pricing is down: a QuoteSalePrice call would fail the lead (its sale price is unknown).
    async with routing_suite(CONFIG, database, count=1, pricing="down") as routing:
        routing.buyers.statuses.update(fixed=422, quoted=422)
        quotes = [step_quote(0, 1, "12.34"), step_quote(0, 2, "3.5", layer="step_rules")]
        item = lead("by-value")
        result = await distribute(routing.stubs[0], item, "5", quotes)
    assert result.outcome == "success"
    # highest_price ranks by the given quotes (not fixed's configured 7); `free` has no sale
    # pricing: $0.00, layer none, asked of no one.
    assert prices(result.events) == [
        ("fixed", Decimal("12.34"), "buyer_rules"),
        ("quoted", Decimal("3.5"), "step_rules"),
        ("free", Decimal(0), "none"),
    ]
    assert offered(result.events) == [("fixed", FAILURE), ("quoted", FAILURE), ("free", SUCCESS)]
    assert routing.buyers.names() == ["fixed", "quoted", "free"]


def _quote_sale_calls() -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "leadflow.pricing.v1.PricingService",
        "grpc_method": "QuoteSalePrice",
    }
    return REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0.0


async def test_a_service_priced_step_is_quoted_by_routing_once(database: Database) -> None:
    async with routing_suite(CONFIG, database, count=1, pricing="running") as routing:
        routing.buyers.bodies["price"] = {"price": 11}
        routing.buyers.statuses["quoted"] = 422
        assert routing.pricing is not None
        item = lead("by-value")
        purchase = await routing.pricing.QuotePurchasePrice(
            pricing_service_pb2.QuotePurchasePriceRequest(lead=item.to_proto(), quote_sales=True),
            timeout=5,
        )
        # Rules price `fixed`; `quoted` calls a pricing service and `free` has no sale pricing.
        assert [(q.stage_index, q.step_index) for q in purchase.sales] == [(0, 1)]
        before = _quote_sale_calls()
        result = await distribute(
            routing.stubs[0], item, from_proto(purchase.price), purchase.sales
        )
        assert _quote_sale_calls() - before == 1  # ranked and offered on one quote
        assert routing.buyers.names().count("price") == 1
    assert prices(result.events) == [
        ("quoted", Decimal(11), "buyer_service"),
        ("fixed", Decimal(7), "buyer_rules"),
    ]
    assert offered(result.events) == [("quoted", FAILURE), ("fixed", SUCCESS)]


def prices(events: list[RecipientEvent]) -> list[tuple[str, Decimal, str]]:
    """(buyer, sale price, price layer) of each offer, in order."""
    return [
        (e.buyer_id, from_proto(e.sale_price), e.price_audit.layer)
        for e in events
        if e.outcome != lead_pb2.OUTCOME_SKIP
    ]


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
    delivery: {type: http, url: "URL/post", mapping: {bid: "{{bid.id}}", state: "{{lead.state}}"}}
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
BIDS = {"five": "5", "nine": "9", "seven": "7", "cheap": "1.5", "sleepy": "0"}


async def test_auction_orders_by_bid_drops_low_and_late_bidders_and_sends_no_pii(
    database: Database,
) -> None:
    async with routing_suite(AUCTION, database, count=1, pricing="running") as routing:
        buyers = routing.buyers
        buyers.bodies.update(
            {name: {"bid": bid, "id": f"bid-{name}"} for name, bid in BIDS.items()}
        )
        buyers.statuses["post"] = 422  # every winner declines: each is offered in bid order
        buyers.gate.clear()
        buyers.gated = {"sleepy"}
        item = lead(first_name="Ada", email="ada@example.com", phone_1="5125550142", state="CA")
        assert routing.pricing is not None
        purchase = await routing.pricing.QuotePurchasePrice(
            pricing_service_pb2.QuotePurchasePriceRequest(lead=item.to_proto(), quote_sales=True),
            timeout=5,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_offer: list[float] = []

        async def timed(event: RecipientEvent) -> bool:
            first_offer.append(loop.time() - started)
            return True

        result = await distribute(
            routing.stubs[0], item, "3", purchase.sales, acknowledge=timed, deadline_s=10
        )
        buyers.gate.set()
    assert first_offer[0] < 1.5, "the auction closes by its deadline"
    # A step without a ping bids its quoted sale price (the buyer's pricing: 6).
    assert prices(result.events) == [
        ("nine", Decimal(9), "bid"),
        ("seven", Decimal(7), "bid"),
        ("fixed", Decimal(6), "buyer_rules"),
        ("five", Decimal(5), "bid"),
    ]
    left_out = dict(skipped(result.events))
    assert left_out["sleepy"] == "No bid within the auction deadline"
    assert left_out["cheap"] == "Bid 1.50 under the minimum of 4.00"
    # The winner's event carries its ping before its delivery; its post names the bid.
    nine = next(e for e in result.events if e.buyer_id == "nine")
    assert len(nine.attempts) >= 2 and "/nine" in nine.attempts[0].request
    posts = [body for name, body in buyers.received if name == "post"]
    assert posts[0] == {"bid": "bid-nine", "state": "CA"}
    pinged = [body for name, body in buyers.received if name in BIDS]
    assert len(pinged) == 5
    for body in pinged:
        assert set(body) == {"state"}, body
