"""The return policy (SPEC 5.3) and the journal's postings, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger_service import journal
from ledger_service.feedback import (
    CONVERSION,
    RETURN,
    FeedbackRequest,
    History,
    ReturnPolicy,
    Sale,
    judge,
    month_window,
    needs_month_counts,
)
from ledger_service.journal import LeadKey

SOLD = datetime(2026, 3, 10, 12, tzinfo=UTC)
SALE = Sale(
    lead_id="L1",
    recipient_event_id="L1-1",
    buyer_id="acme",
    flow_id="auto",
    source_id="vendor",
    currency="USD",
    sale_price=Decimal("20.00"),
    sale_time=SOLD,
    price_paid=Decimal("10.00"),
)
POLICY = ReturnPolicy(
    window_days=7,
    max_percent=Decimal(20),
    auto_approve=True,
    reasons=("Bad phone", "No consent"),
    return_to_source=True,
)


def request(**changes: object) -> FeedbackRequest:
    values: dict[str, object] = {
        "feedback_id": "F1",
        "buyer_id": "acme",
        "type": RETURN,
        "lead_id": "L1",
        "reason": "Bad phone",
        "policy": POLICY,
    }
    values.update(changes)
    return FeedbackRequest(**values)  # type: ignore[arg-type]


ROOMY = History(sales_this_month=100, returns_this_month=0)


@pytest.mark.parametrize(
    ("feedback", "history", "now", "status", "reason"),
    [
        (request(), ROOMY, SOLD, "approved", ""),
        (request(policy=ReturnPolicy(auto_approve=False)), ROOMY, SOLD, "pending", ""),
        (request(), ROOMY, SOLD + timedelta(days=7), "approved", ""),
        (
            request(),
            ROOMY,
            SOLD + timedelta(days=7, microseconds=1),
            "denied",
            "Outside the 7-day return window",
        ),
        (
            request(reason="Changed my mind"),
            ROOMY,
            SOLD,
            "denied",
            "Return reason must be one of: Bad phone, No consent",
        ),
        (
            request(reason=""),
            ROOMY,
            SOLD,
            "denied",
            "Return reason must be one of: Bad phone, No consent",
        ),
        (request(policy=ReturnPolicy()), ROOMY, SOLD, "approved", ""),  # no reasons: any reason
        (request(policy=None), ROOMY, SOLD, "denied", "Returns are not accepted from this buyer"),
        (
            request(),
            History(already_returned=True, sales_this_month=100),
            SOLD,
            "denied",
            "Lead already returned",
        ),
        # 20% of 10 sales is 2 returns: a third is over.
        (request(), History(sales_this_month=10, returns_this_month=1), SOLD, "approved", ""),
        (
            request(),
            History(sales_this_month=10, returns_this_month=2),
            SOLD,
            "denied",
            "Over 20% of this month's sales",
        ),
        (
            request(),
            History(sales_this_month=0),
            SOLD,
            "denied",
            "Over 20% of this month's sales",
        ),
        (
            request(amount=Decimal("20.01")),
            ROOMY,
            SOLD,
            "denied",
            "Return amount must be more than 0.00 and at most the sale price 20.00",
        ),
        (request(amount=Decimal("0.01")), ROOMY, SOLD, "approved", ""),
        (request(type=CONVERSION, policy=None, reason=""), History(), SOLD, "approved", ""),
        (
            request(type=CONVERSION),
            History(already_converted=True),
            SOLD,
            "denied",
            "Conversion already recorded",
        ),
    ],
    ids=[
        "auto-approve",
        "pending",
        "last-instant-of-window",
        "past-window",
        "reason-not-listed",
        "reason-missing",
        "any-reason",
        "no-policy",
        "duplicate",
        "under-percent",
        "over-percent",
        "no-sales-this-month",
        "amount-over-sale",
        "partial-amount",
        "conversion",
        "second-conversion",
    ],
)
def test_return_policy_decides(
    feedback: FeedbackRequest, history: History, now: datetime, status: str, reason: str
) -> None:
    verdict = judge(feedback, SALE, history, now)

    assert (verdict.status, verdict.reason) == (status, reason)
    assert verdict.outcome == ("failure" if status == "denied" else "success")


def test_unsold_lead_cannot_be_returned_or_converted() -> None:
    unsold = Sale(**{**SALE.__dict__, "sale_time": None})

    for kind in (RETURN, CONVERSION):
        verdict = judge(request(type=kind), unsold, ROOMY, SOLD)
        assert (verdict.status, verdict.reason) == ("denied", "Lead was not sold to this buyer")


def test_return_credits_the_sale_price_unless_an_amount_is_given() -> None:
    assert judge(request(), SALE, ROOMY, SOLD).amount == Decimal("20.00")
    assert judge(request(amount=Decimal("7.50")), SALE, ROOMY, SOLD).amount == Decimal("7.50")


def test_reason_is_kept_in_the_configured_spelling() -> None:
    assert judge(request(reason=" no CONSENT "), SALE, ROOMY, SOLD).stated_reason == "No consent"


def test_hundred_percent_means_no_monthly_limit() -> None:
    unlimited = request(policy=ReturnPolicy(max_percent=Decimal(100)))

    assert not needs_month_counts(unlimited)
    assert judge(unlimited, SALE, History(sales_this_month=0), SOLD).status == "approved"


def test_month_window_follows_the_zones_offsets_across_dst() -> None:
    start, end = month_window(datetime(2026, 3, 15, tzinfo=UTC), "America/Chicago")

    assert start.astimezone(UTC) == datetime(2026, 3, 1, 6, tzinfo=UTC)  # CST
    assert end.astimezone(UTC) == datetime(2026, 4, 1, 5, tzinfo=UTC)  # CDT


def test_month_window_is_the_local_month_near_its_edges() -> None:
    # 03:00Z on April 1st is still March 31st in Chicago.
    start, _ = month_window(datetime(2026, 4, 1, 3, tzinfo=UTC), "America/Chicago")

    assert (start.year, start.month) == (2026, 3)


# --- Postings ---------------------------------------------------------------------------------

KEY = LeadKey("L1", "auto", "vendor", "USD")


def test_every_kind_of_posting_moves_money_between_two_accounts() -> None:
    postings = [
        journal.sale(KEY, "L1-1", "acme", 20_000_000, SOLD),
        journal.return_credit(KEY, "F1", "L1-1", "acme", 20_000_000, SOLD),
        journal.chargeback(KEY, "F1", "acme", 10_000_000, SOLD),
    ]

    for posting in postings:
        assert posting.debit_account != posting.credit_account
    assert [(p.id, p.debit_account, p.credit_account) for p in postings] == [
        ("sale:L1-1", "buyer_receivable:acme", "revenue:auto"),
        ("return:F1", "returns:auto", "buyer_receivable:acme"),
        ("chargeback:L1", "vendor_payable:vendor", "chargebacks:auto"),
    ]


def test_trial_balance_of_any_postings_sums_to_zero() -> None:
    postings = [
        journal.sale(KEY, "L1-1", "acme", 20_000_000, SOLD),
        journal.sale(KEY, "L1-2", "beta", 5_000_000, SOLD),
        journal.return_credit(KEY, "F1", "L1-1", "acme", 7_000_000, SOLD),
    ]

    balances = journal.trial_balance(postings)

    assert sum(balances.values()) == 0
    assert balances["buyer_receivable:acme"] == 13_000_000
    assert balances["revenue:auto"] == -25_000_000
