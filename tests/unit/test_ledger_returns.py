"""The ledger's rules without its store: the return state machine and what returns post, which
sale feedback is judged against, and completing queued or unknown recipient events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger_service import journal, returns
from ledger_service.completion import RecordedEvent, complete
from ledger_service.feedback import (
    APPROVED,
    CONVERSION,
    DENIED,
    PENDING,
    RETURN,
    DecisionRefused,
    Delivered,
    FeedbackRecord,
    FeedbackRequest,
    History,
    LeadTerms,
    OfferedEvent,
    ReturnPolicy,
    Sale,
    UnknownSale,
    Verdict,
    feedback_record,
    judge,
    needs_month_counts,
    offered_to,
    sale_of,
)
from ledger_service.journal import LeadKey
from ledger_service.ledger import DeliveryOutcome, NotQueued

T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)
DECIDED = T0 + timedelta(days=1)


def feedback(**changes: object) -> FeedbackRecord:
    values: dict[str, object] = {
        "id": "F1",
        "lead_id": "L1",
        "recipient_event_id": "L1-1",
        "buyer_id": "acme",
        "flow_id": "auto",
        "source_id": "vendor",
        "type": RETURN,
        "reason": "Bad phone",
        "amount": Decimal("20.00"),
        "outcome": "success",
        "outcome_reason": "",
        "initial_status": PENDING,
        "return_to_source": False,
        "sale_time": T0,
        "create_time": T0,
    }
    values.update(changes)
    return FeedbackRecord(**values)  # type: ignore[arg-type]


# --- The return state machine ------------------------------------------------------------------

# (what the record is, the operator's decision) -> the status it ends in, whether the decision
# is written, or the refusal.
TRANSITIONS = [
    (feedback(), True, APPROVED, True),
    (feedback(), False, DENIED, True),
    (feedback(initial_status=APPROVED), True, APPROVED, False),  # auto-approved: a repeat
    (feedback(decision=APPROVED, decide_time=T0), True, APPROVED, False),
    (feedback(decision=DENIED, decide_time=T0), False, DENIED, False),
    (feedback(initial_status=APPROVED), False, "Return already approved", None),
    (feedback(decision=APPROVED, decide_time=T0), False, "Return already approved", None),
    (feedback(decision=DENIED, decide_time=T0), True, "Return already denied", None),
    (
        feedback(outcome="failure", initial_status=DENIED),
        True,
        "Only a return that was taken can be approved or denied",
        None,
    ),
    (
        feedback(outcome="failure", initial_status=DENIED),
        False,
        "Only a return that was taken can be approved or denied",
        None,
    ),
    (
        feedback(type=CONVERSION, initial_status=APPROVED),
        True,
        "Only a return that was taken can be approved or denied",
        None,
    ),
]


@pytest.mark.parametrize(
    ("record", "approve", "expected", "written"),
    TRANSITIONS,
    ids=[
        "pending-approve",
        "pending-deny",
        "auto-approved-approve-again",
        "approved-approve-again",
        "denied-deny-again",
        "auto-approved-deny",
        "approved-deny",
        "denied-approve",
        "refused-approve",
        "refused-deny",
        "conversion",
    ],
)
def test_a_return_takes_one_decision_while_pending(
    record: FeedbackRecord, approve: bool, expected: str, written: bool | None
) -> None:
    if written is None:
        with pytest.raises(DecisionRefused, match=expected):
            returns.decide(record, approve, DECIDED)
        return
    decided = returns.decide(record, approve, DECIDED)
    if written:
        assert decided == replace(record, decision=expected, decide_time=DECIDED)
        assert decided.status == expected
    else:
        assert decided is None
        assert record.status == expected


@pytest.mark.parametrize(
    ("record", "credits"),
    [
        (feedback(initial_status=APPROVED), True),
        (feedback(initial_status=PENDING), False),
        (feedback(initial_status=DENIED, outcome="failure"), False),
        (feedback(type=CONVERSION, initial_status=APPROVED), False),
    ],
    ids=["auto-approved", "pending", "refused", "conversion"],
)
def test_only_an_auto_approved_return_credits_the_buyer_when_recorded(
    record: FeedbackRecord, credits: bool
) -> None:
    assert returns.credits_now(record) is credits


def test_an_approved_return_credits_the_returned_amount() -> None:
    record = feedback(amount=Decimal("7.25"), return_to_source=True)

    due = returns.return_postings(record, "EUR", 10_000_000, DECIDED)

    key = LeadKey("L1", "auto", "vendor", "EUR")
    assert due.credit == journal.return_credit(key, "F1", "L1-1", "acme", 7_250_000, DECIDED)
    assert due.credit.debit_account == "returns:auto"
    assert due.credit.credit_account == "buyer_receivable:acme"
    assert due.chargeback == journal.chargeback(key, "F1", "acme", 10_000_000, DECIDED)
    assert due.chargeback.amount_micros == 10_000_000  # what the vendor was paid, not the credit


@pytest.mark.parametrize(
    ("return_to_source", "price_paid_micros"),
    [(False, 10_000_000), (True, 0)],
    ids=["not-to-source", "vendor-paid-nothing"],
)
def test_the_vendor_is_charged_back_only_under_return_to_source_for_what_it_was_paid(
    return_to_source: bool, price_paid_micros: int
) -> None:
    record = feedback(return_to_source=return_to_source)

    due = returns.return_postings(record, "USD", price_paid_micros, DECIDED)

    assert due.chargeback is None
    assert due.credit.amount_micros == 20_000_000


# --- Which sale feedback is about --------------------------------------------------------------


def request(**changes: object) -> FeedbackRequest:
    values: dict[str, object] = {"feedback_id": "F1", "buyer_id": "acme", "type": RETURN}
    values.update(changes)
    return FeedbackRequest(**values)  # type: ignore[arg-type]


EVENTS = [
    OfferedEvent("L1-1", "L1", "acme", Decimal("20.00")),
    OfferedEvent("L1-2", "L1", "globex", Decimal("18.00")),
    OfferedEvent("L1-3", "L1", "acme", Decimal("15.00")),
]


def test_feedback_is_about_the_buyers_own_offers_of_the_lead() -> None:
    offered = offered_to(request(lead_id="L1"), EVENTS)

    assert [event.id for event in offered] == ["L1-1", "L1-3"]


@pytest.mark.parametrize(
    ("feedback_request", "events"),
    [
        (request(buyer_id="initech", lead_id="L1"), EVENTS),  # never offered to this buyer
        (request(recipient_event_id="L1-2"), [EVENTS[1]]),  # another buyer's event
        (request(lead_id="L2", recipient_event_id="L1-1"), [EVENTS[0]]),  # not of that lead
        (request(lead_id="L1"), []),  # no such lead
    ],
    ids=["other-buyer", "other-buyers-event", "event-of-another-lead", "unknown-lead"],
)
def test_feedback_on_anything_the_buyer_was_not_offered_is_unknown(
    feedback_request: FeedbackRequest, events: list[OfferedEvent]
) -> None:
    with pytest.raises(UnknownSale):
        offered_to(feedback_request, events)


TERMS = LeadTerms("auto", "vendor", "USD", Decimal("10.00"))


def test_the_sale_is_the_buyers_successful_delivery_at_its_booked_price() -> None:
    offered = [EVENTS[0], EVENTS[2]]
    delivered = Delivered("L1-3", Decimal("16.50"), T0)

    sale = sale_of("acme", offered, delivered, TERMS)

    assert sale == Sale(
        lead_id="L1",
        recipient_event_id="L1-3",
        buyer_id="acme",
        flow_id="auto",
        source_id="vendor",
        currency="USD",
        sale_price=Decimal("16.50"),
        sale_time=T0,
        price_paid=Decimal("10.00"),
    )


def test_without_a_successful_delivery_the_feedback_is_about_the_first_offer_unsold() -> None:
    sale = sale_of("acme", [EVENTS[0], EVENTS[2]], None, TERMS)

    assert (sale.recipient_event_id, sale.sale_price, sale.sold) == (
        "L1-1",
        Decimal("20.00"),
        False,
    )
    verdict = judge(request(lead_id="L1", policy=ReturnPolicy()), sale, History(), T0)
    assert (verdict.status, verdict.reason) == (DENIED, "Lead was not sold to this buyer")


def test_a_judged_return_is_recorded_with_its_verdict_and_policy() -> None:
    sale = sale_of("acme", [EVENTS[0]], Delivered("L1-1", Decimal("20.00"), T0), TERMS)
    policy = ReturnPolicy(reasons=("Bad phone",), return_to_source=True, auto_approve=False)
    feedback_request = request(lead_id="L1", reason="  bad PHONE ", policy=policy)

    verdict = judge(feedback_request, sale, History(), T0 + timedelta(days=1))
    record = feedback_record(feedback_request, sale, verdict, T0 + timedelta(days=1))

    assert record == feedback(
        reason="Bad phone",  # the configured spelling
        return_to_source=True,
        create_time=T0 + timedelta(days=1),
    )
    assert record.status == PENDING


def test_a_refused_return_is_recorded_denied_with_why() -> None:
    sale = sale_of("acme", [EVENTS[0]], Delivered("L1-1", Decimal("20.00"), T0), TERMS)
    feedback_request = request(lead_id="L1", policy=ReturnPolicy(window_days=1))

    now = T0 + timedelta(days=2)
    record = feedback_record(
        feedback_request, sale, judge(feedback_request, sale, History(), now), now
    )

    assert (record.outcome, record.status) == ("failure", DENIED)
    assert record.outcome_reason == "Outside the 1-day return window"
    assert returns.credits_now(record) is False


@pytest.mark.parametrize(
    ("feedback_request", "verdict"),
    [
        # An explicit zero is no return at all; the sale price is the default, not zero.
        (
            request(amount=Decimal(0), policy=ReturnPolicy()),
            Verdict(
                "failure",
                DENIED,
                "Return amount must be more than 0.00 and at most the sale price 20.00",
                Decimal(0),
                "",
            ),
        ),
        (
            request(amount=Decimal("20.00"), policy=ReturnPolicy()),
            Verdict("success", APPROVED, "", Decimal("20.00"), ""),
        ),
        # A conversion carries the amount the buyer reports, else nothing.
        (
            request(type=CONVERSION, amount=Decimal("99.00")),
            Verdict("success", APPROVED, "", Decimal("99.00"), ""),
        ),
        (request(type=CONVERSION), Verdict("success", APPROVED, "", Decimal(0), "")),
        # 0% allows no returns at all, whatever the month's sales.
        (
            request(policy=ReturnPolicy(max_percent=Decimal(0))),
            Verdict("failure", DENIED, "Over 0% of this month's sales", Decimal("20.00"), ""),
        ),
    ],
    ids=["zero-amount", "full-amount", "conversion-amount", "conversion-no-amount", "zero-percent"],
)
def test_feedback_judging_edge_cases(feedback_request: FeedbackRequest, verdict: Verdict) -> None:
    sale = sale_of("acme", [EVENTS[0]], Delivered("L1-1", Decimal("20.00"), T0), TERMS)

    assert judge(feedback_request, sale, History(sales_this_month=1000), T0) == verdict


@pytest.mark.parametrize(
    ("feedback_request", "needed"),
    [
        (request(policy=ReturnPolicy(max_percent=Decimal("99.99"))), True),
        (request(policy=ReturnPolicy()), False),
        (request(policy=None), False),
        (request(type=CONVERSION, policy=ReturnPolicy(max_percent=Decimal(5))), False),
    ],
    ids=["limited", "hundred-percent", "no-policy", "conversion"],
)
def test_the_month_is_counted_only_for_a_return_under_a_percent_limit(
    feedback_request: FeedbackRequest, needed: bool
) -> None:
    assert needs_month_counts(feedback_request) is needed


# --- Completing a queued or unknown recipient event -------------------------------------------

KEY = LeadKey("L1", "auto", "vendor", "USD")


def recorded(outcome: str) -> RecordedEvent:
    return RecordedEvent(
        id="L1-1",
        lead=KEY,
        outcome=outcome,
        buyer_id="acme",
        sale_price_micros=20_000_000,
        stage_index=1,
        step_index=2,
    )


def delivery(outcome: str, sale_price: Decimal | None = None) -> DeliveryOutcome:
    return DeliveryOutcome(
        recipient_event_id="L1-1",
        outcome=outcome,
        reason="" if outcome == "success" else "rejected",
        sale_price=sale_price,
        attempts=(),
        complete_time=T0,
        batch_id="B1",
    )


@pytest.mark.parametrize("final", ["success", "failure", "error", "skip"])
def test_only_a_queued_or_unknown_event_completes(final: str) -> None:
    with pytest.raises(NotQueued):
        complete(recorded(final), delivery("success"))


@pytest.mark.parametrize(
    ("pending", "outcome", "sale_price", "price_micros", "batch", "sells"),
    [
        ("queued", "success", None, 20_000_000, True, True),  # at the price quoted on the event
        ("queued", "success", Decimal("17.50"), 17_500_000, True, True),  # at the outcome's
        ("queued", "failure", None, 20_000_000, True, False),
        ("queued", "error", None, 20_000_000, True, False),
        ("unknown", "success", None, 20_000_000, False, True),
        ("unknown", "failure", Decimal("3.00"), 3_000_000, False, False),
    ],
    ids=[
        "queued-sold-quoted",
        "queued-sold-repriced",
        "queued-failed",
        "queued-errored",
        "unknown-sold",
        "unknown-failed",
    ],
)
def test_completing_an_event_books_its_price_and_a_sale_only_on_success(
    pending: str,
    outcome: str,
    sale_price: Decimal | None,
    price_micros: int,
    batch: bool,
    sells: bool,
) -> None:
    done = delivery(outcome, sale_price)

    completion = complete(recorded(pending), done)

    assert (completion.price_micros, completion.batch) == (price_micros, batch)
    if sells:
        # Effective when the delivery completed, not when the lead arrived.
        assert completion.sale == journal.sale(KEY, "L1-1", "acme", price_micros, T0)
    else:
        assert completion.sale is None
    assert completion.completed(True, outcome).pending == pending


def test_a_repeated_completion_answers_with_the_first_outcome() -> None:
    completion = complete(recorded("queued"), delivery("failure"))

    answer = completion.completed(False, "success")

    assert (answer.created, answer.outcome) == (False, "success")
    assert (answer.lead_id, answer.stage_index, answer.step_index, answer.buyer_id) == (
        "L1",
        1,
        2,
        "acme",
    )
