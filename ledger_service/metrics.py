"""ledger_service metrics (SPEC 11), defined once here; the kit counts its RPCs."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter

from leadflow.config import Config
from leadflow.money import from_micros
from ledger_service import journal
from ledger_service.journal import Posting

RETURN_CREDITS = Counter(
    "leadflow_return_credits_dollars_total", "Credits of approved buyer returns.", ["buyer"]
)
# SPEC's credits have only `buyer`; margin by flow (deploy/grafana margin.json, which must agree
# with the margin report) needs each return's flow and source, and the vendor chargebacks too.
RETURNS = Counter(
    "leadflow_returns_dollars_total",
    "Money moved by approved returns: the buyer's credit and, under return_to_source, the "
    "vendor's chargeback (kind credit|chargeback).",
    ["flow", "source", "buyer", "kind"],
)
# Money is counted where it is booked: every purchase and sale posting the ledger writes (real
# time with the lead, or a batch sale when its file is delivered), never a replay. So these
# counters agree with the journal and the margin report by construction.
PURCHASE_COST = Counter(
    "leadflow_purchase_cost_dollars_total", "Purchase prices paid to vendors.", ["flow", "source"]
)
SALE_REVENUE = Counter(
    "leadflow_sale_revenue_dollars_total",
    "Sale prices of successful deliveries.",
    ["flow", "buyer"],
)


def start_at_zero(config: Config) -> None:
    """Export every money series the configuration can produce, at 0, before anything is booked.
    A counter whose first scrape already holds its first amount shows no increase to rate() and
    increase(): a flow whose first sales reach the ledger in one batch would show no revenue."""
    for flow in config.flows:
        buyer_ids = sorted({step.buyer for stage in flow.stages for step in stage.steps})
        for buyer_id in buyer_ids:
            SALE_REVENUE.labels(flow.id, buyer_id)
        for entry in flow.sources:
            PURCHASE_COST.labels(flow.id, entry.source)
            for buyer_id in buyer_ids:
                for kind in ("credit", "chargeback"):
                    RETURNS.labels(flow.id, entry.source, buyer_id, kind)
    for buyer in config.buyers:
        RETURN_CREDITS.labels(buyer.id)


def observe_postings(postings: Iterable[Posting]) -> None:
    """Count newly written postings (never a replay: callers pass only what they wrote)."""
    for posting in postings:
        dollars = float(from_micros(posting.amount_micros))
        lead = posting.lead
        if posting.kind == journal.RETURN:
            RETURN_CREDITS.labels(posting.buyer_id).inc(dollars)
            RETURNS.labels(lead.flow_id, lead.source_id, posting.buyer_id, "credit").inc(dollars)
        elif posting.kind == journal.CHARGEBACK:
            RETURNS.labels(lead.flow_id, lead.source_id, posting.buyer_id, "chargeback").inc(
                dollars
            )
        elif posting.kind == journal.PURCHASE:
            PURCHASE_COST.labels(lead.flow_id, lead.source_id).inc(dollars)
        elif posting.kind == journal.SALE:
            SALE_REVENUE.labels(posting.lead.flow_id, posting.buyer_id).inc(dollars)
