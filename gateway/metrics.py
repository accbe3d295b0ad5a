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


# Each label set's children, looked up once: `labels()` costs more than the count and the
# observation together (~10 us of ~18 per lead). Bounded by the configuration's flows and
# sources times the six outcomes.
_LEAD_CHILDREN: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def observe_lead(flow: str, source: str, outcome: str, seconds: float) -> None:
    key = (flow, source, outcome)
    children = _LEAD_CHILDREN.get(key)
    if children is None:
        children = _LEAD_CHILDREN[key] = (LEADS.labels(*key), LEAD_SECONDS.labels(flow))
    count, duration = children
    count.inc()
    duration.observe(seconds)
