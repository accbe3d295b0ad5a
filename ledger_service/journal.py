"""The double-entry journal: the accounts each money event moves, as one balanced posting each."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from leadflow.money import to_micros
from ledger_service.ledger import LeadRecord

# A posting moves `amount` from its credit account to its debit account: one row holds both
# legs, so a posting cannot be unbalanced, and the trial balance (debits less credits over every
# account) is zero by construction. The database refuses a posting whose legs are one account.
PURCHASE = "purchase"  # debit cost:<flow>, credit vendor_payable:<source>
SALE = "sale"  # debit buyer_receivable:<buyer>, credit revenue:<flow>
RETURN = "return"  # debit returns:<flow> (contra revenue), credit buyer_receivable:<buyer>
CHARGEBACK = "chargeback"  # debit vendor_payable:<source>, credit chargebacks:<flow> (contra cost)
KINDS = (PURCHASE, SALE, RETURN, CHARGEBACK)


def cost(flow_id: str) -> str:
    return f"cost:{flow_id}"


def revenue(flow_id: str) -> str:
    return f"revenue:{flow_id}"


def returns(flow_id: str) -> str:
    return f"returns:{flow_id}"


def chargebacks(flow_id: str) -> str:
    return f"chargebacks:{flow_id}"


def vendor_payable(source_id: str) -> str:
    return f"vendor_payable:{source_id}"


def buyer_receivable(buyer_id: str) -> str:
    return f"buyer_receivable:{buyer_id}"


@dataclass(frozen=True)
class LeadKey:
    """What every posting of a lead carries: the dimensions reports group by."""

    lead_id: str
    flow_id: str
    source_id: str
    currency: str


@dataclass(frozen=True)
class Posting:
    """One balanced journal row; `id` is its idempotency key (a repeat is never posted twice)."""

    id: str
    kind: str
    lead: LeadKey
    debit_account: str
    credit_account: str
    amount_micros: int
    effective_time: datetime
    buyer_id: str = ""
    recipient_event_id: str = ""
    feedback_id: str = ""
    # When the ledger wrote it; None until it is written.
    post_time: datetime | None = None


def lead_key(record: LeadRecord) -> LeadKey:
    lead = record.lead
    return LeadKey(lead.id, lead.flow_id, lead.source_id, record.currency)


def purchase(record: LeadRecord) -> Posting | None:
    """What we owe the vendor: every accepted lead, even at $0 (it is the record of acceptance)."""
    if record.source_event.outcome != "success":
        return None
    key = lead_key(record)
    return Posting(
        id=f"{PURCHASE}:{key.lead_id}",
        kind=PURCHASE,
        lead=key,
        debit_account=cost(key.flow_id),
        credit_account=vendor_payable(key.source_id),
        amount_micros=to_micros(record.source_event.price_paid),
        effective_time=record.lead.submit_time,
    )


def sale(
    key: LeadKey, recipient_event_id: str, buyer_id: str, amount_micros: int, at: datetime
) -> Posting:
    """What the buyer owes us for one successful delivery."""
    return Posting(
        id=f"{SALE}:{recipient_event_id}",
        kind=SALE,
        lead=key,
        debit_account=buyer_receivable(buyer_id),
        credit_account=revenue(key.flow_id),
        amount_micros=amount_micros,
        effective_time=at,
        buyer_id=buyer_id,
        recipient_event_id=recipient_event_id,
    )


def realtime_sales(record: LeadRecord) -> list[Posting]:
    """The sales a lead's record carries: its successful recipient events, at submission time."""
    key = lead_key(record)
    return [
        sale(key, event.id, event.buyer_id, to_micros(event.sale_price), record.lead.submit_time)
        for event in record.recipient_events
        if event.outcome == "success"
    ]


def return_credit(
    key: LeadKey,
    feedback_id: str,
    recipient_event_id: str,
    buyer_id: str,
    amount_micros: int,
    at: datetime,
) -> Posting:
    """An approved return: the buyer's receivable goes down by the credit (a negative sale)."""
    return Posting(
        id=f"{RETURN}:{feedback_id}",
        kind=RETURN,
        lead=key,
        debit_account=returns(key.flow_id),
        credit_account=buyer_receivable(buyer_id),
        amount_micros=amount_micros,
        effective_time=at,
        buyer_id=buyer_id,
        recipient_event_id=recipient_event_id,
        feedback_id=feedback_id,
    )


def chargeback(
    key: LeadKey, feedback_id: str, buyer_id: str, amount_micros: int, at: datetime
) -> Posting:
    """The vendor pays back the lead's purchase price (a negative purchase); once per lead."""
    return Posting(
        id=f"{CHARGEBACK}:{key.lead_id}",
        kind=CHARGEBACK,
        lead=key,
        debit_account=vendor_payable(key.source_id),
        credit_account=chargebacks(key.flow_id),
        amount_micros=amount_micros,
        effective_time=at,
        buyer_id=buyer_id,
        feedback_id=feedback_id,
    )


def trial_balance(postings: Iterable[Posting]) -> dict[str, int]:
    """Each account's balance in micros, debits positive; the values always sum to zero."""
    balances: dict[str, int] = defaultdict(int)
    for posting in postings:
        balances[posting.debit_account] += posting.amount_micros
        balances[posting.credit_account] -= posting.amount_micros
    return dict(balances)
