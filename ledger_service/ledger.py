"""The ledger's domain: a recorded lead with its events, and the rules a record must satisfy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import orjson

from leadflow.errors import InvalidField, RuleRefused
from leadflow.money import ZERO, to_micros
from leadflow.wire import OUTCOMES, DeliveryAttempt, PriceAudit

SOURCE_OUTCOMES = frozenset({"success", "failure", "error"})
# skip, queued and unknown only make sense for one buyer step, never for the lead as a whole.
RECIPIENT_OUTCOMES = frozenset(OUTCOMES)
DEFAULT_CURRENCY = "USD"
# Ids become primary keys and appear in URLs and logs: printable ASCII, no spaces, bounded.
_ID = re.compile(r"[\x21-\x7e]{1,128}")
_CURRENCY = re.compile(r"[A-Z]{3}")
# Storage keeps money as signed 64-bit integer micros.
_MAX_MICROS = 2**63 - 1


class InvalidRecord(InvalidField):
    """A record the ledger refuses: `field` is its proto path, e.g. `recipient_events[1].id`."""


class EventIdTaken(Exception):
    """A recipient event id of a new lead is already recorded for another lead."""

    def __init__(self, event_ids: list[str]) -> None:
        super().__init__(f"recipient event ids already recorded for another lead: {event_ids}")
        self.event_ids = event_ids


@dataclass(frozen=True)
class Lead:
    """The lead as recorded. Fields stay JSON text so numbers keep their exact decimal text."""

    id: str
    flow_id: str
    source_id: str
    fields_json: str
    submit_time: datetime


@dataclass(frozen=True)
class SourceEvent:
    """What happened to the lead as a whole, from the vendor's side."""

    outcome: str
    reason: str
    purchase_price: Decimal
    price_paid: Decimal
    price_audit: PriceAudit
    revenue: Decimal
    duration_ms: int


@dataclass(frozen=True)
class RecipientEvent:
    """What happened to the lead at one buyer step."""

    id: str
    stage_index: int
    stage_name: str
    strategy: str
    step_index: int
    buyer_id: str
    outcome: str
    reason: str
    sale_price: Decimal
    price_audit: PriceAudit
    reference: str
    attempts: tuple[DeliveryAttempt, ...]
    duration_ms: int


@dataclass(frozen=True)
class LeadRecord:
    """Everything RecordLead posts for one lead, in one transaction."""

    lead: Lead
    source_event: SourceEvent
    recipient_events: tuple[RecipientEvent, ...]
    currency: str = DEFAULT_CURRENCY


@dataclass(frozen=True)
class RecordedLead:
    """A record as the ledger holds it, with when it was posted."""

    record: LeadRecord
    record_time: datetime


FINAL_OUTCOMES = frozenset({"success", "failure", "error"})


@dataclass(frozen=True)
class DeliveryOutcome:
    """The final outcome of a queued recipient event (its batch file delivered or given up)."""

    recipient_event_id: str
    outcome: str
    reason: str
    # None: book the sale at the price quoted on the queued event.
    sale_price: Decimal | None
    attempts: tuple[DeliveryAttempt, ...]
    complete_time: datetime
    batch_id: str = ""


@dataclass(frozen=True)
class CompletedEvent:
    """What RecordDeliveryOutcome did: the outcome now recorded for the event (the first one on
    a repeat) and where the event sits, for the caller to settle routing's holds."""

    created: bool
    outcome: str
    lead_id: str
    stage_index: int
    step_index: int
    buyer_id: str
    # The recipient event's outcome before this completion: queued or unknown.
    pending: str


@dataclass(frozen=True)
class UnknownOffer:
    """A recipient event recorded `unknown` and not resolved yet: for operators to settle."""

    recipient_event_id: str
    lead_id: str
    flow_id: str
    source_id: str
    buyer_id: str
    stage_index: int
    step_index: int
    sale_price: Decimal
    submit_time: datetime
    reason: str


@dataclass(frozen=True)
class StoredOutcome:
    """A delivery outcome as recorded, with the price it was booked at."""

    outcome: DeliveryOutcome
    sale_price: Decimal
    record_time: datetime


class UnknownEvent(LookupError):
    """No recipient event with this id is recorded (perhaps its lead is not recorded yet)."""

    def __init__(self, event_id: str) -> None:
        # Its lead may still be parked in the gateway's outbox: the caller retries.
        super().__init__(f"no recipient event {event_id} (yet)")
        self.event_id = event_id


class NotQueued(RuleRefused):
    """The recipient event did not end `queued` or `unknown`: its outcome is already final."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"recipient event {event_id} is neither queued nor unknown")
        self.event_id = event_id


# Recipient outcomes a later outcome completes (a batch file, or an offer whose fate was unknown).
PENDING_OUTCOMES = frozenset({"queued", "unknown"})


def check_outcome(outcome: DeliveryOutcome) -> None:
    """Raise InvalidRecord unless the outcome is final, priced sensibly and clean text."""
    check_id("recipient_event_id", outcome.recipient_event_id)
    if outcome.outcome not in FINAL_OUTCOMES:
        raise InvalidRecord("outcome", f"must be one of {sorted(FINAL_OUTCOMES)}")
    check_text("reason", outcome.reason)
    check_text("batch_id", outcome.batch_id)
    if outcome.sale_price is not None:
        _check_amount("sale_price", outcome.sale_price)


def expected_revenue(events: tuple[RecipientEvent, ...]) -> Decimal:
    """Revenue is earned only on recipient outcome success (SPEC 2, step 9)."""
    return sum((event.sale_price for event in events if event.outcome == "success"), ZERO)


def expected_price_paid(source: SourceEvent) -> Decimal:
    """The vendor is paid the purchase price only for success (SPEC 2)."""
    return source.purchase_price if source.outcome == "success" else ZERO


def check_record(record: LeadRecord) -> None:
    """Raise InvalidRecord unless the record is complete and its money agrees with its events."""
    lead = record.lead
    check_id("lead.id", lead.id)
    check_id("lead.flow_id", lead.flow_id)
    check_id("lead.source_id", lead.source_id)
    _check_fields_json(lead.fields_json)
    if not _CURRENCY.fullmatch(record.currency):
        raise InvalidRecord("currency_code", f"not an ISO 4217 code: {record.currency!r}")

    source = record.source_event
    if source.outcome not in SOURCE_OUTCOMES:
        raise InvalidRecord("source_event.outcome", f"must be one of {sorted(SOURCE_OUTCOMES)}")
    check_text("source_event.reason", source.reason)
    for name, amount in _source_amounts(source):
        _check_amount(f"source_event.{name}", amount)
    if source.price_paid != expected_price_paid(source):
        raise InvalidRecord(
            "source_event.price_paid",
            f"must be {expected_price_paid(source)} for outcome {source.outcome}",
        )

    seen: set[str] = set()
    for index, event in enumerate(record.recipient_events):
        _check_recipient(f"recipient_events[{index}]", event)
        if event.id in seen:
            raise InvalidRecord(f"recipient_events[{index}].id", "repeated within the lead")
        seen.add(event.id)
    revenue = expected_revenue(record.recipient_events)
    if source.revenue != revenue:  # computed so by the servicer: a check of the domain's input
        raise InvalidRecord(
            "source_event.revenue",
            f"must be {revenue}, the sum of the sale prices of successful recipient events",
        )


def _source_amounts(source: SourceEvent) -> Iterator[tuple[str, Decimal]]:
    yield "purchase_price", source.purchase_price
    yield "price_paid", source.price_paid
    yield "revenue", source.revenue
    yield "price_audit.amount", source.price_audit.amount


def _check_recipient(path: str, event: RecipientEvent) -> None:
    check_id(f"{path}.id", event.id)
    check_id(f"{path}.buyer_id", event.buyer_id)
    if event.outcome not in RECIPIENT_OUTCOMES:
        raise InvalidRecord(f"{path}.outcome", f"must be one of {sorted(RECIPIENT_OUTCOMES)}")
    if event.stage_index < 0:
        raise InvalidRecord(f"{path}.stage_index", "must not be negative")
    if event.step_index < 0:
        raise InvalidRecord(f"{path}.step_index", "must not be negative")
    for name in ("stage_name", "strategy", "reason", "reference"):
        check_text(f"{path}.{name}", getattr(event, name))
    _check_amount(f"{path}.sale_price", event.sale_price)
    _check_amount(f"{path}.price_audit.amount", event.price_audit.amount)


def check_id(field: str, value: str) -> None:
    """Raise InvalidRecord unless `value` is a usable lead or event id."""
    if not value:
        raise InvalidRecord(field, "required")
    if not _ID.fullmatch(value):
        raise InvalidRecord(field, "must be 1 to 128 printable ASCII characters without spaces")


def check_text(field: str, value: str) -> None:
    # PostgreSQL text cannot hold NUL; refusing it everywhere keeps SQLite and PostgreSQL alike.
    if "\x00" in value:
        raise InvalidRecord(field, "must not contain NUL characters")


def _check_fields_json(text: str) -> None:
    try:
        fields = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("lead.fields_json", f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise InvalidRecord("lead.fields_json", "must be a JSON object")


def _check_amount(field: str, amount: Decimal) -> None:
    # Prices are never negative (SPEC 3); corrections are separate, later rows.
    if amount < ZERO:
        raise InvalidRecord(field, "must not be negative")
    if to_micros(amount) > _MAX_MICROS:
        raise InvalidRecord(field, "too large")
