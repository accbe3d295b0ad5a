"""`leadflow check`, `leadflow schema`, `--version` and the options' help (SPEC sections 3 and
10, issue 16 acceptance 5): every problem as `FILE:LINE:COL: PATH: message`, with the nearest
valid key, field, id or currency where the written one looks like a typo."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from leadflow.cli import config_schema, main, parser
from leadflow.config import parse_config
from leadflow.config_locate import path_parts

GOOD = """\
account: {name: Test, currency: EUR}
sources:
  - {id: vendor, name: Vendor, api_key: k}
buyers:
  - id: acme
    name: Acme
    criteria: [{lhv: loan_amount, op: is greater than, rhv: 1000}]
    delivery: {type: http, url: "http://127.0.0.1:9/leads"}
flows:
  - id: auto
    name: Auto
    fields: {loan_amount: number}
    acceptance:
      - lhv: state
        op: is included in
        rhv: [CA, TX]
      - {lhv: vehicle_year, op: is not blank}
    sources: [{source: vendor}]
    stages:
      - name: main
        steps: [{buyer: acme}]
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "leadflow.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    lines = capsys.readouterr().err.splitlines()
    prefix = f"{path}:"
    assert all(line.startswith(prefix) for line in lines)
    return int(info.value.code or 0), [line.removeprefix(prefix) for line in lines[:-1]]


def test_a_good_file_passes_with_undeclared_fields_near_no_known_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # vehicle_year is near no field: a vendor may send fields the flow does not declare.
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    assert info.value.code == 0


def test_a_typod_key_and_a_typod_field_are_both_printed_with_line_column_and_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("      - lhv: state\n", "      - lhv: stat\n").replace(
        "      - name: main\n", "      - name: main\n        stratgy: priority\n"
    )
    code, lines = check(tmp_path, text, capsys)
    assert code == 1
    assert lines == [
        "14:14: flows[0].acceptance.rules[0].lhv: unknown field 'stat' (did you mean 'state'?)",
        "21:9: flows[0].stages[0].stratgy: unknown key 'stratgy' (did you mean 'strategy'?)",
    ]


def test_a_typod_id_points_at_its_value_and_names_the_nearest_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("{buyer: acme}", "{buyer: acme2}").replace(
        "{source: vendor}", "{source: vendr}"
    )
    _, lines = check(tmp_path, text, capsys)
    assert lines == [
        "18:24: flows[0].sources[0].source: unknown source 'vendr' (did you mean 'vendor'?)",
        "21:25: flows[0].stages[0].steps[0].buyer: unknown buyer 'acme2' (did you mean 'acme'?)",
    ]


def test_a_field_typo_under_lead_keeps_the_prefix_and_custom_fields_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("lhv: vehicle_year", "lhv: lead.loan_amout")
    _, lines = check(tmp_path, text, capsys)
    assert lines == [
        "17:15: flows[0].acceptance.rules[1].lhv: unknown field 'lead.loan_amout' "
        "(did you mean 'lead.loan_amount'?)"
    ]


def test_unknown_keys_inside_a_delivery_and_a_bad_tag_suggest_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace('{type: http, url: "http://127.0.0.1:9/leads"}', "{type: http, ulr: x}")
    _, lines = check(tmp_path, text, capsys)
    assert "8:15: buyers[0].delivery.url: Field required" in lines
    assert "8:28: buyers[0].delivery.ulr: unknown key 'ulr' (did you mean 'url'?)" in lines
    text = GOOD.replace("{type: http,", "{type: htp,")
    _, lines = check(tmp_path, text, capsys)
    assert len(lines) == 1
    assert lines[0].startswith("8:15: buyers[0].delivery: Input tag 'htp'")
    assert lines[0].endswith("(did you mean 'http'?)")


def test_a_literal_typo_suggests_the_nearest_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace(
        "      - name: main\n", "      - name: main\n        strategy: roundrobin\n"
    )
    _, [line] = check(tmp_path, text, capsys)
    assert line.startswith("21:19: flows[0].stages[0].strategy: Input should be")
    assert line.endswith("(did you mean 'round_robin'?)")


def test_currency_codes_are_iso_4217(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, lines = check(tmp_path, GOOD.replace("currency: EUR", "currency: USX"), capsys)
    assert lines == [
        "1:33: account.currency: unknown ISO 4217 currency code 'USX' (did you mean 'USD'?)"
    ]
    assert parse_config(GOOD.replace("currency: EUR", "currency: JPY"), {}).account.currency == (
        "JPY"
    )


def test_a_yaml_syntax_error_has_its_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, [line] = check(tmp_path, GOOD.replace("name: Auto", "name: [Auto"), capsys)
    assert line == (
        "12:11: not valid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 11, column 11)"
    )


def test_a_missing_key_is_placed_at_its_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines = check(tmp_path, GOOD.replace("    name: Acme\n", ""), capsys)
    assert lines == ["5:5: buyers[0].name: Field required"]


def test_paths_split_into_keys_and_indexes() -> None:
    assert path_parts("flows[0].stages[12].steps[2].buyer") == [
        "flows",
        0,
        "stages",
        12,
        "steps",
        2,
        "buyer",
    ]


def test_schema_is_a_json_schema_the_examples_and_plain_rule_lists_satisfy() -> None:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(GOOD))  # its rule sets are plain lists
    bad = yaml.safe_load(GOOD.replace("name: main", "name: main\n        stratgy: priority"))
    assert not validator.is_valid(bad)


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["schema"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["title"] == "leadflow configuration"


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("leadflow 0.")


@pytest.mark.parametrize("command", ["up", "report"])
def test_every_option_has_help_with_its_default(command: str) -> None:
    subparsers = next(
        action for action in parser()._actions if action.__class__.__name__ == "_SubParsersAction"
    )
    sub = subparsers.choices[command]  # type: ignore[attr-defined]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            if action.default is not None and not action.required:
                assert "default" in action.help, action.dest


def test_up_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "LEADFLOW_CONFIG" in text and "LEADFLOW_DATA_DIR" in text
    assert "(default: 8080)" in text


def test_a_bad_port_option_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["up", "--http-port", "http"])
    assert info.value.code == 2
    assert "'http' is not a port number" in capsys.readouterr().err


def test_an_operator_typo_suggests_the_operator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines = check(tmp_path, GOOD.replace("op: is included in", "op: is includd in"), capsys)
    assert lines == [
        "15:13: flows[0].acceptance.rules[0].op: unknown operator 'is includd in' "
        "(did you mean 'is included in'?)"
    ]


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("phone_1.vaild", "phone_1.valid"),
        ("lead.dob.aeg", "lead.dob.age"),
        ("lead.emial.domain", "lead.email.domain"),
        ("hour", None),
        ("submission.hour", None),
        ("source.id", None),
        ("lead.vehicle_year", None),
        ("email.is_free", None),
    ],
)
def test_field_and_component_typos_are_told_apart_from_real_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, meant: str | None
) -> None:
    text = GOOD.replace(
        "{lhv: vehicle_year, op: is not blank}", f"{{lhv: {written}, op: is blank}}"
    )
    code, lines = check(tmp_path, text, capsys)
    if meant is None:
        assert (code, lines) == (0, [])
    else:
        assert lines == [
            f"17:15: flows[0].acceptance.rules[1].lhv: unknown field {written!r} "
            f"(did you mean {meant!r}?)"
        ]


def test_a_bad_custom_field_type_does_not_turn_into_problems_of_its_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Setting the field aside would make opted_in a string, which `is true` does not apply to.
    text = GOOD.replace("{loan_amount: number}", "{loan_amount: number, opted_in: boolen}").replace(
        "lhv: vehicle_year, op: is not blank", "lhv: opted_in, op: is true"
    )
    _, [line] = check(tmp_path, text, capsys)
    assert line.startswith("12:45: flows[0].fields.opted_in: Input should be")
    assert line.endswith("(did you mean 'boolean'?)")
