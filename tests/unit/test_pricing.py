"""Purchase and sale price layers (SPEC section 6), as far as this version runs them."""

from datetime import UTC, datetime
from decimal import Decimal

from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData
from pricing_service.pricing import purchase_quote, sale_quote

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


def lead(**fields: str) -> LeadData:
    return LeadData(
        "L1", "auto", "vendor", parse_lead(fields, {"lead_quality": "string"}), datetime.now(UTC)
    )


def test_last_matching_price_wins() -> None:
    quote = purchase_quote(config(flow=WORKED_EXAMPLE), lead(state="CA", lead_quality="premium"))
    assert (quote.price, quote.audit.layer, quote.audit.rule_index) == (
        Decimal("25.00"),
        "flow_rules",
        3,
    )


def test_later_prices_that_do_not_match_are_passed_over() -> None:
    quote = purchase_quote(config(flow=WORKED_EXAMPLE), lead(state="CA", lead_quality="standard"))
    assert (quote.price, quote.audit.rule_index) == (Decimal("20.00"), 2)


def test_price_without_rule_set_always_matches() -> None:
    quote = purchase_quote(config(flow=WORKED_EXAMPLE), lead(state="TX"))
    assert (quote.price, quote.audit.rule_index) == (Decimal("10.00"), 0)


def test_source_rules_win_over_flow_rules() -> None:
    quote = purchase_quote(
        config(flow="{prices: [{amount: 10}]}", source="{prices: [{amount: 7}]}"), lead()
    )
    assert (quote.price, quote.audit.layer) == (Decimal("7.00"), "source_rules")


def test_source_rules_with_no_match_fall_through_to_flow_rules() -> None:
    source = "{prices: [{amount: 7, rule_set: [{lhv: state, op: is equal to, rhv: NV}]}]}"
    quote = purchase_quote(config(flow="{prices: [{amount: 10}]}", source=source), lead(state="CA"))
    assert (quote.price, quote.audit.layer) == (Decimal("10.00"), "flow_rules")


def test_no_layer_means_zero_and_layer_none() -> None:
    quote = purchase_quote(config(), lead())
    assert (quote.price, quote.audit.layer) == (Decimal("0.00"), "none")


def test_step_rules_win_over_buyer_rules_for_sale_price() -> None:
    quote = sale_quote(
        config(buyer="{prices: [{amount: 30}]}", step="{prices: [{amount: 35}]}"),
        lead(),
        0,
        0,
        Decimal(10),
    )
    assert (quote.price, quote.audit.layer) == (Decimal("35.00"), "step_rules")


def test_buyer_rules_price_a_step_without_pricing() -> None:
    quote = sale_quote(config(buyer="{prices: [{amount: 30}]}"), lead(), 0, 0, Decimal(10))
    assert (quote.price, quote.audit.layer) == (Decimal("30.00"), "buyer_rules")


def test_sale_rules_can_read_the_purchase_price() -> None:
    step = "{prices: [{amount: 40}, {amount: 50, rule_set: [{lhv: purchase_price, op: is greater than, rhv: 20}]}]}"
    assert sale_quote(config(step=step), lead(), 0, 0, Decimal(25)).price == Decimal("50.00")
    assert sale_quote(config(step=step), lead(), 0, 0, Decimal(15)).price == Decimal("40.00")
