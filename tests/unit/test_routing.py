"""Stage ranking: eligibility by criteria and the priority strategy (SPEC 7.1)."""

from datetime import UTC, datetime

from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData
from routing_service.routing import rank_stage

CONFIG = """
account: {name: Test}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers:
  - {id: a, name: A, delivery: {type: http, url: "http://127.0.0.1:9/"}}
  - id: b
    name: B
    criteria: [{lhv: state, op: is included in, rhv: [CA, NV], reason: Outside territory}]
    delivery: {type: http, url: "http://127.0.0.1:9/"}
  - {id: c, name: C, delivery: {type: http, url: "http://127.0.0.1:9/"}}
flows:
  - id: auto
    name: Auto
    sources: [{source: vendor}]
    stages:
      - name: main
        steps:
          - {buyer: a, priority: 3}
          - {buyer: b, priority: 1}
          - {buyer: c, priority: 3, criteria: [{lhv: email, op: is not blank}]}
"""


def config() -> Config:
    return parse_config(CONFIG, {})


def lead(**fields: str) -> LeadData:
    return LeadData("L1", "auto", "vendor", parse_lead(fields), datetime.now(UTC))


def test_priority_orders_ascending_then_by_position() -> None:
    ranking = rank_stage(config(), lead(state="CA", email="x@example.com"), 0, ())
    assert [c.buyer_id for c in ranking.candidates] == ["b", "a", "c"]


def test_buyer_criteria_failure_skips_with_the_rule_reason() -> None:
    ranking = rank_stage(config(), lead(state="TX", email="x@example.com"), 0, ())
    assert [c.buyer_id for c in ranking.candidates] == ["a", "c"]
    assert [(s.buyer_id, s.reason) for s in ranking.skipped] == [("b", "Outside territory")]


def test_step_criteria_failure_skips_with_a_generated_reason() -> None:
    ranking = rank_stage(config(), lead(state="CA"), 0, ())
    [skipped] = ranking.skipped
    assert skipped.buyer_id == "c"
    assert "email" in skipped.reason


def test_buyer_that_already_bought_is_not_offered_again() -> None:
    ranking = rank_stage(config(), lead(state="CA", email="x@example.com"), 0, {"b"})
    assert [c.buyer_id for c in ranking.candidates] == ["a", "c"]
    assert ranking.skipped[0].reason == "Already sold to this buyer"
