"""A lead's distribution (SPEC 2 steps 9-10, 7, 8.1) without a database or a server: a real
RoutingPlan and Router over the in-memory store, delivery and pricing of fakes_routing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import pytest

from leadflow.common.v1 import lead_pb2
from leadflow.config import parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData, PriceAudit, from_proto, outcome_from_proto, to_proto
from routing_service.caps import CAP_REACHED
from routing_service.distribution import IN_FLIGHT, NO_BUYER, NOT_PROCESSED, Distributor
from routing_service.hours import OUTSIDE_HOURS
from routing_service.peers import Quote
from routing_service.router import Router
from routing_service.routing import ALREADY_SOLD, RoutingPlan
from tests.unit.fakes_routing import (
    DECLINED,
    DeliverLeadResponse,
    FakePeers,
    FakeStore,
    GatewayGone,
    RecordingReport,
    Trail,
    declined,
    sold,
)

pytestmark = pytest.mark.timeout(5)

URL = "http://127.0.0.1:9"
CONFIG = f"""
account: {{name: Test, time_zone: America/Chicago}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - {{id: a, name: A, caps: [{{max_leads: 10, per: day}}], delivery: {{type: http, url: "{URL}/a"}}}}
  - {{id: b, name: B, caps: [{{max_leads: 10, per: day}}], delivery: {{type: http, url: "{URL}/b"}}}}
  - {{id: c, name: C, delivery: {{type: http, url: "{URL}/c"}}}}
  - id: priced
    name: Priced
    caps: [{{max_amount: 100, per: month}}]
    pricing: {{prices: [{{amount: 5}}]}}
    delivery: {{type: http, url: "{URL}/priced"}}
  - id: quoted
    name: Quoted
    caps: [{{max_leads: 10, per: day}}]
    pricing: {{service: {{url: "{URL}/price", timeout_ms: 500, fallback_price: 1}}}}
    delivery: {{type: http, url: "{URL}/quoted"}}
flows:
  - id: one
    name: One stage
    sources: [{{source: vendor}}]
    stages: [{{name: first, steps: [{{buyer: a}}, {{buyer: b}}, {{buyer: c}}]}}]
  - id: two-sales
    name: Sells twice
    sources: [{{source: vendor}}]
    stages: [{{name: first, sell: 2, steps: [{{buyer: a}}, {{buyer: b}}, {{buyer: c}}]}}]
  - id: exclusive
    name: Exclusive first stage
    sources: [{{source: vendor}}]
    stages:
      - {{name: first, exclusive: true, steps: [{{buyer: a}}, {{buyer: b}}]}}
      - {{name: second, steps: [{{buyer: a}}, {{buyer: c}}]}}
  - id: shared
    name: Shared first stage
    sources: [{{source: vendor}}]
    stages:
      - {{name: first, steps: [{{buyer: a}}, {{buyer: b}}]}}
      - {{name: second, steps: [{{buyer: a}}, {{buyer: c}}]}}
  - id: required
    name: Sale required
    require_sale: true
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: a}}, {{buyer: b}}]}}]
  - id: priced
    name: Rules price the sale
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: priced}}, {{buyer: c}}]}}]
  - id: quoted
    name: A pricing service prices the sale
    caps: [{{max_leads: 100, per: day}}]
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: quoted}}, {{buyer: c}}]}}]
  - id: sold-then-quoted
    name: A sale before a step that cannot be priced
    sources: [{{source: vendor}}]
    stages:
      - {{name: first, steps: [{{buyer: a}}]}}
      - {{name: second, steps: [{{buyer: quoted}}, {{buyer: c}}]}}
  - id: closed
    name: Closed
    hours: {{monday: ["00:00-00:01"], time_zone: Pacific/Kiritimati}}
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: c}}]}}]
  - id: dedup
    name: Duplicates checked
    duplicates: {{fields: [vin], reason: Seen this one}}
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: c}}]}}]
  - id: full
    name: One lead a day
    caps: [{{max_leads: 1, per: day, reason: Flow full}}]
    sources: [{{source: vendor}}]
    stages: [{{name: only, steps: [{{buyer: c}}]}}]
"""
# Compiled once: a plan holds no per-lead state, and compiling per test would cost most of it.
PLAN = RoutingPlan(parse_config(CONFIG, {}))
MONDAY = datetime(2026, 11, 16, 18, 0, tzinfo=UTC)
SUCCESS, FAILURE, ERROR, SKIP, UNKNOWN = "success", "failure", "error", "skip", "unknown"
VIN = "1HGCM82633A004352"
Event = tuple[str, str, str]  # (buyer, outcome, reason) of a decided recipient event
Answers = dict[str, DeliverLeadResponse | grpc.StatusCode | BaseException]


@dataclass
class Suite:
    """A Distributor over fakes that share one trail of what happened."""

    trail: Trail = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = FakeStore(self.trail)
        self.peers = FakePeers(self.trail)
        self.report = RecordingReport(self.trail)
        self.distributor = Distributor(Router(PLAN, self.store, self.peers), PLAN.config)  # type: ignore[arg-type]

    async def distribute(
        self,
        flow: str,
        lead_id: str = "L1",
        quotes: Sequence[lead_pb2.StepQuote] = (),
        report: RecordingReport | None = None,
        **fields: str,
    ) -> tuple[str, str]:
        lead = LeadData(lead_id, flow, "vendor", parse_lead(fields), MONDAY)
        given = {(q.stage_index, q.step_index): q for q in quotes}
        return await self.distributor.distribute(
            lead, lead.to_proto(), Decimal(2), given, report or self.report
        )

    def events(self) -> list[Event]:
        return [
            (e.buyer_id, outcome_from_proto(e.outcome), e.reason)
            for e in self.report.decided_events
        ]


@pytest.fixture
def suite() -> Suite:
    return Suite()


def rules_quote(stage: int, step: int, price: Decimal) -> lead_pb2.StepQuote:
    """A sale quote as it comes with the purchase price (pricing rules decided it)."""
    audit = PriceAudit(layer="rules", amount=price, rule_index=0).to_proto()
    return lead_pb2.StepQuote(
        stage_index=stage, step_index=step, price=to_proto(price), audit=audit
    )


@pytest.mark.parametrize(
    ("answers", "offered", "events"),
    [
        ({"a": sold("r-1")}, ["a"], [("a", SUCCESS, "")]),
        (
            {"a": declined("Too far"), "b": sold()},
            ["a", "b"],
            [("a", FAILURE, "Too far"), ("b", SUCCESS, "")],
        ),
        (
            {},
            ["a", "b", "c"],
            [("a", FAILURE, DECLINED), ("b", FAILURE, DECLINED), ("c", FAILURE, DECLINED)],
        ),
    ],
    ids=["first-takes", "first-declines", "nobody-takes"],
)
async def test_offers_go_down_the_stage_until_a_buyer_takes_the_lead(
    suite: Suite, answers: Answers, offered: list[str], events: list[Event]
) -> None:
    suite.peers.answers.update(answers)
    assert await suite.distribute("one") == (SUCCESS, "")  # no require_sale: accepted anyway
    assert suite.peers.buyers() == offered
    assert suite.events() == events


async def test_the_buyers_reference_and_the_offer_are_carried_on_the_event(suite: Suite) -> None:
    suite.peers.answers["a"] = sold("r-1")
    await suite.distribute("one")
    request = suite.peers.delivered[0]
    assert (request.request_id, request.lead.id, from_proto(request.purchase_price)) == (
        "L1-1",
        "L1",
        Decimal(2),
    )
    [event] = suite.report.decided_events
    assert (event.id, event.stage_name, event.strategy, event.reference) == (
        "L1-1",
        "first",
        "priority",
        "r-1",
    )


async def test_a_declined_steps_holds_are_released_before_the_next_offer(suite: Suite) -> None:
    suite.peers.answers.update(a=declined(), b=sold())
    await suite.distribute("one")
    trail = suite.trail
    assert trail.index("deliver a") < trail.index("release step:0:0") < trail.index("offering b")
    assert suite.store.counter("buyer:a:0") == (0, 0, 0)
    assert suite.store.counter("buyer:b:0") == (1, 0, 0)  # committed with the lead's settlement
    [settled] = suite.store.settled
    assert [(s.stage_index, s.step_index, s.buyer_id) for s in settled.sales] == [(0, 1, "b")]


async def test_a_buyer_whose_cap_is_full_is_skipped_with_its_reason_and_never_reserved(
    suite: Suite,
) -> None:
    rule = PLAN.step("one", 0, 0).caps[0]
    suite.store.used[(rule.key, rule.window(MONDAY))] = [10, 0]  # max_leads: 10, all used
    suite.peers.answers["b"] = sold()
    await suite.distribute("one")
    assert suite.events() == [("a", SKIP, CAP_REACHED), ("b", SUCCESS, "")]
    assert suite.peers.buyers() == ["b"]
    assert not [entry for entry in suite.trail if entry.startswith("reserve step:0:0")]


async def test_a_step_whose_reservation_is_refused_is_skipped_and_the_next_offered(
    suite: Suite,
) -> None:
    suite.store.filled_meanwhile.add("step:0:0")
    suite.peers.answers.update(a=sold(), b=sold())
    await suite.distribute("one")
    assert suite.events() == [("a", SKIP, CAP_REACHED), ("b", SUCCESS, "")]
    assert suite.peers.buyers() == ["b"]  # never offered: no offering either
    assert [o.buyer_id for o in suite.report.offerings] == ["b"]


@pytest.mark.parametrize(
    ("answers", "offered"),
    [
        ({"a": sold(), "b": sold(), "c": sold()}, ["a", "b"]),
        ({"a": sold(), "b": declined(), "c": sold()}, ["a", "b", "c"]),
        ({"a": grpc.StatusCode.UNAVAILABLE, "b": sold(), "c": sold()}, ["a", "b"]),
    ],
    ids=["two-take", "one-declines-between", "an-unknown-counts"],
)
async def test_sell_two_stops_after_two_allocations(
    suite: Suite, answers: Answers, offered: list[str]
) -> None:
    suite.peers.answers.update(answers)
    await suite.distribute("two-sales")
    assert suite.peers.buyers() == offered


@pytest.mark.parametrize(
    ("flow", "answers", "offered", "events"),
    [
        ("exclusive", {"a": sold()}, ["a"], [("a", SUCCESS, "")]),
        (
            "exclusive",
            {"a": declined(), "b": declined(), "c": sold()},
            ["a", "b", "a", "c"],
            [
                ("a", FAILURE, DECLINED),
                ("b", FAILURE, DECLINED),
                ("a", FAILURE, DECLINED),  # not allocated to a: offered again in the next stage
                ("c", SUCCESS, ""),
            ],
        ),
        (
            "shared",
            {"a": sold(), "c": sold()},
            ["a", "c"],
            [("a", SUCCESS, ""), ("a", SKIP, ALREADY_SOLD), ("c", SUCCESS, "")],
        ),
    ],
    ids=["exclusive-sold-ends", "exclusive-unsold-goes-on", "shared-sold-goes-on"],
)
async def test_only_an_exclusive_stage_that_sold_ends_the_distribution(
    suite: Suite, flow: str, answers: Answers, offered: list[str], events: list[Event]
) -> None:
    suite.peers.answers.update(answers)
    assert await suite.distribute(flow) == (SUCCESS, "")
    assert suite.peers.buyers() == offered
    assert suite.events() == events


@pytest.mark.parametrize(
    ("flow", "answers", "reported"),
    [
        (
            "shared",
            {"a": sold(), "c": sold()},
            ["decided a", "flush", "decided a", "offering c", "decided c"],
        ),
        ("exclusive", {"a": sold()}, ["decided a"]),  # it ended the lead: nothing left to flush
    ],
    ids=["stage-followed", "lead-ended"],
)
async def test_a_stage_with_another_after_it_flushes_what_it_decided(
    suite: Suite, flow: str, answers: Answers, reported: list[str]
) -> None:
    suite.peers.answers.update(answers)
    await suite.distribute(flow)
    told = [t for t in suite.trail if t.startswith(("decided", "flush", "offering"))]
    assert told[1:] == reported  # the first is stage one's offering of a


@pytest.mark.parametrize(
    ("answers", "result"),
    [
        ({}, (FAILURE, NO_BUYER)),
        ({"b": sold()}, (SUCCESS, "")),
        ({"a": grpc.StatusCode.UNAVAILABLE}, (SUCCESS, "")),  # the buyer may have it (SPEC 8.1)
    ],
    ids=["nobody", "second-takes", "unknown-allocates"],
)
async def test_require_sale_fails_a_lead_no_buyer_took(
    suite: Suite, answers: Answers, result: tuple[str, str]
) -> None:
    suite.peers.answers.update(answers)
    assert await suite.distribute("required") == result
    [settled] = suite.store.settled
    assert settled.accepted is (result[0] == SUCCESS)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_a_delivery_failing_after_the_offering_is_unknown_and_keeps_its_holds(
    suite: Suite, code: grpc.StatusCode
) -> None:
    suite.peers.answers.update(a=code, b=sold())
    assert await suite.distribute("one") == (SUCCESS, "")
    assert suite.events() == [
        ("a", UNKNOWN, f"Delivery interrupted ({code.name}): outcome unknown")
    ]
    assert suite.peers.buyers() == ["a"]  # allocated: sell 1 is reached
    assert "release step:0:0" not in suite.trail
    [settled] = suite.store.settled
    assert (settled.sales, settled.unknown) == ([], ["step:0:0"])
    assert suite.store.held_scopes("L1") == {"step:0:0"}
    assert suite.store.counter("buyer:a:0") == (0, 0, 1)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    ],
)
async def test_a_delivery_refused_before_sending_is_an_error_and_the_next_step_is_offered(
    suite: Suite, code: grpc.StatusCode
) -> None:
    suite.peers.answers.update(a=code, b=sold())
    assert await suite.distribute("one") == (SUCCESS, "")
    assert suite.events() == [
        ("a", ERROR, f"Delivery unavailable: {code.name}"),
        ("b", SUCCESS, ""),
    ]
    assert suite.peers.buyers() == ["a", "b"]
    assert suite.trail.index("release step:0:0") < suite.trail.index("offering b")
    assert suite.store.counter("buyer:a:0") == (0, 0, 0)
    assert suite.store.held_scopes("L1") == set()


@pytest.mark.parametrize(
    ("answer_price", "price", "layer"),
    [(None, Decimal(5), "rules"), (Decimal("7.25"), Decimal("7.25"), "response")],
    ids=["quote-stands", "buyer-answers-a-price"],
)
async def test_a_buyers_answer_price_replaces_the_quote_and_the_caps_commit_it(
    suite: Suite, answer_price: Decimal | None, price: Decimal, layer: str
) -> None:
    suite.peers.answers["priced"] = sold(price=answer_price)
    await suite.distribute("priced", quotes=[rules_quote(0, 0, Decimal(5))])
    assert from_proto(suite.peers.delivered[0].sale_price) == Decimal(5)  # offered at the quote
    assert from_proto(suite.report.offerings[0].sale_price) == Decimal(5)
    [event] = suite.report.decided_events
    assert from_proto(event.sale_price) == price
    assert (event.price_audit.layer, from_proto(event.price_audit.amount)) == (layer, price)
    micros = int(price * 1_000_000)
    assert suite.store.counter("buyer:priced:0") == (1, micros, 0)
    [settled] = suite.store.settled
    assert [c.micros for c in settled.final] == [micros]
    assert suite.peers.asked == []  # the quote came with the purchase price


async def test_a_service_priced_step_is_quoted_by_routing_once_and_offered_at_that_price(
    suite: Suite,
) -> None:
    quote = Quote(Decimal("3.50"), PriceAudit(layer="service", amount=Decimal("3.50")))
    suite.peers.quotes[(0, 0)] = quote
    suite.peers.answers["quoted"] = sold()
    await suite.distribute("quoted")
    assert suite.peers.asked == [(0, 0)]
    assert from_proto(suite.peers.delivered[0].sale_price) == Decimal("3.50")
    [event] = suite.report.decided_events
    assert event.price_audit.layer == "service"


@pytest.mark.parametrize(
    ("quote", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Sale price unavailable: UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Sale price unavailable: DEADLINE_EXCEEDED"),
        (None, "Sale price unavailable: UNAVAILABLE"),  # no pricing service to ask
    ],
    ids=["unavailable", "too-slow", "none"],
)
async def test_a_step_whose_sale_price_cannot_be_had_stops_the_lead_with_an_error(
    suite: Suite, quote: grpc.StatusCode | None, reason: str
) -> None:
    if quote is not None:
        suite.peers.quotes[(0, 0)] = quote
    suite.peers.answers["c"] = sold()
    assert await suite.distribute("quoted") == (ERROR, NOT_PROCESSED)
    assert suite.events() == [("quoted", ERROR, reason)]
    assert suite.peers.delivered == []  # the next step is not offered either
    [settled] = suite.store.settled
    assert settled.accepted is False


async def test_a_lead_sold_before_a_step_that_cannot_be_priced_stays_a_success(
    suite: Suite,
) -> None:
    suite.peers.quotes[(1, 0)] = grpc.StatusCode.UNAVAILABLE
    suite.peers.answers.update(a=sold(), c=sold())
    # Buyer a has the lead: it is not an unprocessed lead the vendor may submit again.
    assert await suite.distribute("sold-then-quoted") == (SUCCESS, "")
    assert suite.events() == [
        ("a", SUCCESS, ""),
        ("quoted", ERROR, "Sale price unavailable: UNAVAILABLE"),
    ]
    assert suite.peers.buyers() == ["a"]  # the lead still goes no further
    [settled] = suite.store.settled
    assert settled.accepted is True  # its admission and duplicate key are committed
    assert suite.store.counter("buyer:a:0") == (1, 0, 0)


@pytest.mark.parametrize(
    ("flow", "earlier", "reason"),
    [
        ("closed", 0, OUTSIDE_HOURS),
        ("dedup", 1, "Seen this one"),
        ("full", 1, "Flow full"),
    ],
    ids=["hours", "duplicate", "flow-cap"],
)
async def test_a_lead_admission_refuses_fails_with_its_reason_and_reports_nothing(
    suite: Suite, flow: str, earlier: int, reason: str
) -> None:
    suite.peers.answers["c"] = sold()
    for n in range(earlier):  # accepted leads that fill the flow's cap or take its duplicate key
        assert await suite.distribute(flow, f"E{n}", vin=VIN) == (SUCCESS, "")
    trail_before, delivered_before = len(suite.trail), len(suite.peers.delivered)
    report = RecordingReport([])
    assert await suite.distribute(flow, "L1", report=report, vin=VIN) == (
        FAILURE,
        reason,
    )
    assert (report.trail, report.decided_events, report.offerings) == ([], [], [])
    assert len(suite.peers.delivered) == delivered_before
    assert suite.trail[trail_before:] in ([], ["admit"])  # nothing settled: nothing was reserved
    assert "L1" not in [s.lead_id for s in suite.store.settled]


async def test_an_offering_is_reported_once_reserved_and_before_the_offer_leaves(
    suite: Suite,
) -> None:
    suite.peers.answers["a"] = sold()
    await suite.distribute("one")
    assert suite.trail == [
        "admit",  # with the first stage's cap check: no read of its own
        "reserve step:0:0 with admission",  # the first offer's caps: no write of its own
        "offering a",
        "deliver a",
        "decided a",
        "settle_lead",
    ]
    [offering] = suite.report.offerings
    assert (offering.id, outcome_from_proto(offering.outcome), offering.reason) == (
        "L1-1",
        UNKNOWN,
        IN_FLIGHT,
    )


async def test_an_offering_the_caller_never_took_is_not_sent_and_the_lead_still_settles(
    suite: Suite,
) -> None:
    suite.report.gone = True
    suite.peers.answers["a"] = sold()
    with pytest.raises(GatewayGone):
        await suite.distribute("one")
    assert suite.peers.delivered == []
    assert suite.trail[-2:] == ["offering a", "settle_lead"]
    [settled] = suite.store.settled
    assert (settled.accepted, settled.sales, settled.unknown) == (False, [], [])
    assert suite.store.counter("buyer:a:0") == (0, 0, 0)  # never sent: its holds go back


async def test_an_offer_cut_short_after_its_offering_keeps_its_holds_for_resolution(
    suite: Suite,
) -> None:
    suite.peers.answers["a"] = asyncio.CancelledError()  # the caller went away mid-offer
    with pytest.raises(asyncio.CancelledError):
        await suite.distribute("one")
    assert [o.buyer_id for o in suite.report.offerings] == ["a"]
    [settled] = suite.store.settled
    assert (settled.accepted, settled.unknown) == (False, ["step:0:0"])
    assert suite.store.held_scopes("L1") == {"step:0:0"}


async def test_a_lead_cut_off_before_any_offer_left_is_not_settled_under_its_retry(
    suite: Suite,
) -> None:
    suite.peers.quotes[(0, 0)] = asyncio.CancelledError()  # the gateway went away meanwhile
    with pytest.raises(asyncio.CancelledError):
        await suite.distribute("quoted")
    assert suite.report.offerings == []
    assert "settle_lead" not in suite.trail
    # The gateway's retry of the lead (admission is idempotent per lead) settles these.
    assert suite.store.held_scopes("L1") == {"lead"}
