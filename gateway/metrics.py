"""gateway metrics: leads and their handling time (SPEC 11). Money is counted by the ledger,
where it is booked."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LEADS = Counter("leadflow_leads_total", "Leads handled, by outcome.", ["flow", "source", "outcome"])
LEAD_SECONDS = Histogram(
    "leadflow_lead_duration_seconds",
    "Time to handle a lead, submission to response.",
    ["flow"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMITED = Counter(
    "leadflow_rate_limited_total", "Vendor requests refused with 429, by source.", ["source"]
)


def observe_lead(flow: str, source: str, outcome: str, seconds: float) -> None:
    LEADS.labels(flow, source, outcome).inc()
    LEAD_SECONDS.labels(flow).observe(seconds)
