"""gateway metrics: the lead-level numbers of SPEC section 11, defined once."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import Counter, Histogram

LEADS = Counter("leadflow_leads_total", "Leads handled, by outcome.", ["flow", "source", "outcome"])
LEAD_SECONDS = Histogram(
    "leadflow_lead_duration_seconds",
    "Time to handle a lead, submission to response.",
    ["flow"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PURCHASE_COST = Counter(
    "leadflow_purchase_cost_dollars_total", "Purchase prices paid to vendors.", ["flow", "source"]
)
SALE_REVENUE = Counter(
    "leadflow_sale_revenue_dollars_total",
    "Sale prices of successful deliveries.",
    ["flow", "buyer"],
)


def observe_lead(flow: str, source: str, outcome: str, price_paid: Decimal, seconds: float) -> None:
    LEADS.labels(flow, source, outcome).inc()
    LEAD_SECONDS.labels(flow).observe(seconds)
    PURCHASE_COST.labels(flow, source).inc(float(price_paid))


def observe_sale(flow: str, buyer: str, price: Decimal) -> None:
    SALE_REVENUE.labels(flow, buyer).inc(float(price))
