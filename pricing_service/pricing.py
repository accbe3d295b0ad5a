"""Purchase and sale prices (SPEC section 6): layers tried in order, the first that returns a
price wins; inside a rules layer the LAST matching price wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from leadflow.config import Config, Pricing, Step
from leadflow.context import lead_context
from leadflow.money import ZERO, cents
from leadflow.wire import LeadData, PriceAudit


@dataclass(frozen=True)
class Quote:
    price: Decimal
    audit: PriceAudit


def rules_price(pricing: Pricing | None, context: Mapping[str, Any]) -> tuple[Decimal, int] | None:
    """The last price whose rule set matches (no rule set always matches), with its index."""
    if pricing is None:
        return None
    for index in range(len(pricing.prices) - 1, -1, -1):
        price = pricing.prices[index]
        if price.rule_set is None or price.rule_set.compiled.evaluate(context).passed:
            # config_check refuses expression amounts until they are supported.
            assert isinstance(price.amount, Decimal)
            return cents(price.amount), index
    return None


def first_layer(layers: Sequence[tuple[str, Pricing | None]], context: Mapping[str, Any]) -> Quote:
    for layer, pricing in layers:
        found = rules_price(pricing, context)
        if found is not None:
            amount, index = found
            return Quote(amount, PriceAudit(layer=layer, amount=amount, rule_index=index))
    return Quote(ZERO, PriceAudit(layer="none", amount=ZERO))


def purchase_quote(config: Config, lead: LeadData) -> Quote:
    """What we pay the vendor: source rules, then flow rules, else $0.00."""
    flow = config.flows_by_id[lead.flow_id]
    entry = flow.sources_by_id[lead.source_id]
    context = lead_context(config, lead)
    return first_layer((("source_rules", entry.pricing), ("flow_rules", flow.pricing)), context)


def find_step(config: Config, flow_id: str, stage_index: int, step_index: int) -> Step:
    """The configured step, or LookupError naming what is missing."""
    flow = config.flows_by_id[flow_id]
    if not 0 <= stage_index < len(flow.stages):
        raise LookupError(f"flow {flow_id!r} has no stage {stage_index}")
    steps = flow.stages[stage_index].steps
    if not 0 <= step_index < len(steps):
        raise LookupError(f"stage {stage_index} of flow {flow_id!r} has no step {step_index}")
    return steps[step_index]


def sale_quote(
    config: Config, lead: LeadData, stage_index: int, step_index: int, purchase_price: Decimal
) -> Quote:
    """What a buyer pays before delivery: step rules, then buyer rules, else $0.00."""
    step = find_step(config, lead.flow_id, stage_index, step_index)
    buyer = config.buyers_by_id[step.buyer]
    context = lead_context(config, lead, buyer=buyer, purchase_price=purchase_price)
    return first_layer((("step_rules", step.pricing), ("buyer_rules", buyer.pricing)), context)
