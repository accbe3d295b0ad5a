"""How long the suite's calls about a lead may take, derived from the configuration alone: the
gateway and routing both bound their calls by these."""

from __future__ import annotations

from dataclasses import dataclass

from leadflow.config import Config, Delivery, Flow, HttpDelivery, Stage

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


def ranking_deadline(config: Config, stage: Stage) -> float:
    """A stage's ranking: price strategies ask pricing, an auction waits for its pings."""
    deadline = ROUTING_DEADLINE_S
    if stage.strategy in ("highest_price", "performance", "auction"):
        deadline += pricing_deadline(config)
    if stage.strategy == "auction":
        deadline += stage.deadline_ms / 1000
    return deadline


@dataclass(frozen=True)
class DistributionDeadlines:
    """How long a lead's distribution stream may take: in all, until its first message (no
    delivery happens before it: admission, the first stage's ranking and the first offer's
    price), and between two messages (routing sends one at least per stage and per offer)."""

    total: float
    first: float
    gap: float


def distribution_deadlines(config: Config, flow: Flow) -> DistributionDeadlines:
    pricing = pricing_deadline(config)
    total = ROUTING_DEADLINE_S
    slowest_offer = 0.0
    for stage in flow.stages:
        total += ranking_deadline(config, stage)
        for step in stage.steps:
            buyer = config.buyers_by_id[step.buyer]
            offer = pricing + delivery_deadline(buyer.delivery)
            total += offer
            slowest_offer = max(slowest_offer, offer)
    slowest_ranking = max(ranking_deadline(config, stage) for stage in flow.stages)
    return DistributionDeadlines(
        total=total,
        first=ranking_deadline(config, flow.stages[0]) + pricing,
        gap=slowest_offer + slowest_ranking,
    )
