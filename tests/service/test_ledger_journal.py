"""The ledger's journal, delivery outcomes, feedback governance and reports, on the real store
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

from leadflow.reports import BuyerLine, MarginLine, VendorLine
from ledger_service.feedback import (
    CONVERSION,
    RETURN,
    DecisionRefused,
    FeedbackRecord,
    FeedbackRequest,
    ReturnPolicy,
    UnknownFeedback,
    UnknownSale,
)
from ledger_service.ledger import (
    NotQueued,
    UnknownEvent,
)
from ledger_service.store import LedgerStore
from tests.service.helpers_ledger import (
    POLICY,
    T0,
    completion,
    feedback,
    lead_record,
    queued_lead,
    recipient,
    sold_lead,
)

if TYPE_CHECKING:
    from conftest import Database

MONTH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


@pytest.fixture
async def store(database: Database) -> AsyncIterator[LedgerStore]:
    ledger = await LedgerStore.open(database.url, database.schema)
    try:
        yield ledger
    finally:
        await ledger.close()


async def assert_balanced(store: LedgerStore) -> None:
    assert sum((await store.trial_balance()).values()) == 0


# --- Postings of a recorded lead ----------------------------------------------------------------


async def test_sold_lead_posts_a_purchase_and_a_sale_between_the_named_accounts(
    store: LedgerStore,
) -> None:
    await store.record(sold_lead("L1"))

    postings = await store.postings("L1")

    assert [(p.id, p.debit_account, p.credit_account, p.amount_micros) for p in postings] == [
        ("purchase:L1", "cost:auto", "vendor_payable:vendor", 10_000_000),
        ("sale:L1-1", "buyer_receivable:acme", "revenue:auto", 20_000_000),
    ]
    assert all(p.effective_time == T0 for p in postings)
    assert await store.trial_balance() == {
        "cost:auto": 10_000_000,
        "vendor_payable:vendor": -10_000_000,
        "buyer_receivable:acme": 20_000_000,
        "revenue:auto": -20_000_000,
    }


async def test_failed_lead_posts_nothing(store: LedgerStore) -> None:
    await store.record(lead_record("L1", outcome="failure"))

    assert await store.postings("L1") == []


async def test_accepted_lead_at_zero_posts_a_zero_purchase(store: LedgerStore) -> None:
    await store.record(lead_record("L1", price="0.00"))

    assert [(p.kind, p.amount_micros) for p in await store.postings("L1")] == [("purchase", 0)]


async def test_only_successful_recipients_post_sales(store: LedgerStore) -> None:
    recipients = [
        recipient("L1-1", "acme", "failure", "30.00"),
        recipient("L1-2", "beta", "error", "25.00"),
        recipient("L1-3", "gamma", "skip", "0"),
        recipient("L1-4", "delta", "queued", "15.00"),
        recipient("L1-5", "omega", "success", "12.50"),
    ]
    await store.record(lead_record("L1", recipients=recipients))

    sales = [p for p in await store.postings("L1") if p.kind == "sale"]

    assert [(p.buyer_id, p.amount_micros) for p in sales] == [("omega", 12_500_000)]


async def test_replayed_lead_posts_nothing_more(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))
    before = await store.postings()

    assert not await store.record(sold_lead("L1", price="99.00"))

    assert await store.postings() == before


# --- Queued (batch) deliveries --------------------------------------------------------------------


async def test_delivered_batch_books_the_sale_at_its_completion_time(store: LedgerStore) -> None:
    await store.record(queued_lead())

    completed, posting = await store.record_delivery_outcome(completion())

    assert completed.created and posting is not None
    sale = [p for p in await store.postings("L1") if p.kind == "sale"]
    assert [(p.id, p.amount_micros, p.effective_time) for p in sale] == [
        ("sale:L1-1", 16_000_000, T0 + timedelta(days=2))
    ]
    await assert_balanced(store)


async def test_batch_outcome_without_price_books_the_quoted_price(store: LedgerStore) -> None:
    await store.record(queued_lead(quoted="15.00"))

    await store.record_delivery_outcome(completion(price=None))

    assert [p.amount_micros for p in await store.postings("L1") if p.kind == "sale"] == [15_000_000]


async def test_replayed_batch_outcome_changes_nothing(store: LedgerStore) -> None:
    await store.record(queued_lead())
    await store.record_delivery_outcome(completion())
    before = await store.postings()

    completed, posting = await store.record_delivery_outcome(completion(price="99.00"))

    assert not completed.created and posting is None
    assert await store.postings() == before
    assert len(await store.delivery_outcomes("L1")) == 1


async def test_failed_batch_outcome_books_no_sale(store: LedgerStore) -> None:
    await store.record(queued_lead())

    completed, posting = await store.record_delivery_outcome(completion(outcome="failure"))

    assert completed.created and posting is None
    assert [p.kind for p in await store.postings("L1")] == ["purchase"]


async def test_outcome_for_an_event_that_was_not_queued_is_refused(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))

    with pytest.raises(NotQueued):
        await store.record_delivery_outcome(completion())


async def test_outcome_for_an_unknown_event_is_refused(store: LedgerStore) -> None:
    with pytest.raises(UnknownEvent):
        await store.record_delivery_outcome(completion("nope"))


# --- Returns and conversions --------------------------------------------------------------------


async def submit(
    store: LedgerStore, request: FeedbackRequest, now: datetime = T0 + timedelta(days=1)
) -> FeedbackRecord:
    record, _created, _postings = await store.submit_feedback(request, now)
    return record


async def test_auto_approved_return_credits_the_buyer_and_charges_back_the_vendor(
    store: LedgerStore,
) -> None:
    await store.record(sold_lead("L1"))

    record = await submit(store, feedback("F1", "L1"))

    assert (record.outcome, record.status, record.amount) == (
        "success",
        "approved",
        Decimal("20.00"),
    )
    by_kind = {p.kind: p for p in await store.postings("L1")}
    assert (by_kind["return"].debit_account, by_kind["return"].credit_account) == (
        "returns:auto",
        "buyer_receivable:acme",
    )
    assert by_kind["return"].amount_micros == 20_000_000
    assert (by_kind["chargeback"].debit_account, by_kind["chargeback"].credit_account) == (
        "vendor_payable:vendor",
        "chargebacks:auto",
    )
    assert by_kind["chargeback"].amount_micros == 10_000_000
    balances = await store.trial_balance()
    assert balances["buyer_receivable:acme"] == 0 and balances["vendor_payable:vendor"] == 0
    assert sum(balances.values()) == 0


async def test_return_names_the_configured_reason_whatever_its_case(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))

    record = await submit(store, feedback("F1", "L1", reason="  bad PHONE "))

    assert (record.status, record.reason) == ("approved", "Bad phone")


async def test_partial_credit_is_posted_as_asked(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))

    await submit(store, feedback("F1", "L1", amount="5.25"))

    assert [p.amount_micros for p in await store.postings("L1") if p.kind == "return"] == [
        5_250_000
    ]


@pytest.mark.parametrize(
    ("request_", "now", "reason"),
    [
        (
            feedback("F1", "L1", reason="Too expensive"),
            T0,
            "Return reason must be one of: Bad phone, Duplicate",
        ),
        (
            feedback("F1", "L1"),
            T0 + timedelta(days=30, seconds=1),
            "Outside the 30-day return window",
        ),
        (
            feedback("F1", "L1", amount="20.01"),
            T0,
            "Return amount must be more than 0.00 and at most the sale price 20.00",
        ),
        (
            feedback("F1", "L1", amount="0"),
            T0,
            "Return amount must be more than 0.00 and at most the sale price 20.00",
        ),
        (feedback("F1", "L1", policy=None), T0, "Returns are not accepted from this buyer"),
    ],
    ids=["reason", "window", "amount-over-sale", "amount-zero", "no-policy"],
)
async def test_refused_return_is_recorded_denied_and_posts_nothing(
    store: LedgerStore, request_: FeedbackRequest, now: datetime, reason: str
) -> None:
    await store.record(sold_lead("L1"))

    record = await submit(store, request_, now)

    assert (record.outcome, record.status, record.outcome_reason) == ("failure", "denied", reason)
    assert [p.kind for p in await store.postings("L1")] == ["purchase", "sale"]
    assert [f.id for f in await store.feedback("L1")] == ["F1"]


async def test_return_on_the_last_instant_of_the_window_is_taken(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))

    record = await submit(store, feedback("F1", "L1"), T0 + timedelta(days=30))

    assert record.status == "approved"


async def test_second_return_of_a_lead_by_the_same_buyer_is_refused(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))
    await submit(store, feedback("F1", "L1"))

    second = await submit(store, feedback("F2", "L1", reason="Duplicate"))

    assert (second.outcome, second.outcome_reason) == ("failure", "Lead already returned")
    assert [p.kind for p in await store.postings("L1")].count("return") == 1


async def test_refused_return_does_not_count_as_the_leads_return(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))
    await submit(store, feedback("F1", "L1", reason="Wrong"))

    second = await submit(store, feedback("F2", "L1"))

    assert second.status == "approved"


async def test_replayed_feedback_returns_the_first_result(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))
    first, created, _ = await store.submit_feedback(feedback("F1", "L1"), T0)
    before = await store.postings()

    again, created_again, postings = await store.submit_feedback(
        feedback("F1", "L1", reason="nonsense"), T0 + timedelta(days=90)
    )

    assert created and not created_again and postings == []
    assert again == first
    assert await store.postings() == before


async def test_returns_over_the_monthly_percent_are_refused(store: LedgerStore) -> None:
    policy = ReturnPolicy(window_days=30, max_percent=Decimal(50), time_zone="UTC")
    for n in range(4):
        await store.record(sold_lead(f"L{n}", at=T0 + timedelta(minutes=n)))

    results = [await submit(store, feedback(f"F{n}", f"L{n}", policy=policy)) for n in range(4)]

    assert [r.status for r in results] == ["approved", "approved", "denied", "denied"]
    assert results[2].outcome_reason == "Over 50% of this month's sales"


async def test_denied_pending_return_frees_its_place_in_the_monthly_percent(
    store: LedgerStore,
) -> None:
    policy = ReturnPolicy(window_days=30, max_percent=Decimal(50), auto_approve=False)
    for n in range(2):
        await store.record(sold_lead(f"L{n}"))
    first = await submit(store, feedback("F0", "L0", policy=policy))
    await store.decide_return(first.id, approve=False, now=T0 + timedelta(days=1))

    second = await submit(store, feedback("F1", "L1", policy=policy))

    assert second.status == "pending"


async def test_pending_return_posts_only_when_approved(store: LedgerStore) -> None:
    policy = ReturnPolicy(window_days=30, auto_approve=False, return_to_source=True)
    await store.record(sold_lead("L1"))
    pending = await submit(store, feedback("F1", "L1", policy=policy))
    assert pending.status == "pending"
    assert [p.kind for p in await store.postings("L1")] == ["purchase", "sale"]

    decided_at = T0 + timedelta(days=3)
    record, changed, postings = await store.decide_return("F1", True, decided_at)

    assert changed and record.status == "approved" and record.decide_time == decided_at
    assert sorted(p.kind for p in postings) == ["chargeback", "return"]
    assert {
        p.effective_time for p in await store.postings("L1") if p.kind in ("return", "chargeback")
    } == {decided_at}


async def test_denied_return_posts_nothing(store: LedgerStore) -> None:
    policy = ReturnPolicy(auto_approve=False)
    await store.record(sold_lead("L1"))
    await submit(store, feedback("F1", "L1", policy=policy))

    record, changed, postings = await store.decide_return("F1", False, T0)

    assert changed and record.status == "denied" and postings == []
    assert [p.kind for p in await store.postings("L1")] == ["purchase", "sale"]


async def test_repeating_a_decision_changes_nothing_and_reversing_it_is_refused(
    store: LedgerStore,
) -> None:
    await store.record(sold_lead("L1"))
    await submit(store, feedback("F1", "L1", policy=ReturnPolicy(auto_approve=False)))
    await store.decide_return("F1", True, T0)
    before = await store.postings()

    _, changed, postings = await store.decide_return("F1", True, T0 + timedelta(days=1))
    with pytest.raises(DecisionRefused):
        await store.decide_return("F1", False, T0)

    assert not changed and postings == []
    assert await store.postings() == before


async def test_deciding_an_auto_approved_return_or_a_conversion_is_refused(
    store: LedgerStore,
) -> None:
    await store.record(sold_lead("L1"))
    await submit(store, feedback("F1", "L1"))
    await submit(store, feedback("C1", "L1", kind=CONVERSION, reason="Sold a policy"))

    with pytest.raises(DecisionRefused):
        await store.decide_return("F1", False, T0)
    with pytest.raises(DecisionRefused):
        await store.decide_return("C1", True, T0)
    with pytest.raises(UnknownFeedback):
        await store.decide_return("nope", True, T0)


async def test_chargeback_is_posted_once_per_lead_whichever_buyer_returns(
    store: LedgerStore,
) -> None:
    recipients = [recipient("L1-1", "acme"), recipient("L1-2", "beta", price="15.00")]
    await store.record(lead_record("L1", recipients=recipients))

    await submit(store, feedback("F1", "L1", buyer_id="acme"))
    await submit(store, feedback("F2", "L1", buyer_id="beta"))

    kinds = [p.kind for p in await store.postings("L1")]
    assert kinds.count("return") == 2 and kinds.count("chargeback") == 1
    await assert_balanced(store)


async def test_return_without_return_to_source_does_not_charge_the_vendor(
    store: LedgerStore,
) -> None:
    await store.record(sold_lead("L1"))

    await submit(store, feedback("F1", "L1", policy=ReturnPolicy(return_to_source=False)))

    assert "chargeback" not in [p.kind for p in await store.postings("L1")]


async def test_return_of_a_lead_the_buyer_did_not_buy_fails(store: LedgerStore) -> None:
    await store.record(lead_record("L1", recipients=[recipient("L1-1", "acme", "failure")]))

    record = await submit(store, feedback("F1", "L1"))

    assert (record.outcome, record.outcome_reason) == ("failure", "Lead was not sold to this buyer")


async def test_feedback_on_a_lead_never_offered_to_the_buyer_is_unknown(
    store: LedgerStore,
) -> None:
    await store.record(sold_lead("L1", buyer_id="acme"))

    with pytest.raises(UnknownSale):
        await submit(store, feedback("F1", "L1", buyer_id="beta"))
    with pytest.raises(UnknownSale):
        await submit(store, feedback("F2", "nope"))
    with pytest.raises(UnknownSale):
        await submit(
            store,
            FeedbackRequest(
                feedback_id="F3", buyer_id="beta", type=RETURN, recipient_event_id="L1-1"
            ),
        )


async def test_return_by_event_id_names_that_sale(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))

    record = await submit(
        store,
        FeedbackRequest(
            feedback_id="F1",
            buyer_id="acme",
            type=RETURN,
            recipient_event_id="L1-1",
            reason="Duplicate",
            policy=POLICY,
        ),
    )

    assert (record.lead_id, record.recipient_event_id, record.status) == ("L1", "L1-1", "approved")


async def test_return_window_of_a_batch_sale_runs_from_its_delivery(store: LedgerStore) -> None:
    await store.record(queued_lead())
    delivered = T0 + timedelta(days=20)
    await store.record_delivery_outcome(completion(at=delivered))

    record = await submit(
        store, feedback("F1", "L1", buyer_id="batcher"), delivered + timedelta(days=29)
    )

    assert record.status == "approved"
    assert record.sale_time == delivered


async def test_conversion_is_recorded_once_and_moves_no_money(store: LedgerStore) -> None:
    await store.record(sold_lead("L1"))

    first = await submit(store, feedback("C1", "L1", kind=CONVERSION, reason="", policy=None))
    second = await submit(store, feedback("C2", "L1", kind=CONVERSION, reason="", policy=None))

    assert (first.outcome, first.status) == ("success", "approved")
    assert (second.outcome, second.outcome_reason) == ("failure", "Conversion already recorded")
    assert [p.kind for p in await store.postings("L1")] == ["purchase", "sale"]


# --- Reports and stats ------------------------------------------------------------------------


async def populate(store: LedgerStore) -> None:
    """Two sources, three buyers, a failure, a queued sale delivered later, returns."""
    await store.record(sold_lead("A", buyer_id="acme", price="10.00", sale="30.00"))
    await store.record(
        lead_record(
            "B",
            source_id="other",
            price="9.00",
            recipients=[
                recipient("B-1", "acme", "failure", "28.00"),
                recipient("B-2", "beta", "success", "12.00"),
                recipient("B-3", "gamma", "success", "6.00"),
            ],
        )
    )
    await store.record(
        lead_record("C", price="5.00", recipients=[recipient("C-1", "beta", "error", "7.00")])
    )
    await store.record(lead_record("D", outcome="failure", price="4.00"))
    await store.record(queued_lead("E", quoted="11.00"))
    await store.record_delivery_outcome(completion("E-1", at=T0 + timedelta(days=1), price=None))
    await submit(store, feedback("R1", "A", amount="30.00"))
    await submit(
        store, feedback("R2", "B", buyer_id="beta", policy=ReturnPolicy(return_to_source=False))
    )


async def test_vendor_report_counts_leads_and_nets_chargebacks(store: LedgerStore) -> None:
    await populate(store)

    lines = await store.vendor_report(*MONTH)

    assert lines == [
        VendorLine("other", leads=1, accepted=1, purchase_micros=9_000_000),
        VendorLine(
            "vendor", leads=4, accepted=3, purchase_micros=25_000_000, chargeback_micros=10_000_000
        ),
    ]


async def test_buyer_report_counts_deliveries_sales_and_credits(store: LedgerStore) -> None:
    await populate(store)

    lines = {line.buyer_id: line for line in await store.buyer_report(*MONTH)}

    assert lines["acme"] == BuyerLine(
        "acme",
        deliveries=2,
        sold=1,
        failed=1,
        sales_micros=30_000_000,
        returns=1,
        return_credit_micros=30_000_000,
        failed_opportunity_micros=28_000_000,
    )
    assert lines["beta"] == BuyerLine(
        "beta",
        deliveries=2,
        sold=1,
        errors=1,
        sales_micros=12_000_000,
        returns=1,
        return_credit_micros=12_000_000,
    )
    assert lines["batcher"] == BuyerLine("batcher", deliveries=1, sold=1, sales_micros=11_000_000)
    assert lines["gamma"].sold == 1


async def test_reports_leave_out_what_falls_outside_the_window(store: LedgerStore) -> None:
    await populate(store)

    lines = await store.vendor_report(T0 + timedelta(hours=1), MONTH[1])

    # Only the chargeback is left: dated by its return's approval, a day after the leads.
    assert lines == [VendorLine("vendor", chargeback_micros=10_000_000)]


async def test_margin_by_flow_nets_cost_and_credits(store: LedgerStore) -> None:
    await populate(store)

    totals = await store.margin_report(*MONTH, ["flow"])

    assert totals.total_leads == 4
    assert totals.lines == (
        MarginLine(
            flow_id="auto",
            leads=4,
            revenue_micros=59_000_000,
            cost_micros=(10 + 9 + 5 + 10 - 10) * 1_000_000,
            credit_micros=42_000_000,
        ),
    )


async def test_margin_by_buyer_splits_each_purchase_between_its_buyers(store: LedgerStore) -> None:
    await populate(store)

    totals = await store.margin_report(*MONTH, ["buyer"])

    lines = {line.buyer_id: line for line in totals.lines}
    assert lines["acme"].cost_micros == 10_000_000 - 10_000_000  # its return charged back A
    assert (lines["beta"].cost_micros, lines["gamma"].cost_micros) == (4_500_000, 4_500_000)
    assert lines["batcher"].cost_micros == 10_000_000
    assert (lines[""].leads, lines[""].cost_micros) == (1, 5_000_000)  # C: nobody bought it
    assert sum(line.cost_micros for line in totals.lines) == 24_000_000
    assert sum(line.revenue_micros for line in totals.lines) == 59_000_000
    assert totals.total_leads == 4


async def test_margin_split_gives_the_odd_cent_to_the_first_buyer(store: LedgerStore) -> None:
    recipients = [recipient(f"L1-{n}", f"b{n}", "success", "1.00") for n in range(3)]
    await store.record(lead_record("L1", price="10.00", recipients=recipients))

    totals = await store.margin_report(*MONTH, ["source", "buyer"])

    assert [(line.source_id, line.buyer_id, line.cost_micros) for line in totals.lines] == [
        ("vendor", "b0", 3_340_000),
        ("vendor", "b1", 3_330_000),
        ("vendor", "b2", 3_330_000),
    ]


async def test_buyer_stats_count_offers_sales_returns_and_conversions(store: LedgerStore) -> None:
    await populate(store)
    await submit(store, feedback("C1", "B", buyer_id="gamma", kind=CONVERSION, policy=None))

    stats = await store.buyer_stats([], *MONTH)

    assert stats["acme"] == {"offered": 2, "sold": 1, "revenue_micros": 30_000_000, "returned": 1}
    assert stats["gamma"] == {"offered": 1, "sold": 1, "revenue_micros": 6_000_000, "converted": 1}
    assert list(await store.buyer_stats(["beta"], *MONTH)) == ["beta"]


async def test_reports_agree_with_the_trial_balance(store: LedgerStore) -> None:
    await populate(store)

    balances = await store.trial_balance()
    vendors = await store.vendor_report(*MONTH)
    buyers = await store.buyer_report(*MONTH)

    assert sum(balances.values()) == 0
    for line in vendors:
        assert -balances.get(f"vendor_payable:{line.source_id}", 0) == (
            line.purchase_micros - line.chargeback_micros
        )
    for line in buyers:
        assert balances.get(f"buyer_receivable:{line.buyer_id}", 0) == (
            line.sales_micros - line.return_credit_micros
        )


# --- Concurrency: several replicas on one database ------------------------------------------------


@pytest.fixture
async def replicas(database: Database, store: LedgerStore) -> AsyncIterator[list[LedgerStore]]:
    """Three stores on one database, as three ledger replicas would be."""
    others = [await LedgerStore.open(database.url, database.schema) for _ in range(2)]
    try:
        yield [store, *others]
    finally:
        for other in others:
            await other.close()


async def test_concurrent_returns_never_overshoot_the_monthly_percent(
    replicas: list[LedgerStore],
) -> None:
    policy = ReturnPolicy(window_days=30, max_percent=Decimal(50), time_zone="UTC")
    for n in range(10):
        await replicas[0].record(sold_lead(f"L{n}"))

    results = await asyncio.gather(
        *(
            replicas[n % 3].submit_feedback(feedback(f"F{n}", f"L{n}", policy=policy), T0)
            for n in range(10)
        )
    )

    statuses = [record.status for record, _, _ in results]
    assert statuses.count("approved") == 5 and statuses.count("denied") == 5
    postings = await replicas[0].postings()
    assert [p.kind for p in postings].count("return") == 5


async def test_concurrent_returns_of_one_lead_take_one(replicas: list[LedgerStore]) -> None:
    recipients = [recipient("L1-1", "acme"), recipient("L1-2", "beta")]
    await replicas[0].record(lead_record("L1", recipients=recipients))

    results = await asyncio.gather(
        *(
            replicas[n % 3].submit_feedback(feedback(f"F{n}", "L1", buyer_id=buyer), T0)
            for n, buyer in enumerate(["acme", "acme", "acme", "beta", "beta", "beta"])
        )
    )

    approved = [record.buyer_id for record, _, _ in results if record.status == "approved"]
    assert sorted(approved) == ["acme", "beta"]
    kinds = [p.kind for p in await replicas[0].postings("L1")]
    assert kinds.count("return") == 2 and kinds.count("chargeback") == 1
    await assert_balanced(replicas[0])


async def test_concurrent_decisions_on_one_return_decide_it_once(
    replicas: list[LedgerStore],
) -> None:
    await replicas[0].record(sold_lead("L1"))
    await submit(replicas[0], feedback("F1", "L1", policy=ReturnPolicy(auto_approve=False)))

    results = await asyncio.gather(
        *(replicas[n % 3].decide_return("F1", n % 2 == 0, T0) for n in range(6)),
        return_exceptions=True,
    )

    changed = [r for r in results if isinstance(r, tuple) and r[1]]
    assert len(changed) == 1
    winner = changed[0][0].status
    for result in results:
        if isinstance(result, tuple):
            assert result[0].status == winner
        else:
            assert isinstance(result, DecisionRefused)
    assert [p.kind for p in await replicas[0].postings("L1")].count("return") == (
        1 if winner == "approved" else 0
    )


async def test_concurrent_batch_outcomes_book_one_sale(replicas: list[LedgerStore]) -> None:
    await replicas[0].record(queued_lead())

    results = await asyncio.gather(
        *(replicas[n % 3].record_delivery_outcome(completion()) for n in range(6))
    )

    assert sorted(completed.created for completed, _ in results) == [False] * 5 + [True]
    assert [p.kind for p in await replicas[0].postings("L1")].count("sale") == 1
