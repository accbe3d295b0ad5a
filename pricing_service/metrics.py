"""pricing_service metrics, defined once."""

from prometheus_client import Counter

PRICING_FALLBACKS = Counter(
    "leadflow_pricing_fallbacks_total",
    "Pricing service calls that fell back to the configured fallback price.",
    ["layer"],
)
