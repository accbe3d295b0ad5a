"""A stateful property test of the ledger (issue 6, acceptance 3): random submissions, batch sales,
returns, conversions and decisions, with replays of each. After every step: the trial balance is
zero, the reports equal the sums of the events to the cent, and a replay changed nothing.

Runs on the real store, SQLite and PostgreSQL. Hypothesis is synchronous, so the machine runs in
a worker thread with an event loop of its own; each example uses its own id prefix, so examples
that share the database never see each other's rows."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from leadflow.money import from_micros
from ledger_service.feedback import CONVERSION, RETURN, FeedbackRequest, ReturnPolicy
from ledger_service.ledger import DeliveryOutcome, LeadRecord
from ledger_service.store import LedgerStore
from tests.service.helpers_ledger import lead_record, recipient

if TYPE_CHECKING:
    from conftest import Database

T = TypeVar("T")
START = datetime(2026, 3, 1, tzinfo=UTC)
EVERYTHING = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC))
WINDOW_DAYS = 30
REASONS = ("Bad phone", "Duplicate")
SOURCES = 2
BUYERS = 3
FLOWS = 2

cents = st.integers(min_value=0, max_value=50_000)  # $0.00 to $500.00
# Minutes between steps: often none, sometimes days, so return windows do run out.
elapsed = st.sampled_from([0, 1, 60, 60 * 24, 60 * 24 * 10, 60 * 24 * 25])
# Sales weighted up: returns, chargebacks and credits need them.
recipient_outcomes = st.sampled_from(["success", "success", "failure", "error", "skip", "queued"])


@dataclass
class Event:
    id: str
    lead_id: str
    buyer: str
    outcome: str
    quoted: int  # micros
    batch: bool = False
    sold_at: datetime | None = None
    sale: int = 0  # micros, once sold


@dataclass
class Lead:
    id: str
    flow: str
    source: str
    accepted: bool
    price: int  # micros paid (0 unless accepted)
    record: LeadRecord
    events: list[Event] = field(default_factory=list)
    charged_back: bool = False


@dataclass
class Sent:
    """A feedback request as sent, with what the ledger answered."""

    request: FeedbackRequest
    at: datetime
    status: str


class LedgerMachine(RuleBasedStateMachine):
    """The model: the events we sent, and the money they should have moved."""

    loop: asyncio.AbstractEventLoop
    store: LedgerStore

    leads = Bundle("leads")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"p{uuid.uuid4().hex[:10]}"
        self.now = START
        self.count = 0
        self.by_id: dict[str, Lead] = {}
        self.events: dict[str, Event] = {}
        self.returned: set[tuple[str, str]] = set()
        self.converted: set[tuple[str, str]] = set()
        self.pending: dict[str, Sent] = {}
        self.decided: dict[str, str] = {}
        self.feedback_leads: dict[str, str] = {}
        # What the journal must hold for this example.
        self.credits: dict[str, int] = defaultdict(int)  # by buyer
        self.returns: dict[str, int] = defaultdict(int)
        self.chargebacks: dict[str, int] = defaultdict(int)  # by source

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def name(self, kind: str, n: int) -> str:
        return f"{self.prefix}-{kind}{n}"

    def new_id(self, kind: str) -> str:
        self.count += 1
        return f"{self.prefix}-{kind}{self.count}"

    def mine(self, postings: list[Any]) -> list[Any]:
        return [p for p in postings if p.lead.lead_id.startswith(self.prefix)]

    def snapshot(self) -> list[Any]:
        return self.mine(self.run(self.store.postings()))

    # --- Steps -----------------------------------------------------------------------------

    @rule(
        target=leads,
        flow=st.integers(0, FLOWS - 1),
        source=st.integers(0, SOURCES - 1),
        accepted=st.sampled_from([True, True, True, False]),
        price=cents,
        offers=st.lists(
            st.tuples(st.integers(0, BUYERS - 1), recipient_outcomes, cents),
            min_size=1,
            max_size=3,
        ),
        later=elapsed,
    )
    def submit_lead(
        self, flow: int, source: int, accepted: bool, price: int, offers: list[Any], later: int
    ) -> str:
        self.now += timedelta(minutes=later)
        lead_id = self.new_id("lead")
        recipients = []
        for n, (buyer, outcome, quoted) in enumerate(offers if accepted else []):
            recipients.append(
                recipient(f"{lead_id}-{n}", self.name("buyer", buyer), outcome, _dollars(quoted))
            )
        record = lead_record(
            lead_id,
            flow_id=self.name("flow", flow),
            source_id=self.name("source", source),
            outcome="success" if accepted else "failure",
            price=_dollars(price),
            recipients=recipients,
            at=self.now,
        )
        assert self.run(self.store.record(record))
        lead = Lead(
            lead_id,
            record.lead.flow_id,
            record.lead.source_id,
            accepted,
            price * 10_000 if accepted else 0,
            record,
        )
        for event in recipients:
            micros = int(event.sale_price * 1_000_000)
            item = Event(
                event.id, lead_id, event.buyer_id, event.outcome, micros, event.outcome == "queued"
            )
            if event.outcome == "success":
                item.sold_at, item.sale = self.now, micros
            lead.events.append(item)
            self.events[item.id] = item
        self.by_id[lead_id] = lead
        return lead_id

    @rule(lead_id=leads)
    def replay_lead(self, lead_id: str) -> None:
        before = self.snapshot()
        assert not self.run(self.store.record(self.by_id[lead_id].record))
        assert self.snapshot() == before

    @rule(
        lead_id=leads,
        pick=st.integers(0, 2),
        outcome=st.sampled_from(["success", "success", "failure", "error"]),
        price=st.none() | cents,
    )
    def complete_batch(self, lead_id: str, pick: int, outcome: str, price: int | None) -> None:
        batch = [e for e in self.by_id[lead_id].events if e.batch]
        if not batch:
            return
        event = batch[pick % len(batch)]
        event_id = event.id
        completion = DeliveryOutcome(
            recipient_event_id=event_id,
            outcome=outcome,
            reason="",
            sale_price=None if price is None else Decimal(_dollars(price)),
            attempts=(),
            complete_time=self.now,
        )
        if event.outcome != "queued":
            # Completed before: a repeat, even with another outcome, changes nothing.
            before = self.snapshot()
            again, posting = self.run(self.store.record_delivery_outcome(completion))
            assert not again.created and posting is None
            assert self.snapshot() == before
            return
        completed, _ = self.run(self.store.record_delivery_outcome(completion))
        assert completed.created
        event.outcome = outcome
        event.quoted = event.quoted if price is None else price * 10_000
        if outcome == "success":
            event.sold_at, event.sale = self.now, event.quoted

    @rule(
        target=sent,
        lead_id=leads,
        buyer=st.integers(0, BUYERS - 1),
        pick_offered=st.integers(0, 4),
        kind=st.sampled_from([RETURN, RETURN, CONVERSION]),
        reason=st.sampled_from([*REASONS, *REASONS, "bad phone", "Too expensive"]),
        share=st.none() | st.integers(1, 100),
        auto_approve=st.booleans(),
        to_source=st.booleans(),
        later=elapsed,
    )
    def send_feedback(
        self,
        lead_id: str,
        buyer: int,
        pick_offered: int,
        kind: str,
        reason: str,
        share: int | None,
        auto_approve: bool,
        to_source: bool,
        later: int,
    ) -> str:
        self.now += timedelta(minutes=later)
        lead = self.by_id[lead_id]
        buyer_id = self.name("buyer", buyer)
        # Mostly a buyer that bought the lead, sometimes one it was only offered to, or anyone.
        bought = [e for e in lead.events if e.sold_at is not None]
        if bought and pick_offered < 3:
            buyer_id = bought[pick_offered % len(bought)].buyer
        elif lead.events and pick_offered == 3:
            buyer_id = lead.events[buyer % len(lead.events)].buyer
        offered = [e for e in lead.events if e.buyer == buyer_id]
        sold = sorted((e for e in offered if e.sold_at is not None), key=_sale_order)
        sale = sold[0] if sold else None
        amount = None
        if share is not None and sale is not None and sale.sale:
            amount = Decimal(sale.sale * share // 100 // 10_000) / 100 or None
        policy = ReturnPolicy(
            window_days=WINDOW_DAYS,
            auto_approve=auto_approve,
            reasons=REASONS,
            return_to_source=to_source,
        )
        request = FeedbackRequest(
            feedback_id=self.new_id("fb"),
            buyer_id=buyer_id,
            type=kind,
            lead_id=lead_id,
            reason=reason,
            amount=amount,
            policy=policy,
        )
        if not offered:
            try:
                self.run(self.store.submit_feedback(request, self.now))
            except LookupError:
                return _NOTHING
            raise AssertionError("feedback on a lead never offered to the buyer was taken")

        record, created, _ = self.run(self.store.submit_feedback(request, self.now))
        assert created
        self.feedback_leads[request.feedback_id] = lead_id
        expected = self.expected_status(request, sale)
        assert record.status == expected, (record, expected)
        key = (buyer_id, lead_id)
        if record.outcome == "success":
            (self.converted if kind == CONVERSION else self.returned).add(key)
        if kind == RETURN and record.status == "approved":
            self.book_return(lead, buyer_id, record.amount, to_source)
        if record.status == "pending":
            self.pending[request.feedback_id] = Sent(request, self.now, "pending")
        return request.feedback_id

    def expected_status(self, request: FeedbackRequest, sale: Event | None) -> str:
        """The policy's answer, computed from the model alone."""
        key = (request.buyer_id, request.lead_id)
        assert request.policy is not None
        if sale is None or sale.sold_at is None:
            return "denied"
        if request.type == CONVERSION:
            return "denied" if key in self.converted else "approved"
        if key in self.returned:
            return "denied"
        if self.now > sale.sold_at + timedelta(days=WINDOW_DAYS):
            return "denied"
        if request.reason.casefold() not in {r.casefold() for r in REASONS}:
            return "denied"
        if request.amount is not None and request.amount * 1_000_000 > sale.sale:
            return "denied"
        return "approved" if request.policy.auto_approve else "pending"

    def book_return(self, lead: Lead, buyer_id: str, amount: Decimal, to_source: bool) -> None:
        self.credits[buyer_id] += int(amount * 1_000_000)
        self.returns[buyer_id] += 1
        if to_source and not lead.charged_back and lead.price > 0:
            lead.charged_back = True
            self.chargebacks[lead.source] += lead.price

    @rule(feedback_id=sent)
    def replay_feedback(self, feedback_id: str) -> None:
        if feedback_id == _NOTHING:
            return
        before = self.snapshot()
        first = self.run(self.store.feedback(self.feedback_leads[feedback_id]))
        request = FeedbackRequest(
            feedback_id=feedback_id, buyer_id="whoever", type=RETURN, lead_id="whatever"
        )
        record, created, postings = self.run(self.store.submit_feedback(request, self.now))
        assert not created and postings == []
        assert record in first
        assert self.snapshot() == before

    @rule(feedback_id=sent, approve=st.booleans())
    def decide(self, feedback_id: str, approve: bool) -> None:
        sent = self.pending.pop(feedback_id, None)
        if sent is None:
            return
        self.now += timedelta(minutes=1)
        record, changed, _ = self.run(self.store.decide_return(feedback_id, approve, self.now))
        assert changed and record.status == ("approved" if approve else "denied")
        if approve:
            request = sent.request
            assert request.policy is not None
            self.book_return(
                self.by_id[request.lead_id],
                request.buyer_id,
                record.amount,
                request.policy.return_to_source,
            )
        self.decided[feedback_id] = record.status
        # The same decision again changes nothing.
        before = self.snapshot()
        _, again, postings = self.run(self.store.decide_return(feedback_id, approve, self.now))
        assert not again and postings == []
        assert self.snapshot() == before

    # --- Invariants --------------------------------------------------------------------------

    @invariant()
    def trial_balance_is_zero(self) -> None:
        balances = self.run(self.store.trial_balance())
        assert sum(balances.values()) == 0
        for lead in self.by_id.values():
            payable = -balances.get(f"vendor_payable:{lead.source}", 0)
            assert payable == self.net_payable(lead.source)

    def net_payable(self, source: str) -> int:
        paid = sum(lead.price for lead in self.by_id.values() if lead.source == source)
        return paid - self.chargebacks[source]

    @invariant()
    def vendor_report_equals_the_events(self) -> None:
        lines = {
            line.source_id: line
            for line in self.run(self.store.vendor_report(*EVERYTHING))
            if line.source_id.startswith(self.prefix)
        }
        expected: dict[str, tuple[int, int, int, int]] = {}
        for source in {lead.source for lead in self.by_id.values()}:
            mine = [lead for lead in self.by_id.values() if lead.source == source]
            expected[source] = (
                len(mine),
                sum(lead.accepted for lead in mine),
                sum(lead.price for lead in mine),
                self.chargebacks[source],
            )
        got = {
            source: (line.leads, line.accepted, line.purchase_micros, line.chargeback_micros)
            for source, line in lines.items()
        }
        assert got == expected

    @invariant()
    def buyer_report_equals_the_events(self) -> None:
        lines = {
            line.buyer_id: line
            for line in self.run(self.store.buyer_report(*EVERYTHING))
            if line.buyer_id.startswith(self.prefix)
        }
        expected: dict[str, tuple[int, ...]] = {}
        for buyer in {event.buyer for event in self.events.values()}:
            mine = [e for e in self.events.values() if e.buyer == buyer]
            done = [e for e in mine if e.outcome in ("success", "failure", "error")]
            if not done:
                continue
            expected[buyer] = (
                len(done),
                sum(e.outcome == "success" for e in done),
                sum(e.outcome == "failure" for e in done),
                sum(e.outcome == "error" for e in done),
                sum(e.sale for e in done),
                self.returns[buyer],
                self.credits[buyer],
                sum(e.quoted for e in done if e.outcome == "failure"),
            )
        got = {
            buyer: (
                line.deliveries,
                line.sold,
                line.failed,
                line.errors,
                line.sales_micros,
                line.returns,
                line.return_credit_micros,
                line.failed_opportunity_micros,
            )
            for buyer, line in lines.items()
        }
        assert got == expected

    @invariant()
    def margin_totals_equal_the_events(self) -> None:
        for group_by in (["flow"], ["source", "buyer"]):
            totals = self.run(self.store.margin_report(*EVERYTHING, group_by))
            mine = [
                line
                for line in totals.lines
                if (line.flow_id or line.source_id).startswith(self.prefix)
            ]
            revenue = sum(e.sale for e in self.events.values())
            cost = sum(lead.price for lead in self.by_id.values()) - sum(self.chargebacks.values())
            assert sum(line.revenue_micros for line in mine) == revenue
            assert sum(line.cost_micros for line in mine) == cost
            assert sum(line.credit_micros for line in mine) == sum(self.credits.values())


_NOTHING = "-"


def _dollars(value: int) -> str:
    return f"{from_micros(value * 10_000):.2f}"


def _sale_order(event: Event) -> tuple[datetime, str]:
    assert event.sold_at is not None
    return (event.sold_at, event.id)


def _run_machine(database: Database, examples: int, steps: int) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(LedgerStore.open(database.url, database.schema))
    try:
        LedgerMachine.loop = loop
        LedgerMachine.store = store
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                # No shrinking: it can take minutes against a database, past the test's timeout;
                # a failing run still prints its steps.
                phases=(Phase.explicit, Phase.reuse, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        loop.run_until_complete(store.close())
        loop.close()


async def test_journal_balances_and_reports_match_events_after_every_step(
    database: Database,
) -> None:
    await asyncio.to_thread(_run_machine, database, 15, 35)
