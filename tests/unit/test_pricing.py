"""Purchase and sale price layers (SPEC section 6), as far as this version runs them."""

from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest

from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData
from pricing_service.pricing import Pricer, Quote
from pricing_service.services import PricingServiceClient

CONFIG = """
account: {{name: Test}}
sources:
  - {{id: vendor, name: Vendor, api_key: k}}
buyers:
  - id: acme
    name: Acme
    pricing: {buyer}
    delivery: {{type: http, url: "http://127.0.0.1:9/"}}
flows:
  - id: auto
    name: Auto
    fields: {{lead_quality: string}}
    pricing: {flow}
    sources: [{{source: vendor, pricing: {source}}}]
    stages:
      - name: main
        steps: [{{buyer: acme, pricing: {step}}}]
"""

# The worked example of the pricing document: base $10, CA $15, CA+auto $20, premium $25.
WORKED_EXAMPLE = """{prices: [
  {amount: 10},
  {amount: 15, rule_set: [{lhv: state, op: is equal to, rhv: CA}]},
  {amount: 20, rule_set: [{lhv: state, op: is equal to, rhv: CA}, {lhv: flow.id, op: is equal to, rhv: auto}]},
  {amount: 25, rule_set: [{lhv: lead_quality, op: is equal to, rhv: premium}]}]}"""


def config(
    flow: str = "null", source: str = "null", buyer: str = "null", step: str = "null"
) -> Config:
    return parse_config(CONFIG.format(flow=flow, source=source, buyer=buyer, step=step), {})


async def purchase_quote(config: Config, lead: LeadData, override: str = "") -> Quote:
    async with aiohttp.ClientSession() as session:
        return await Pricer(config, PricingServiceClient(session)).purchase(lead, override)


async def sale_quote(
    config: Config, lead: LeadData, stage: int, step: int, purchase_price: Decimal
) -> Quote:
    async with aiohttp.ClientSession() as session:
        return await Pricer(config, PricingServiceClient(session)).sale(
            lead, stage, step, purchase_price
        )


def lead(**fields: str) -> LeadData:
    return LeadData(
        "L1", "auto", "vendor", parse_lead(fields, {"lead_quality": "string"}), datetime.now(UTC)
    )


async def test_last_matching_price_wins() -> None:
    quote = await purchase_quote(
        config(flow=WORKED_EXAMPLE), lead(state="CA", lead_quality="premium")
    )
    assert (quote.price, quote.audit.layer, quote.audit.rule_index) == (
        Decimal("25.00"),
        "flow_rules",
        3,
    )


async def test_later_prices_that_do_not_match_are_passed_over() -> None:
    quote = await purchase_quote(
        config(flow=WORKED_EXAMPLE), lead(state="CA", lead_quality="standard")
    )
    assert (quote.price, quote.audit.rule_index) == (Decimal("20.00"), 2)


async def test_price_without_rule_set_always_matches() -> None:
    quote = await purchase_quote(config(flow=WORKED_EXAMPLE), lead(state="TX"))
    assert (quote.price, quote.audit.rule_index) == (Decimal("10.00"), 0)


async def test_source_rules_win_over_flow_rules() -> None:
    quote = await purchase_quote(
        config(flow="{prices: [{amount: 10}]}", source="{prices: [{amount: 7}]}"), lead()
    )
    assert (quote.price, quote.audit.layer) == (Decimal("7.00"), "source_rules")


async def test_source_rules_with_no_match_fall_through_to_flow_rules() -> None:
    source = "{prices: [{amount: 7, rule_set: [{lhv: state, op: is equal to, rhv: NV}]}]}"
    quote = await purchase_quote(
        config(flow="{prices: [{amount: 10}]}", source=source), lead(state="CA")
    )
    assert (quote.price, quote.audit.layer) == (Decimal("10.00"), "flow_rules")


async def test_no_layer_means_zero_and_layer_none() -> None:
    quote = await purchase_quote(config(), lead())
    assert (quote.price, quote.audit.layer) == (Decimal("0.00"), "none")


async def test_step_rules_win_over_buyer_rules_for_sale_price() -> None:
    quote = await sale_quote(
        config(buyer="{prices: [{amount: 30}]}", step="{prices: [{amount: 35}]}"),
        lead(),
        0,
        0,
        Decimal(10),
    )
    assert (quote.price, quote.audit.layer) == (Decimal("35.00"), "step_rules")


async def test_buyer_rules_price_a_step_without_pricing() -> None:
    quote = await sale_quote(config(buyer="{prices: [{amount: 30}]}"), lead(), 0, 0, Decimal(10))
    assert (quote.price, quote.audit.layer) == (Decimal("30.00"), "buyer_rules")


async def test_sale_rules_can_read_the_purchase_price() -> None:
    step = "{prices: [{amount: 40}, {amount: 50, rule_set: [{lhv: purchase_price, op: is greater than, rhv: 20}]}]}"
    assert (await sale_quote(config(step=step), lead(), 0, 0, Decimal(25))).price == Decimal(
        "50.00"
    )
    assert (await sale_quote(config(step=step), lead(), 0, 0, Decimal(15))).price == Decimal(
        "40.00"
    )


async def test_cost_plus_expression_prices_the_sale_from_the_purchase_price() -> None:
    step = '{prices: [{amount: "purchase_price * 1.4"}]}'
    quote = await sale_quote(config(step=step), lead(), 0, 0, Decimal("12.10"))
    assert (quote.price, quote.audit.layer) == (Decimal("16.94"), "step_rules")


async def test_expression_reading_a_custom_number_field() -> None:
    flow = '{prices: [{amount: "round(min(loan_amount / 10000, 40), 2)"}]}'
    text = CONFIG.format(flow=flow, source="null", buyer="null", step="null").replace(
        "{lead_quality: string}", "{lead_quality: string, loan_amount: number}"
    )
    data = parse_lead({"loan_amount": "$125,000"}, {"loan_amount": "number"})
    subject = LeadData("L1", "auto", "vendor", data, datetime.now(UTC))
    assert (await purchase_quote(parse_config(text, {}), subject)).price == Decimal("12.50")


async def test_expression_that_cannot_be_evaluated_falls_back_to_an_earlier_match() -> None:
    flow = '{prices: [{amount: 10}, {amount: "purchase_price / 0"}]}'
    quote = await purchase_quote(config(flow=flow), lead())
    assert (quote.price, quote.audit.rule_index) == (Decimal("10.00"), 0)
    assert "price 1 skipped" in quote.audit.note


async def test_override_price_wins_where_source_pricing_allows_it() -> None:
    source = "{override: true, prices: [{amount: 7}]}"
    quote = await purchase_quote(config(source=source), lead(), "12.5")
    assert (quote.price, quote.audit.layer) == (Decimal("12.50"), "override")


@pytest.mark.parametrize("text", ["abc", "-1", "1000000.01", "NaN"])
async def test_invalid_override_price_is_ignored_not_trusted(text: str) -> None:
    source = "{override: true, prices: [{amount: 7}]}"
    quote = await purchase_quote(config(source=source), lead(), text)
    assert (quote.price, quote.audit.layer) == (Decimal("7.00"), "source_rules")
    assert "ignored" in quote.audit.note


async def test_override_price_is_ignored_where_override_is_off() -> None:
    quote = await purchase_quote(config(source="{prices: [{amount: 7}]}"), lead(), "99")
    assert quote.price == Decimal("7.00")
    assert "override is off" in quote.audit.note


QUOTED_WITH_PURCHASE = """
account: {name: Test}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers:
  - id: acme
    name: Acme
    pricing: {prices: [{amount: 20}, {amount: 30, rule_set: [{lhv: buyer.id, op: is equal to, rhv: acme}]}]}
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - id: bolt
    name: Bolt
    pricing: {prices: [{amount: 20}, {amount: 30, rule_set: [{lhv: buyer.id, op: is equal to, rhv: acme}]}]}
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - {id: bare, name: Bare, delivery: {type: http, url: "http://127.0.0.1:9/"}}
flows:
  - id: auto
    name: Auto
    fields: {lead_quality: string}
    sources: [{source: vendor}]
    stages:
      - name: first
        steps:
          - {buyer: bolt}
          - {buyer: bare}
          - {buyer: acme, pricing: {service: {url: "http://127.0.0.1:9/", fallback_price: 1}}}
      - name: second
        steps: [{buyer: acme}, {buyer: bare, pricing: {prices: [{amount: "purchase_price * 2"}]}}]
"""


async def test_rules_sales_quote_every_rules_priced_step_as_sale_would() -> None:
    """Quoted with the purchase price for routing: one rule context for the lead, its `buyer`
    set per step; steps with a pricing service or no sale pricing are left out."""
    config = parse_config(QUOTED_WITH_PURCHASE, {})
    async with aiohttp.ClientSession() as session:
        pricer = Pricer(config, PricingServiceClient(session))
        quotes = pricer.rules_sales(lead(), Decimal("7.5"))
        assert [(s, k, q.price) for s, k, q in quotes] == [
            (0, 0, Decimal(20)),
            (1, 0, Decimal(30)),
            (1, 1, Decimal(15)),
        ]
        for s, k, quote in quotes:
            assert quote == await pricer.sale(lead(), s, k, Decimal("7.5"))
