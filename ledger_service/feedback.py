"""Buyer feedback (SPEC 5.3): returns and conversions, and the return policy that judges them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from leadflow.errors import RuleRefused
from leadflow.money import ZERO, format_money

RETURN = "return"
CONVERSION = "conversion"
FEEDBACK_TYPES = (RETURN, CONVERSION)
APPROVED = "approved"
PENDING = "pending"
DENIED = "denied"
HUNDRED = Decimal(100)


@dataclass(frozen=True)
class ReturnPolicy:
    """A buyer's `returns` configuration as in force when the return arrives."""

    window_days: int = 30
    max_percent: Decimal = HUNDRED
    auto_approve: bool = True
    reasons: tuple[str, ...] = ()
    return_to_source: bool = False
    time_zone: str = "UTC"


@dataclass(frozen=True)
class FeedbackRequest:
    """What a buyer sent, authenticated by the gateway; `feedback_id` makes it idempotent."""

    feedback_id: str
    buyer_id: str
    type: str
    lead_id: str = ""
    recipient_event_id: str = ""
    reason: str = ""
    amount: Decimal | None = None
    policy: ReturnPolicy | None = None


@dataclass(frozen=True)
class Sale:
    """The buyer's recipient event on the lead; `sale_time` is None when it was not sold."""

    lead_id: str
    recipient_event_id: str
    buyer_id: str
    flow_id: str
    source_id: str
    currency: str
    sale_price: Decimal
    sale_time: datetime | None
    price_paid: Decimal

    @property
    def sold(self) -> bool:
        return self.sale_time is not None


@dataclass(frozen=True)
class OfferedEvent:
    """A recorded recipient event: the lead and buyer it offered, at the price quoted then."""

    id: str
    lead_id: str
    buyer_id: str
    sale_price: Decimal


@dataclass(frozen=True)
class Delivered:
    """A successful delivery of one of the buyer's offered events (real-time or completed)."""

    recipient_event_id: str
    sale_price: Decimal
    complete_time: datetime


@dataclass(frozen=True)
class LeadTerms:
    """What the lead's record says that a sale's feedback needs."""

    flow_id: str
    source_id: str
    currency: str
    price_paid: Decimal


def offered_to(request: FeedbackRequest, events: Iterable[OfferedEvent]) -> list[OfferedEvent]:
    """The events this feedback can be about: the buyer's own, on the lead it names if it names
    one, in the order given. Raises UnknownSale when there are none (another buyer's event, or
    an event of another lead, is as unknown as one that does not exist)."""
    offered = [
        event
        for event in events
        if event.buyer_id == request.buyer_id
        and (not request.lead_id or event.lead_id == request.lead_id)
    ]
    if not offered:
        raise UnknownSale(request.recipient_event_id or request.lead_id)
    return offered


def sale_of(
    buyer_id: str, offered: Sequence[OfferedEvent], delivered: Delivered | None, lead: LeadTerms
) -> Sale:
    """The sale feedback is judged against: the buyer's first successful delivery of the lead
    at the price it was booked at, else its first offer, unsold."""
    first = offered[0]
    if delivered is None:
        event_id, price, sale_time = first.id, first.sale_price, None
    else:
        event_id, price = delivered.recipient_event_id, delivered.sale_price
        sale_time = delivered.complete_time
    return Sale(
        lead_id=first.lead_id,
        recipient_event_id=event_id,
        buyer_id=buyer_id,
        flow_id=lead.flow_id,
        source_id=lead.source_id,
        currency=lead.currency,
        sale_price=price,
        sale_time=sale_time,
        price_paid=lead.price_paid,
    )


@dataclass(frozen=True)
class History:
    """What the ledger already holds that the policy needs; month counts are this buyer's."""

    already_returned: bool = False
    already_converted: bool = False
    sales_this_month: int = 0
    returns_this_month: int = 0


@dataclass(frozen=True)
class Verdict:
    outcome: str  # success | failure
    status: str  # approved | pending | denied
    reason: str  # why it failed; empty on success
    amount: Decimal
    stated_reason: str  # the buyer's reason, in the configured spelling when one matched


def month_window(now: datetime, time_zone: str) -> tuple[datetime, datetime]:
    """The calendar month containing `now` in `time_zone`, as aware instants [start, end)."""
    zone = ZoneInfo(time_zone)
    local = now.astimezone(zone)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start + timedelta(days=32)).replace(day=1)
    # Rebuilt from wall-clock fields so each boundary takes its own UTC offset (DST).
    return (
        datetime(start.year, start.month, 1, tzinfo=zone),
        datetime(following.year, following.month, 1, tzinfo=zone),
    )


def needs_month_counts(request: FeedbackRequest) -> bool:
    policy = request.policy
    return request.type == RETURN and policy is not None and policy.max_percent < HUNDRED


def judge(request: FeedbackRequest, sale: Sale, history: History, now: datetime) -> Verdict:
    """Apply the return policy (window, reasons, amount, monthly percent, one per lead)."""
    stated = request.reason.strip()
    amount = request.amount if request.amount is not None else sale.sale_price

    def refuse(reason: str) -> Verdict:
        return Verdict("failure", DENIED, reason, amount, stated)

    if sale.sale_time is None:
        return refuse("Lead was not sold to this buyer")
    if request.type == CONVERSION:
        if history.already_converted:
            return refuse("Conversion already recorded")
        return Verdict("success", APPROVED, "", request.amount or ZERO, stated)

    policy = request.policy
    if policy is None:
        return refuse("Returns are not accepted from this buyer")
    if history.already_returned:
        return refuse("Lead already returned")
    if now > sale.sale_time + timedelta(days=policy.window_days):
        return refuse(f"Outside the {policy.window_days}-day return window")
    if policy.reasons:
        matched = [r for r in policy.reasons if r.casefold() == stated.casefold()]
        if not matched:
            return refuse(f"Return reason must be one of: {', '.join(policy.reasons)}")
        stated = matched[0]
    if (request.amount is not None and amount <= ZERO) or amount > sale.sale_price:
        return refuse(
            f"Return amount must be more than 0.00 and at most the sale price "
            f"{format_money(sale.sale_price)}"
        )
    if policy.max_percent < HUNDRED and (
        (history.returns_this_month + 1) * HUNDRED > policy.max_percent * history.sales_this_month
    ):
        return refuse(f"Over {policy.max_percent.normalize():f}% of this month's sales")
    status = APPROVED if policy.auto_approve else PENDING
    return Verdict("success", status, "", amount, stated)


@dataclass(frozen=True)
class FeedbackRecord:
    """Feedback as the ledger holds it: the row written once, plus an operator's decision."""

    id: str
    lead_id: str
    recipient_event_id: str
    buyer_id: str
    flow_id: str
    source_id: str
    type: str
    reason: str
    amount: Decimal
    outcome: str
    outcome_reason: str
    initial_status: str
    return_to_source: bool
    sale_time: datetime | None
    create_time: datetime
    decision: str | None = None
    decide_time: datetime | None = None

    @property
    def status(self) -> str:
        return self.decision or self.initial_status


def feedback_record(
    request: FeedbackRequest, sale: Sale, verdict: Verdict, now: datetime
) -> FeedbackRecord:
    """The feedback as the ledger records it once judged: refused feedback is recorded too."""
    return FeedbackRecord(
        id=request.feedback_id,
        lead_id=sale.lead_id,
        recipient_event_id=sale.recipient_event_id,
        buyer_id=request.buyer_id,
        flow_id=sale.flow_id,
        source_id=sale.source_id,
        type=request.type,
        reason=verdict.stated_reason,
        amount=verdict.amount,
        outcome=verdict.outcome,
        outcome_reason=verdict.reason,
        initial_status=verdict.status,
        return_to_source=bool(request.policy and request.policy.return_to_source),
        sale_time=sale.sale_time,
        create_time=now,
    )


class UnknownSale(LookupError):
    """The buyer was never offered this lead or event (or it does not exist): NOT_FOUND."""

    def __init__(self, named: str) -> None:
        # The caller is told no more: which of its leads exist is not another buyer's business.
        super().__init__("no such lead or recipient event was offered to this buyer")
        self.named = named


class UnknownFeedback(LookupError):
    """No feedback with this id."""

    def __init__(self, feedback_id: str) -> None:
        super().__init__(f"no feedback {feedback_id}")
        self.feedback_id = feedback_id


class DecisionRefused(RuleRefused):
    """The feedback is not a pending return, or already carries the other decision."""
