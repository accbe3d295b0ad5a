"""routing_service metrics, defined once."""

from prometheus_client import Counter

CAP_REJECTIONS = Counter(
    "leadflow_cap_rejections_total", "Leads or steps refused because a cap was full.", ["scope"]
)
