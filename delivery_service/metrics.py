"""The delivery service's Prometheus metrics (SPEC section 11), defined once per process."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "leadflow_deliveries_total",
    "Leads delivered to buyers, by buyer, adapter and outcome.",
    ["buyer", "adapter", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "leadflow_delivery_duration_seconds",
    "Time to deliver a lead to a buyer, retries and backoff included.",
    ["buyer", "adapter"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DELIVERY_RETRIES = Counter(
    "leadflow_delivery_retries_total",
    "Delivery attempts repeated after an error, by buyer.",
    ["buyer"],
)
BATCH_PENDING = Gauge(
    "leadflow_batch_pending_leads",
    "Leads queued for a batch buyer and not yet in a delivered file, by buyer.",
    ["buyer"],
)
OUTCOMES_UNREPORTED = Gauge(
    "leadflow_delivery_outcomes_unreported",
    "Batch outcomes the ledger has not taken yet (kept and retried until it does).",
)
CIRCUIT_STATE = Gauge(
    "leadflow_delivery_circuit_state",
    "A buyer's delivery circuit: 0 closed, 1 open, 2 half-open (probing).",
    ["buyer"],
)
CIRCUIT_REFUSED = Counter(
    "leadflow_delivery_circuit_refused_total",
    "Deliveries answered `error` without calling the buyer because its circuit was open.",
    ["buyer"],
)
CIRCUIT_OPENED = Counter(
    "leadflow_delivery_circuit_opened_total", "Times a buyer's circuit opened.", ["buyer"]
)


# labels() takes a lock and checks its arguments on every call; a delivery's children are
# looked up once per buyer, adapter and outcome instead (a handful per configuration).
@cache
def delivered(buyer: str, adapter: str, outcome: str) -> Counter:
    return DELIVERIES.labels(buyer, adapter, outcome)


@cache
def delivery_seconds(buyer: str, adapter: str) -> Histogram:
    return DELIVERY_SECONDS.labels(buyer, adapter)
