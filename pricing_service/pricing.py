"""Purchase and sale prices (SPEC section 6): layers tried in order, the first that returns a
price wins; inside a rules layer the LAST matching price wins; a service layer always returns a
price (the service's or its fallback)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from leadflow.config import (
    Buyer,
    Config,
    Flow,
    Pricing,
    PricingServiceSpec,
    Source,
    sale_pricing,
)
from leadflow.context import lead_context
from leadflow.expressions import ExpressionError
from leadflow.money import ZERO, cents, is_price, parse_amount
from leadflow.payload import plain_values
from leadflow.wire import LeadData, PriceAudit
from pricing_service import metrics


@dataclass(frozen=True)
class ServiceAnswer:
    """A pricing service's price, or the fallback and why."""

    price: Decimal
    status: int
    latency_ms: int
    error: str = ""
    reason: str = ""

    @property
    def fallback_used(self) -> bool:
        return bool(self.error)


class QuoteService(Protocol):
    """Asks an external pricing service (the HTTP client lives in `services`, not here)."""

    async def quote(self, spec: PricingServiceSpec, payload: dict[str, Any]) -> ServiceAnswer:
        """The service's answer within its timeout, or its fallback price and why."""
        ...


@dataclass(frozen=True)
class Quote:
    price: Decimal
    audit: PriceAudit


@dataclass(frozen=True)
class Layer:
    """One place a price may come from: a pricing block's service, or its rules."""

    name: str
    kind: Literal["service", "rules"]
    pricing: Pricing | None


def layers(*named: tuple[str, Pricing | None]) -> list[Layer]:
    """`("source", pricing)` -> the source_service and source_rules layers, in that order."""
    result = []
    for prefix, pricing in named:
        result.append(Layer(f"{prefix}_service", "service", pricing))
        result.append(Layer(f"{prefix}_rules", "rules", pricing))
    return result


def rules_price(
    pricing: Pricing | None, context: Mapping[str, Any]
) -> tuple[tuple[Decimal, int] | None, str]:
    """The last matching usable price with its index, and a note on matches passed over."""
    if pricing is None:
        return None, ""
    notes = []
    for index in range(len(pricing.prices) - 1, -1, -1):
        price = pricing.prices[index]
        if price.rule_set is not None and not price.rule_set.compiled.passes(context):
            continue
        try:
            amount = price.expression.evaluate(context) if price.expression else price.amount
        except ExpressionError as exc:
            notes.append(f"price {index} skipped: {exc}")
            continue
        assert isinstance(amount, Decimal)
        if not is_price(amount):
            notes.append(f"price {index} skipped: {amount} is outside 0 to 1,000,000")
            continue
        return (cents(amount), index), "; ".join(notes)
    return None, "; ".join(notes)


class Pricer:
    """The pricing domain: configuration, the lead, and calls to external pricing services."""

    def __init__(self, config: Config, services: QuoteService) -> None:
        self._config = config
        self._services = services
        # Each call's layers follow from the configuration alone: listed once, here.
        self._purchase_layers = {
            (flow.id, entry.source): layers(("source", entry.pricing), ("flow", flow.pricing))
            for flow in config.flows
            for entry in flow.sources
        }
        self._sale_steps: dict[tuple[str, int, int], tuple[Buyer, list[Layer]]] = {}
        # Per flow, the steps (stage, step) whose sale price rules alone decide: quoted along
        # with the purchase price, so routing makes no pricing round trip for their offers.
        self._rules_steps: dict[str, list[tuple[int, int]]] = {}
        for flow in config.flows:
            rules_steps = self._rules_steps[flow.id] = []
            for s, stage in enumerate(flow.stages):
                for k, step in enumerate(stage.steps):
                    buyer = config.buyers_by_id[step.buyer]
                    self._sale_steps[(flow.id, s, k)] = (
                        buyer,
                        layers(("step", step.pricing), ("buyer", buyer.pricing)),
                    )
                    if sale_pricing(step, buyer) == "rules":
                        rules_steps.append((s, k))

    async def purchase(self, lead: LeadData, override_text: str = "") -> Quote:
        """What we pay the vendor: override, source service, source rules, flow service, flow
        rules, else $0.00."""
        flow = self._config.flows_by_id[lead.flow_id]
        entry = flow.sources_by_id[lead.source_id]
        override, note = self._override(entry.pricing, override_text)
        if override is not None:
            return override
        context = lead_context(self._config, lead)
        source = self._config.sources_by_id[lead.source_id]
        quote = await self._first(
            self._purchase_layers[(flow.id, entry.source)],
            context,
            lambda: self._payload(lead, flow, source),
        )
        return _with_note(quote, note)

    async def sale(
        self, lead: LeadData, stage_index: int, step_index: int, purchase_price: Decimal
    ) -> Quote:
        """What a buyer pays before delivery: step service, step rules, buyer service, buyer
        rules, else $0.00 (a price in the buyer's answer or a winning bid comes later)."""
        flow = self._config.flows_by_id[lead.flow_id]
        try:
            buyer, candidates = self._sale_steps[(flow.id, stage_index, step_index)]
        except KeyError:
            self._config.step(lead.flow_id, stage_index, step_index)  # names what is missing
            raise
        context = lead_context(self._config, lead, buyer=buyer, purchase_price=purchase_price)
        source = self._config.sources_by_id[lead.source_id]

        def payload() -> dict[str, Any]:
            body = self._payload(lead, flow, source, buyer)
            body["purchase_price"] = purchase_price
            return body

        return await self._first(candidates, context, payload)

    def rules_sales(self, lead: LeadData, purchase_price: Decimal) -> list[tuple[int, int, Quote]]:
        """(stage, step, quote) for every step whose sale price rules alone decide: pure and
        cheap (one rule context for the lead, its `buyer` set per step), where a step with a
        pricing service is quoted when it is offered (a service may cost money and time)."""
        steps = self._rules_steps[lead.flow_id]
        if not steps:
            return []
        context = lead_context(self._config, lead, purchase_price=purchase_price)
        quotes = []
        for s, k in steps:
            buyer, candidates = self._sale_steps[(lead.flow_id, s, k)]
            context["buyer"] = {"id": buyer.id, "name": buyer.name}
            quotes.append((s, k, _rules_first(candidates, context)))
        return quotes

    def _override(self, pricing: Pricing | None, text: str) -> tuple[Quote | None, str]:
        if not text:
            return None, ""
        if pricing is None or not pricing.override:
            return None, f"price parameter {text[:40]!r} ignored: override is off for this source"
        amount = parse_amount(text)
        if amount is None or not is_price(amount):
            return None, f"override price {text[:40]!r} ignored: not a price from 0 to 1,000,000"
        price = cents(amount)
        return Quote(price, PriceAudit(layer="override", amount=price)), ""

    async def _first(
        self,
        candidates: Sequence[Layer],
        context: Mapping[str, Any],
        payload: Callable[[], dict[str, Any]],
    ) -> Quote:
        """`payload` builds a pricing service's request body: only a service layer needs it,
        and turning every field into its plain value is most of a rules-only quote's work."""
        notes: list[str] = []
        for layer in candidates:
            if layer.pricing is None:
                continue
            if layer.kind == "service":
                if layer.pricing.service is None:
                    continue
                answer = await self._services.quote(layer.pricing.service, payload())
                if answer.fallback_used:
                    metrics.PRICING_FALLBACKS.labels(layer.name).inc()
                audit = PriceAudit(
                    layer=layer.name,
                    amount=answer.price,
                    service_status=answer.status,
                    service_latency_ms=answer.latency_ms,
                    service_error=answer.error,
                    fallback_used=answer.fallback_used,
                    note=answer.reason,
                )
                return _with_note(Quote(answer.price, audit), "; ".join(notes))
            quote = _rules_layer(layer, context, notes)
            if quote is not None:
                return quote
        return _no_price(notes)

    def _payload(
        self, lead: LeadData, flow: Flow, source: Source, buyer: Buyer | None = None
    ) -> dict[str, Any]:
        """SPEC 6.1's request body for a pricing service."""
        payload: dict[str, Any] = {
            "lead": plain_values(lead.fields),
            "flow": {"id": flow.id, "name": flow.name},
            "source": {"id": source.id, "name": source.name},
            "submission": {"timestamp": lead.submit_time.isoformat()},
        }
        if buyer is not None:
            payload["buyer"] = {"id": buyer.id, "name": buyer.name}
        return payload


def _rules_first(candidates: Sequence[Layer], context: Mapping[str, Any]) -> Quote:
    """`Pricer._first` for layers that call no pricing service (the caller checked)."""
    notes: list[str] = []
    for layer in candidates:
        if layer.pricing is not None and layer.kind == "rules":
            quote = _rules_layer(layer, context, notes)
            if quote is not None:
                return quote
    return _no_price(notes)


def _rules_layer(layer: Layer, context: Mapping[str, Any], notes: list[str]) -> Quote | None:
    """The rules layer's price, or None (its note, if any, added to `notes`)."""
    assert layer.pricing is not None
    found, note = rules_price(layer.pricing, context)
    if note:
        notes.append(f"{layer.name}: {note}")
    if found is None:
        return None
    price, index = found
    audit = PriceAudit(layer=layer.name, amount=price, rule_index=index)
    return _with_note(Quote(price, audit), "; ".join(notes))


def _no_price(notes: list[str]) -> Quote:
    return Quote(ZERO, PriceAudit(layer="none", amount=ZERO, note="; ".join(notes)))


def _with_note(quote: Quote, note: str) -> Quote:
    if not note:
        return quote
    joined = "; ".join(filter(None, (quote.audit.note, note)))
    return Quote(quote.price, dataclasses.replace(quote.audit, note=joined))
