"""How long the suite's calls about a lead may take, derived from the configuration alone: the
gateway and routing both bound their calls by these."""

from __future__ import annotations

from leadflow.config import Config, Delivery, Flow, HttpDelivery

# Long enough to ride out a restart of the service (a few seconds): with wait_for_ready a call
# made while it is down waits for it rather than failing the lead.
PRICING_DEADLINE_S = 10.0
ROUTING_DEADLINE_S = 10.0


def pricing_deadline(config: Config) -> float:
    """Long enough for the slowest configured pricing service to answer or time out, plus slack
    (a lead runs at most one service layer per quote)."""
    timeouts = [
        pricing.service.timeout_ms
        for pricing in config.pricing_blocks()
        if pricing is not None and pricing.service is not None
    ]
    return max(PRICING_DEADLINE_S, max(timeouts, default=0) / 1000 + 1.0)


def delivery_deadline(delivery: Delivery | None) -> float:
    """Long enough for every attempt and backoff the buyer's retry policy allows, plus slack."""
    if delivery is None:
        return 30.0
    if not isinstance(delivery, HttpDelivery):
        # One file or mail within timeout_ms (a batch buyer's call only queues the lead).
        return delivery.timeout_ms / 1000 + 10.0
    retry = delivery.retry
    attempts = retry.attempts if retry else 1
    backoff = retry.max_backoff_ms * (attempts - 1) if retry else 0
    return (delivery.timeout_ms * attempts + backoff) / 1000 + 5.0


def distribution_deadline(config: Config, flow: Flow) -> float:
    """The longest a lead's distribution can take: every stage ranked (its pings and quotes)
    and every step offered (quoted, then delivered with all its retries). A bound, not an
    estimate: a lead stops at its first sales."""
    pricing = pricing_deadline(config)
    total = ROUTING_DEADLINE_S
    for stage in flow.stages:
        total += pricing + stage.deadline_ms / 1000
        for step in stage.steps:
            buyer = config.buyers_by_id[step.buyer]
            total += pricing + delivery_deadline(buyer.delivery)
    return total
