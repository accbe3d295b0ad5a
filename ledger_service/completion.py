"""Completing a recipient event later (a batch file, or an offer whose fate was unknown): only a
queued or unknown event completes, at the price its outcome names or else the one quoted, and a
success books the sale when it completed."""

from __future__ import annotations

from dataclasses import dataclass

from leadflow.money import to_micros
from ledger_service import journal
from ledger_service.journal import LeadKey, Posting
from ledger_service.ledger import PENDING_OUTCOMES, CompletedEvent, DeliveryOutcome, NotQueued


@dataclass(frozen=True)
class RecordedEvent:
    """A recipient event as its lead's record left it, with the lead's key."""

    id: str
    lead: LeadKey
    outcome: str
    buyer_id: str
    sale_price_micros: int
    stage_index: int
    step_index: int


@dataclass(frozen=True)
class Completion:
    """What completing the event writes: its delivery result and, on success, its sale."""

    event: RecordedEvent
    outcome: DeliveryOutcome
    price_micros: int
    # A queued event completes through a batch file; an unknown one through its offer's fate.
    batch: bool
    sale: Posting | None

    def completed(self, created: bool, recorded_outcome: str) -> CompletedEvent:
        """The answer: `recorded_outcome` is the first outcome recorded (this one if created)."""
        event = self.event
        return CompletedEvent(
            created,
            recorded_outcome,
            event.lead.lead_id,
            event.stage_index,
            event.step_index,
            event.buyer_id,
            event.outcome,
        )


def complete(event: RecordedEvent, outcome: DeliveryOutcome) -> Completion:
    """Raises NotQueued when the event's outcome is already final (it must be queued or
    unknown); otherwise what completing it with `outcome` writes."""
    if event.outcome not in PENDING_OUTCOMES:
        raise NotQueued(event.id)
    price = event.sale_price_micros if outcome.sale_price is None else to_micros(outcome.sale_price)
    sale = None
    if outcome.outcome == "success":
        sale = journal.sale(event.lead, event.id, event.buyer_id, price, outcome.complete_time)
    return Completion(event, outcome, price, event.outcome == "queued", sale)
