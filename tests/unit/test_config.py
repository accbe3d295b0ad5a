"""The configuration schema and `leadflow check` problems (SPEC section 3)."""

from pathlib import Path

import pytest

from leadflow.cli import main
from leadflow.config import ConfigError, load_config, parse_config
from tests.unit.helpers_config import BASE

EXAMPLES = Path(__file__).parents[2] / "examples"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env or {})
    return [str(problem) for problem in info.value.problems]


def test_bundled_examples_are_valid() -> None:
    for path in EXAMPLES.glob("*.yaml"):
        load_config(path, env={})


def test_defaults_fill_what_the_spec_leaves_optional() -> None:
    config = parse_config(BASE, {})
    stage = config.flows[0].stages[0]
    assert (stage.strategy, stage.sell, stage.exclusive, stage.deadline_ms) == (
        "priority",
        1,
        False,
        1000,
    )
    delivery = config.buyers[0].delivery
    assert delivery is not None and delivery.type == "http"
    assert (delivery.method, delivery.format, delivery.timeout_ms) == ("POST", "json", 10000)
    assert config.account.time_zone == "UTC"


def test_unknown_buyer_is_reported_with_its_path() -> None:
    text = BASE.replace("steps: [{buyer: acme}]", "steps: [{buyer: acme}, {buyer: acme2}]")
    assert problems(text) == [
        "flows[0].stages[0].steps[1].buyer: unknown buyer 'acme2' (did you mean 'acme'?)"
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = BASE.replace("source: vendor}", "source: nobody}").replace(
        "{buyer: acme}", "{buyer: zed}"
    )
    assert problems(text) == [
        "flows[0].sources[0].source: unknown source 'nobody'",
        "flows[0].stages[0].steps[0].buyer: unknown buyer 'zed'",
    ]


def test_unknown_keys_are_errors_not_ignored() -> None:
    text = BASE.replace("name: Main", "name: Main").replace(
        "- name: main", "- name: main\n        strategi: priority"
    )
    assert problems(text) == [
        "flows[0].stages[0].strategi: unknown key 'strategi' (did you mean 'strategy'?)"
    ]


def test_missing_required_key_names_its_path() -> None:
    assert problems(BASE.replace(", api_key: k", "")) == ["sources[0].api_key: Field required"]


def test_ids_must_match_the_id_pattern() -> None:
    assert problems(
        BASE.replace("id: vendor", "id: Vendor!").replace("source: vendor", "source: Vendor!")
    )[0].startswith("sources[0].id: String should match pattern")


def test_environment_variables_are_substituted() -> None:
    config = parse_config(BASE.replace("api_key: k", "api_key: '${KEY}'"), {"KEY": "secret"})
    assert config.sources[0].api_key == "secret"


def test_environment_default_is_used_when_unset() -> None:
    config = parse_config(BASE.replace("api_key: k", "api_key: '${KEY:-fallback}'"), {})
    assert config.sources[0].api_key == "fallback"


def test_unset_environment_variable_is_a_problem() -> None:
    assert problems(BASE.replace("api_key: k", "api_key: '${KEY}'")) == [
        "sources[0].api_key: environment variable KEY is not set"
    ]


def test_operator_that_does_not_fit_the_field_type_is_refused() -> None:
    text = BASE.replace(
        "    sources: [{source: vendor}]",
        "    acceptance: [{lhv: phone_1, op: is within, rhv: {postal_code: '90210', miles: 5}}]\n"
        "    sources: [{source: vendor}]",
    )
    [problem] = problems(text)
    assert problem.startswith(
        "flows[0].acceptance.rules[0].op: operator 'is within' does not apply"
    )


def test_unknown_operator_is_refused_with_its_path() -> None:
    text = BASE.replace(
        "    sources: [{source: vendor}]",
        "    acceptance: [{lhv: state, op: is kinda like, rhv: CA}]\n    sources: [{source: vendor}]",
    )
    [problem] = problems(text)
    assert problem.startswith("flows[0].acceptance.rules[0]")


def test_money_outside_range_or_finer_than_cents_is_refused() -> None:
    text = BASE.replace(
        "name: Acme\n", "name: Acme\n    pricing: {prices: [{amount: 1.005}, {amount: -1}]}\n"
    )
    assert problems(text) == [
        "buyers[0].pricing.prices[0].amount: 1.005 has more precision than cents",
        "buyers[0].pricing.prices[1].amount: -1 is outside 0 to 1,000,000",
    ]


def test_every_routing_strategy_is_accepted() -> None:
    for strategy in ("round_robin", "weighted", "highest_price", "auction", "performance"):
        text = BASE.replace("- name: main", f"- name: main\n        strategy: {strategy}")
        assert parse_config(text, {}).flows[0].stages[0].strategy == strategy


def test_bad_hours_range_is_refused() -> None:
    text = BASE.replace("name: Acme\n", "name: Acme\n    hours: {monday: ['17:00-09:00']}\n")
    assert (
        problems(text)[0]
        == "buyers[0].hours.monday: Value error, '17:00-09:00' is not a range such as 09:00-17:00".replace(
            "Value error, ", ""
        )
    )


def test_unknown_time_zone_is_refused() -> None:
    text = BASE.replace("account: {name: Test}", "account: {name: Test, time_zone: Mars/Olympus}")
    assert problems(text) == ["account.time_zone: unknown time zone 'Mars/Olympus'"]


def test_webhook_secret_with_a_broken_whsec_value_is_refused() -> None:
    text = BASE.replace(
        'url: "http://127.0.0.1:9/leads"}',
        'url: "http://127.0.0.1:9/leads", signing_secret: "whsec_!!"}',
    )
    assert problems(text) == [
        "buyers[0].delivery.signing_secret: a whsec_ secret must be base64 after the prefix"
    ]


def test_operators_are_checked_whatever_their_case() -> None:
    text = BASE.replace(
        "    sources: [{source: vendor}]",
        "    acceptance: [{lhv: state, op: Is Equal To, rhv: CA}]\n    sources: [{source: vendor}]",
    )
    assert parse_config(text, {}).flows[0].acceptance is not None


def test_check_command_prints_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("{buyer: acme}", "{buyer: acme2}"))
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    assert info.value.code == 1
    assert "flows[0].stages[0].steps[0].buyer: unknown buyer 'acme2'" in capsys.readouterr().err


def test_check_command_accepts_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(BASE)
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    assert info.value.code == 0
    assert "ok (1 flows, 1 sources, 1 buyers)" in capsys.readouterr().out


def test_broken_amount_expression_is_refused_with_its_path() -> None:
    text = BASE.replace(
        "name: Acme\n", "name: Acme\n    pricing: {prices: [{amount: 'purchase_price * (1.4'}]}\n"
    )
    [problem] = problems(text)
    assert problem.startswith("buyers[0].pricing.prices[0].amount: invalid expression")


def test_amount_expression_may_call_only_min_max_and_round() -> None:
    text = BASE.replace(
        "name: Acme\n", "name: Acme\n    pricing: {prices: [{amount: 'open(1)'}]}\n"
    )
    assert problems(text) == [
        "buyers[0].pricing.prices[0].amount: invalid expression 'open(1)': only min, max and round"
    ]


def test_override_outside_source_pricing_is_refused() -> None:
    text = BASE.replace("name: Acme\n", "name: Acme\n    pricing: {override: true}\n")
    assert problems(text) == [
        "buyers[0].pricing.override: override applies to a flow's source pricing only"
    ]


def test_a_step_is_found_by_flow_stage_and_index() -> None:
    config = parse_config(BASE, {})
    assert config.step("auto", 0, 0) is config.flows[0].stages[0].steps[0]


@pytest.mark.parametrize(
    ("flow_id", "stage_index", "step_index", "missing"),
    [
        ("nope", 0, 0, "unknown flow 'nope'"),
        ("auto", 1, 0, "flow 'auto' has no stage 1"),
        ("auto", -1, 0, "flow 'auto' has no stage -1"),
        ("auto", 0, 1, "stage 0 of flow 'auto' has no step 1"),
    ],
)
def test_a_missing_step_names_what_is_missing(
    flow_id: str, stage_index: int, step_index: int, missing: str
) -> None:
    with pytest.raises(LookupError, match=missing):
        parse_config(BASE, {}).step(flow_id, stage_index, step_index)
