"""Stage screening (SPEC 7.1): criteria, territory, hours and admission hours, with reasons."""

from datetime import UTC, datetime
from decimal import Decimal

from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData
from routing_service.routing import RoutingPlan, admission_hours, lead_claims, screen, step_claims
from routing_service.strategies import by_priority

CONFIG = """
account: {name: Test, time_zone: America/Chicago}
sources: [{id: vendor, name: Vendor, api_key: k}, {id: night, name: Night, api_key: k2}]
buyers:
  - {id: a, name: A, delivery: {type: http, url: "http://127.0.0.1:9/"}}
  - id: b
    name: B
    criteria: [{lhv: state, op: is included in, rhv: [CA, NV], reason: California or Nevada}]
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - {id: c, name: C, delivery: {type: http, url: "http://127.0.0.1:9/"}}
  - id: west
    name: West
    territory: {states: [Nevada], postal_codes: ["900*", "94105"], within: {postal_code: "10001", miles: 10}}
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - id: office
    name: Office
    time_zone: America/New_York
    hours: {monday: ["09:00-17:00"], tuesday: ["09:00-17:00"]}
    caps: [{max_leads: 5, per: day}]
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - id: named
    name: Named
    criteria: [{lhv: buyer.id, op: is equal to, rhv: named}]
    delivery: {type: http, url: "http://127.0.0.1:9/"}
flows:
  - id: auto
    name: Auto
    hours: {monday: ["00:00-24:00"], tuesday: ["00:00-24:00"]}
    caps:
      - {max_leads: 100, per: day}
      - {max_amount: 50, per: week, rule_set: [{lhv: state, op: is equal to, rhv: CA}]}
    sources:
      - {source: vendor}
      - {source: night, hours: {monday: ["22:00-24:00"]}}
    stages:
      - name: main
        steps:
          - {buyer: a, priority: 3}
          - {buyer: b, priority: 1}
          - {buyer: c, priority: 3, criteria: [{lhv: email, op: is not blank}]}
      - name: regional
        steps:
          - {buyer: west}
          - {buyer: office, caps: [{max_amount: 100, per: month, time_zone: UTC}]}
          - {buyer: named}
"""
MONDAY_NOON_CHICAGO = datetime(2026, 11, 16, 18, 0, tzinfo=UTC)  # 12:00 CST, 13:00 EST
SUNDAY = datetime(2026, 11, 15, 18, 0, tzinfo=UTC)


def plan() -> RoutingPlan:
    return RoutingPlan(config())


def config() -> Config:
    return parse_config(CONFIG, {})


def lead(when: datetime = MONDAY_NOON_CHICAGO, source: str = "vendor", **fields: str) -> LeadData:
    return LeadData("L1", "auto", source, parse_lead(fields), when)


def names(steps: list) -> list[str]:  # type: ignore[type-arg]
    return [step.buyer_id for step in steps]


def test_priority_orders_ascending_then_by_position() -> None:
    routing = plan()
    result = screen(routing.stage("auto", 0), routing.facts(lead(state="CA", email="x@y.com")), ())
    assert names(by_priority(result.eligible)) == ["b", "a", "c"]


def test_buyer_criteria_failure_skips_with_the_rule_reason() -> None:
    routing = plan()
    result = screen(routing.stage("auto", 0), routing.facts(lead(state="TX", email="x@y.com")), ())
    assert names(result.eligible) == ["a", "c"]
    assert [(s[0].buyer_id, s[1]) for s in result.skipped] == [("b", "California or Nevada")]


def test_step_criteria_failure_skips_with_a_generated_reason() -> None:
    routing = plan()
    [(step, reason, _)] = screen(
        routing.stage("auto", 0), routing.facts(lead(state="CA")), ()
    ).skipped
    assert step.buyer_id == "c"
    assert "email" in reason


def test_buyer_that_already_bought_is_not_offered_again() -> None:
    routing = plan()
    result = screen(routing.stage("auto", 0), routing.facts(lead(state="CA", email="x@y")), {"b"})
    assert names(result.eligible) == ["a", "c"]
    assert result.skipped[0][1] == "Already sold to this buyer"


def test_territory_matches_any_of_states_prefixes_exact_codes_and_radius() -> None:
    routing = plan()
    stage = routing.stage("auto", 1)
    inside = [
        {"state": "NV"},
        {"state": "CA", "postal_code": "90012"},
        {"state": "CA", "postal_code": "94105-1234"},
        {"state": "NY", "postal_code": "10011"},  # Chelsea: about 1 mile from 10001
    ]
    outside = [{"state": "CA", "postal_code": "94016"}, {"state": "NY", "postal_code": "14201"}, {}]
    for fields in inside:
        result = screen(stage, routing.facts(lead(**fields)), ())
        assert "west" in names(result.eligible), fields
    for fields in outside:
        result = screen(stage, routing.facts(lead(**fields)), ())
        assert ("west", "Outside territory") in [(s[0].buyer_id, s[1]) for s in result.skipped]


def test_buyer_hours_are_read_in_the_buyer_zone() -> None:
    routing = plan()
    stage = routing.stage("auto", 1)
    # 16:30 in Chicago is 17:30 in New York: the office has closed.
    late = datetime(2026, 11, 16, 22, 30, tzinfo=UTC)
    result = screen(stage, routing.facts(lead(late, state="NV")), ())
    assert ("office", "Outside hours of operation") in [
        (s[0].buyer_id, s[1]) for s in result.skipped
    ]
    result = screen(stage, routing.facts(lead(MONDAY_NOON_CHICAGO, state="NV")), ())
    assert "office" in names(result.eligible)


def test_buyer_variable_is_the_step_buyer_in_criteria() -> None:
    routing = plan()
    result = screen(routing.stage("auto", 1), routing.facts(lead(state="NV")), ())
    assert "named" in names(result.eligible)


def test_a_closed_flow_or_source_gives_the_hours_reason() -> None:
    routing = plan()
    flow = routing.flow("auto")
    assert admission_hours(flow, routing.facts(lead())) is None
    assert admission_hours(flow, routing.facts(lead(SUNDAY))) == "Outside hours of operation"
    # The flow is open on Monday noon but the night source is not.
    assert admission_hours(flow, routing.facts(lead(source="night"))) == (
        "Outside hours of operation"
    )


def test_cap_rule_sets_decide_which_leads_count() -> None:
    routing = plan()
    flow = routing.flow("auto")
    ca = lead_claims(flow, routing.facts(lead(state="CA")), Decimal("12.50"))
    tx = lead_claims(flow, routing.facts(lead(state="TX")), Decimal("12.50"))
    assert [c.rule.key for c in ca] == ["flow:auto:0", "flow:auto:1"]
    assert [c.rule.key for c in tx] == ["flow:auto:0"]
    assert ca[1].micros == 12_500_000


def test_step_claims_carry_buyer_and_step_caps_with_their_own_zones() -> None:
    routing = plan()
    office = routing.step("auto", 1, 1)
    claims = step_claims(office, routing.facts(lead(state="NV")), Decimal(20))
    assert [c.rule.key for c in claims] == ["buyer:office:0", "step:auto:1:1:0"]
    # The buyer's day starts at midnight in New York, the step's month at midnight UTC.
    assert claims[0].window == datetime(2026, 11, 16, 5, 0, tzinfo=UTC)
    assert claims[1].window == datetime(2026, 11, 1, tzinfo=UTC)
