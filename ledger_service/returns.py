"""The return state machine (SPEC 5.3): a taken return is approved, pending or denied; a pending
one takes one operator decision; an approved one credits the buyer and may charge the vendor back.

    taken (outcome success) --auto_approve--> approved  (credit posted at once)
                            \\--otherwise----> pending --approve--> approved (credit posted)
                                                      \\--deny-----> denied
    refused (outcome failure): denied for good; a conversion is never decided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from leadflow.money import to_micros
from ledger_service import journal
from ledger_service.feedback import (
    APPROVED,
    DENIED,
    PENDING,
    RETURN,
    DecisionRefused,
    FeedbackRecord,
)
from ledger_service.journal import LeadKey, Posting


def decide(record: FeedbackRecord, approve: bool, now: datetime) -> FeedbackRecord | None:
    """The record with the operator's decision taken at `now`, to be written; None when the
    record already carries that decision (a repeat changes nothing). Raises DecisionRefused
    for anything but a taken return, and for a return already decided the other way."""
    wanted = APPROVED if approve else DENIED
    if record.type != RETURN or record.outcome != "success":
        raise DecisionRefused("Only a return that was taken can be approved or denied")
    if record.status == wanted:
        return None
    if record.status != PENDING:
        raise DecisionRefused(f"Return already {record.status}")
    return replace(record, decision=wanted, decide_time=now)


def credits_now(record: FeedbackRecord) -> bool:
    """Whether recording this feedback posts a return's credit at once (auto-approved)."""
    return record.type == RETURN and record.status == APPROVED


@dataclass(frozen=True)
class ReturnPostings:
    """What an approved return posts. The chargeback's id is per lead: the store posts it only
    if no other buyer's return of the lead charged the vendor back first."""

    credit: Posting
    chargeback: Posting | None


def return_postings(
    record: FeedbackRecord, currency: str, price_paid_micros: int, at: datetime
) -> ReturnPostings:
    """The buyer's credit of the returned amount and, under return_to_source, the vendor's
    chargeback of what it was paid (nothing to charge back when it was paid nothing)."""
    key = LeadKey(record.lead_id, record.flow_id, record.source_id, currency)
    credit = journal.return_credit(
        key, record.id, record.recipient_event_id, record.buyer_id, to_micros(record.amount), at
    )
    chargeback = None
    if record.return_to_source and price_paid_micros > 0:
        chargeback = journal.chargeback(key, record.id, record.buyer_id, price_paid_micros, at)
    return ReturnPostings(credit, chargeback)
