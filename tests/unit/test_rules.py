"""Rules engine: every operator, rule sets, reasons, compile errors and operator checks."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow import geo
from leadflow.fields import parse_lead
from leadflow.rules import (
    ALLOWED_OPERATORS,
    OPERATORS,
    RuleError,
    RuleResult,
    compile_rule_set,
    operator_allowed,
)
from leadflow.variables import build_context
from tests.unit.helpers_config import BASE

TODAY = date(2024, 5, 15)
CUSTOM = {
    "credit_score": "number",
    "loan_amount": "number",
    "debt": "range",
    "open_debt": "range",
    "tcpa": "boolean",
    "homeowner": "boolean",
    "bad_flag": "boolean",
    "move_date": "date",
}
LEAD = parse_lead(
    {
        "first_name": "Ann",
        "last_name": "Shitake",  # a word that merely contains a bad word is not obscene
        "comments": "this is a fucking joke",
        "email": "Ann.Lee@Gmail.com",
        "phone_1": "(512) 555-1234",
        "phone_2": "555-1234",
        "state": "California",
        "city": "Beverly Hills",
        "postal_code": "90211",
        "dob": "1990-05-15",
        "gender": "F",
        "ip_address": "8.8.8.8",
        "credit_score": "720",
        "loan_amount": "$250,000",
        "debt": "10000-20000",
        "open_debt": "10+",
        "tcpa": "yes",
        "homeowner": "no",
        "bad_flag": "maybe",
        "move_date": "06/01/2024",
        "lead_quality": "123",
        "empty": "",
        "spaces": "   ",
        "tags": ["Solar", "roof"],
        "vehicle": {"make": "Ford"},
    },
    CUSTOM,
    today=TODAY,
)
CONTEXT = build_context(
    LEAD,
    flow={"id": "auto"},
    source={"id": "acme"},
    purchase_price=Decimal("12.50"),
    submission={"timestamp": "2024-05-15T10:00:00-05:00", "hour": 10, "day_of_week": "Wednesday"},
)


def passes(lhv: str, op: str, rhv: Any = None) -> bool:
    rule: dict[str, Any] = {"lhv": lhv, "op": op}
    if rhv is not None:
        rule["rhv"] = rhv
    return compile_rule_set([rule]).evaluate(CONTEXT).passed


OPERATOR_CASES = [
    # is equal to / is not equal to
    ("state", "is equal to", "ca", True),
    ("state", "is equal to", "California", True),
    ("state", "is equal to", "NV", False),
    ("first_name", "is equal to", "ANN", True),
    ("lead_quality", "is equal to", 123, True),
    ("credit_score", "is equal to", "720.0", True),
    ("loan_amount", "is equal to", "250,000", True),
    ("phone_1", "is equal to", "512-555-1234", True),
    ("email", "is equal to", "ann.lee@gmail.com", True),
    ("gender", "is equal to", "female", True),
    ("tcpa", "is equal to", "true", True),
    ("missing", "is equal to", "x", False),
    ("state", "is not equal to", "NV", True),
    ("state", "is not equal to", "ca", False),
    ("missing", "is not equal to", "x", True),
    # ordering
    ("credit_score", "is greater than", 700, True),
    ("credit_score", "is greater than", "720", False),
    ("credit_score", "is greater than or equal to", "720", True),
    ("credit_score", "is less than", 721, True),
    ("credit_score", "is less than or equal to", 719, False),
    ("lead_quality", "is greater than", 99, True),  # numeric, not "123" < "99"
    ("debt", "is greater than", 14999, True),  # avg 15000
    ("debt", "is less than", 15001, True),
    ("debt", "is greater than", 15000, False),
    ("open_debt", "is greater than or equal to", 10, True),  # open range by its minimum
    ("dob", "is less than", "2000-01-01", True),
    ("dob", "is greater than", "01/01/2000", False),
    ("dob", "is greater than or equal to", 34, True),  # a number against a dob is the age
    ("dob", "is greater than", 34, False),
    ("move_date", "is greater than", "2024-05-31", True),
    ("hour", "is greater than or equal to", 9, True),
    ("purchase_price", "is less than", "12.51", True),
    ("missing", "is less than", 5, False),
    ("first_name", "is greater than", 5, False),  # text is not comparable with a number
    ("first_name", "is less than", 5, False),
    ("first_name", "is not equal to", 5, True),
    ("last_name", "is greater than", "Mack", True),  # text against text: lexical order
    ("phone_2", "is equal to", "5551234", True),  # an invalid value compares by its digits
    ("missing", "is greater than", 5, False),
    # between
    ("credit_score", "is between", "700-720", True),
    ("credit_score", "is between", "720 - 800", True),
    ("credit_score", "is between", [700, 719], False),
    ("credit_score", "is between", {"min": 600, "max": 750}, True),
    ("debt", "is between", "15000-16000", True),
    ("hour", "is between", "9 to 17", True),
    ("dob", "is between", ["1990-01-01", "1990-12-31"], True),
    ("dob", "is between", "18-30", False),
    ("missing", "is between", "1-10", False),
    ("credit_score", "is not between", "721-800", True),
    ("credit_score", "is not between", "700-720", False),
    ("missing", "is not between", "1-10", True),
    # included in
    ("state", "is included in", "CA, NV", True),
    ("state", "is included in", ["nv", "ca"], True),
    ("state", "is included in", "TX,NV", False),
    ("state", "is included in", "California, Nevada", True),
    ("day_of_week", "is included in", "Saturday, Sunday", False),
    ("credit_score", "is included in", [700, 720], True),
    ("tags", "is included in", "solar,wind", True),
    ("missing", "is included in", "a,b", False),
    ("state", "is not included in", "TX, NV", True),
    ("state", "is not included in", "CA, NV", False),
    ("missing", "is not included in", "a,b", True),
    # includes
    ("email", "includes", "GMAIL", True),
    ("email", "includes", "yahoo", False),
    ("email", "includes", ["yahoo", "gmail"], True),
    ("phone_1", "includes", "555", True),
    ("tags", "includes", "solar", True),
    ("tags", "includes", "sol", False),  # a list lhv means membership
    ("missing", "includes", "x", False),
    ("email", "does not include", "yahoo", True),
    ("email", "does not include", "gmail", False),
    # patterns
    ("email", "matches pattern", r"@gmail\.com$", True),
    ("email", "matches pattern", r"/^ANN\./i", True),
    ("first_name", "matches pattern", "^b", False),
    ("postal_code", "matches pattern", r"^902\d\d$", True),
    ("first_name", "does not match pattern", "^b", True),
    ("first_name", "does not match pattern", "/n{2}/", False),
    # blank
    ("missing", "is blank", None, True),
    ("empty", "is blank", None, True),
    ("spaces", "is blank", None, True),
    ("first_name", "is blank", None, False),
    ("bad_flag", "is blank", None, False),  # invalid is not blank
    ("first_name", "is not blank", None, True),
    ("empty", "is not blank", None, False),
    # true / false
    ("tcpa", "is true", None, True),
    ("homeowner", "is true", None, False),
    ("homeowner", "is false", None, True),
    ("tcpa", "is false", None, False),
    ("bad_flag", "is true", None, False),
    ("bad_flag", "is false", None, False),
    ("missing", "is true", None, False),
    ("homeowner", "is not true", None, True),
    ("missing", "is not true", None, True),
    ("tcpa", "is not true", None, False),
    ("tcpa", "is not false", None, True),
    ("missing", "is not false", None, True),
    ("homeowner", "is not false", None, False),
    ("phone_1.valid", "is true", None, True),
    ("email.is_free", "is true", None, True),
    # format
    ("phone_1", "format is valid", None, True),
    ("phone_2", "format is valid", None, False),
    ("phone_2", "format is invalid", None, True),
    ("phone_1", "format is invalid", None, False),
    ("missing", "format is valid", None, False),
    ("missing", "format is invalid", None, True),
    ("bad_flag", "format is invalid", None, True),
    # obscene
    ("comments", "is obscene", None, True),
    ("last_name", "is obscene", None, False),
    ("first_name", "is obscene", None, False),
    ("missing", "is obscene", None, False),
    ("first_name", "is not obscene", None, True),
    ("comments", "is not obscene", None, False),
    # within
    ("postal_code", "is within", {"postal_code": "90210", "miles": 5}, True),
    ("postal_code", "is within", {"postal_code": "10001", "miles": 25}, False),
    ("postal_code", "is within", {"postal_code": "10001", "miles": 3000}, True),
    ("missing", "is within", {"postal_code": "90210", "miles": 5}, False),
    ("city", "is within", {"postal_code": "90210", "miles": 5}, False),
    # nested values and aliases
    ("vehicle.make", "is equal to", "ford", True),
    ("source.id", "is equal to", "ACME", True),
]


@pytest.mark.parametrize(("lhv", "op", "rhv", "expected"), OPERATOR_CASES)
def test_operator_semantics(lhv: str, op: str, rhv: Any, expected: bool) -> None:
    assert passes(lhv, op, rhv) is expected


def test_every_operator_has_a_case() -> None:
    assert {case[1] for case in OPERATOR_CASES} == OPERATORS
    assert len(OPERATORS) == 25


def test_strings_compare_case_insensitively() -> None:
    assert passes("first_name", "is equal to", "aNN")
    assert passes("first_name", "is included in", "bob, ANN")


def test_a_numeric_string_equals_the_number() -> None:
    assert passes("lead_quality", "is equal to", 123)
    assert passes("lead_quality", "is equal to", "123")


def test_ranges_compare_by_their_average() -> None:
    assert passes("debt", "is equal to", 15000)
    assert passes("debt", "is greater than", 12000)
    assert not passes("debt", "is greater than", 18000)


def test_between_is_inclusive_at_both_ends() -> None:
    assert passes("credit_score", "is between", "720-800")
    assert passes("credit_score", "is between", "600-720")
    assert not passes("credit_score", "is between", "721-800")


def test_rhv_may_be_a_template_of_another_variable() -> None:
    assert passes("state", "is equal to", "{{ lead.state }}")
    assert passes("first_name", "is included in", ["bob", "{{first_name}}"])
    assert not passes("state", "is equal to", "{{ lead.city }}")


def test_a_templated_rhv_that_renders_unusable_fails_the_rule() -> None:
    assert not passes("first_name", "matches pattern", "{{ comments }}(")


def test_empty_rule_set_passes() -> None:
    assert compile_rule_set([]).evaluate(CONTEXT) == RuleResult(True, None)
    assert compile_rule_set(None).evaluate(CONTEXT).passed
    assert compile_rule_set({"op": "or", "rules": []}).evaluate(CONTEXT).passed


def test_and_set_needs_every_rule_and_reports_the_first_failure() -> None:
    rules = compile_rule_set(
        [
            {"lhv": "state", "op": "is included in", "rhv": "CA, NV"},
            {"lhv": "credit_score", "op": "is greater than", "rhv": 800},
            {"lhv": "phone_2", "op": "format is valid"},
        ]
    )
    assert rules.evaluate(CONTEXT) == RuleResult(False, "credit_score is not greater than 800")


def test_or_set_passes_when_any_rule_passes() -> None:
    rules = compile_rule_set(
        {
            "op": "or",
            "rules": [
                {"lhv": "state", "op": "is equal to", "rhv": "NV"},
                {"lhv": "credit_score", "op": "is greater than", "rhv": 700},
            ],
        }
    )
    assert rules.evaluate(CONTEXT).passed


def test_failed_or_set_joins_the_reasons_of_its_alternatives() -> None:
    rules = compile_rule_set(
        {
            "op": "or",
            "rules": [
                {"lhv": "state", "op": "is included in", "rhv": "NV, TX"},
                {"lhv": "phone_2", "op": "format is valid", "reason": "Bad phone"},
            ],
        }
    )
    assert rules.evaluate(CONTEXT) == RuleResult(
        False, "state is not included in NV, TX and Bad phone"
    )


def test_nested_rule_set_is_anded_with_its_rule() -> None:
    spec = [
        {
            "lhv": "state",
            "op": "is equal to",
            "rhv": "CA",
            "rule_set": {
                "op": "or",
                "rules": [
                    {"lhv": "credit_score", "op": "is greater than", "rhv": 750},
                    {"lhv": "tcpa", "op": "is false"},
                ],
            },
        }
    ]
    result = compile_rule_set(spec).evaluate(CONTEXT)
    assert result == RuleResult(False, "credit_score is not greater than 750 and tcpa is not false")
    spec[0]["rule_set"]["rules"][1]["op"] = "is true"  # type: ignore[index]
    assert compile_rule_set(spec).evaluate(CONTEXT).passed


def test_a_rule_may_be_only_a_group() -> None:
    spec = [
        {"lhv": "state", "op": "is equal to", "rhv": "CA"},
        {
            "rule_set": {
                "op": "or",
                "rules": [
                    {"lhv": "state", "op": "is equal to", "rhv": "NV"},
                    {"lhv": "tcpa", "op": "is true"},
                ],
            }
        },
    ]
    assert compile_rule_set(spec).evaluate(CONTEXT).passed


def test_custom_reason_wins_over_the_generated_sentence() -> None:
    rules = compile_rule_set(
        [{"lhv": "state", "op": "is equal to", "rhv": "NV", "reason": "Out of territory"}]
    )
    assert rules.evaluate(CONTEXT) == RuleResult(False, "Out of territory")


def test_rule_set_reason_wins_over_its_rules() -> None:
    rules = compile_rule_set(
        {"op": "and", "reason": "Not qualified", "rules": [{"lhv": "tcpa", "op": "is false"}]}
    )
    assert rules.evaluate(CONTEXT) == RuleResult(False, "Not qualified")


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (
            {"lhv": "state", "op": "is included in", "rhv": "NV,TX"},
            "state is not included in NV, TX",
        ),
        ({"lhv": "lead.phone_2", "op": "format is valid"}, "phone_2 format is invalid"),
        ({"lhv": "first_name", "op": "is blank"}, "first_name is not blank"),
        ({"lhv": "missing", "op": "is not blank"}, "missing is blank"),
        (
            {"lhv": "credit_score", "op": "is between", "rhv": [1, 5]},
            "credit_score is not between 1 and 5",
        ),
        ({"lhv": "state", "op": "is equal to", "rhv": "NV"}, "state is not equal to NV"),
        ({"lhv": "email", "op": "includes", "rhv": "yahoo"}, "email does not include yahoo"),
        ({"lhv": "comments", "op": "is not obscene"}, "comments is obscene"),
        (
            {"lhv": "postal_code", "op": "is within", "rhv": {"postal_code": "10001", "miles": 25}},
            "postal_code is not within 25 miles of 10001",
        ),
        (
            {"lhv": "state", "op": "is equal to", "rhv": "{{city}}"},
            "state is not equal to Beverly Hills",
        ),
    ],
)
def test_generated_reasons_name_the_field(rule: dict[str, Any], reason: str) -> None:
    assert compile_rule_set([rule]).evaluate(CONTEXT) == RuleResult(False, reason)


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ([{"lhv": "x", "op": "is blurg"}], "rules[0].op"),
        (
            {"rules": [{"lhv": "x", "op": "is blank"}, {"lhv": "x", "op": "is equal to"}]},
            "rules[1].rhv",
        ),
        ([{"lhv": "x", "op": "matches pattern", "rhv": "("}], "rules[0].rhv"),
        ([{"lhv": "x", "op": "is between", "rhv": "20-10"}], "rules[0].rhv"),
        ([{"lhv": "x", "op": "is between", "rhv": "ten to twenty"}], "rules[0].rhv"),
        (
            [{"lhv": "x", "op": "is within", "rhv": {"postal_code": "00000", "miles": 5}}],
            "rules[0].rhv",
        ),
        ([{"lhv": "x", "op": "is within", "rhv": {"postal_code": "90210"}}], "rules[0].rhv"),
        ([{"lhv": "x", "op": "is within", "rhv": "90210"}], "rules[0].rhv"),
        ([{"lhv": "x", "op": "is equal to", "rhv": [1, 2]}], "rules[0].rhv"),
        ([{"lhv": "x", "op": "is equal to", "rhv": "{{ unclosed"}], "rules[0].rhv"),
        ([{"op": "is blank"}], "rules[0].lhv"),
        ([{"lhv": "a b", "op": "is blank"}], "rules[0].lhv"),
        ([{"lhv": "x"}], "rules[0].op"),
        ([{"lhv": "x", "op": "is blank", "rvh": 1}], "rules[0].rvh"),
        (["not a rule"], "rules[0]"),
        ({"op": "xor", "rules": []}, "op"),
        ({"op": "and", "rules": "nope"}, "rules"),
        (
            [{"lhv": "x", "op": "is blank", "rule_set": [{"lhv": "y", "op": "nah"}]}],
            "rules[0].rule_set.rules[0].op",
        ),
        ("a string", ""),
    ],
)
def test_compile_errors_carry_the_path_inside_the_rule_set(spec: Any, path: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule_set(spec)
    assert caught.value.path == path
    assert caught.value.message


def test_operators_are_read_case_and_space_insensitively() -> None:
    assert passes("state", "Is  Equal To", "CA")


def test_lhv_may_be_written_in_braces() -> None:
    assert passes("{{ lead.state }}", "is equal to", "CA")


def test_rule_set_lists_the_fields_and_checks_it_reads() -> None:
    rules = compile_rule_set(
        [
            {"lhv": "state", "op": "is equal to", "rhv": "CA"},
            {"lhv": "state", "op": "is not blank"},
            {"rule_set": [{"lhv": "lead.phone_1", "op": "format is valid"}]},
        ]
    )
    assert rules.fields == ("state", "lead.phone_1")
    assert [check.path for check in rules.checks] == [
        "rules[0]",
        "rules[1]",
        "rules[2].rule_set.rules[0]",
    ]


@pytest.mark.parametrize(
    ("op", "field_type", "allowed"),
    [
        ("is within", "postal_code", True),
        ("is within", "string", False),
        ("format is valid", "trustedform_url", True),
        ("is greater than", "number", True),
        ("is greater than", "range", True),
        ("is greater than", "dob", True),
        ("is greater than", "string", True),
        ("is greater than", "phone", False),
        ("is true", "boolean", True),
        ("is true", "string", False),
        ("is obscene", "string", True),
        ("is obscene", "number", False),
        ("matches pattern", "email", True),
        ("is between", "date", True),
        ("is equal to", "trustedform_url", False),
        ("is blank", "unknown-type", True),
        ("nonsense", "unknown-type", False),
    ],
)
def test_operator_allowed_follows_the_field_type(op: str, field_type: str, allowed: bool) -> None:
    assert operator_allowed(op, field_type) is allowed


def test_every_type_allows_blank_and_format_checks() -> None:
    for operators in ALLOWED_OPERATORS.values():
        assert {"is blank", "is not blank", "format is valid", "format is invalid"} <= operators
        assert operators <= OPERATORS


def test_operator_errors_point_at_rules_whose_type_refuses_the_operator() -> None:
    rules = compile_rule_set(
        [
            {"lhv": "phone_1", "op": "is greater than", "rhv": 5},
            {"lhv": "credit_score", "op": "is greater than", "rhv": 5},
            {"lhv": "phone_1.valid", "op": "is true"},
            {"rule_set": [{"lhv": "tcpa", "op": "is obscene"}]},
        ]
    )
    errors = rules.operator_errors(CUSTOM)
    assert [error.path for error in errors] == ["rules[0].op", "rules[3].rule_set.rules[0].op"]


def test_zip_centroids_and_distances() -> None:
    beverly_hills = geo.zip_centroid("90210")
    assert beverly_hills is not None
    assert geo.zip_centroid("90210-1234") == beverly_hills
    assert geo.zip_centroid("00000") is None
    assert geo.zip_centroid("abc") is None
    new_york = geo.zip_centroid("10001")
    assert new_york is not None
    assert 2400 < geo.miles_between(beverly_hills, new_york) < 2500
    assert geo.within_miles("90210", "90211", 5)
    assert not geo.within_miles("90210", "10001", 25)
    assert not geo.within_miles("90210", "99999", 25000)


def test_a_fifty_rule_set_with_nested_rule_sets_passes() -> None:
    # Its speed is measured by `python -m bench.parse_lead`, not asserted here.
    rules = []
    for index in range(25):
        rules.append(
            {
                "lhv": "state",
                "op": "is included in",
                "rhv": "CA, NV, TX, FL, NY",
                "rule_set": [{"lhv": "credit_score", "op": "is greater than", "rhv": index}],
            }
        )
        rules.append({"lhv": "lead.phone_1.area", "op": "is not equal to", "rhv": "900"})
    compiled = compile_rule_set(rules)
    assert compiled.evaluate(CONTEXT).passed


NEGATIONS = [
    ("is equal to", "is not equal to"),
    ("is included in", "is not included in"),
    ("includes", "does not include"),
    ("matches pattern", "does not match pattern"),
    ("is blank", "is not blank"),
    ("is true", "is not true"),
    ("is false", "is not false"),
    ("format is valid", "format is invalid"),
    ("is obscene", "is not obscene"),
]


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(NEGATIONS),
    kind=st.sampled_from(["string", "number", "boolean", "state", "phone"]),
    lhv=st.text(alphabet="aAbB019 ,-yn", max_size=8),
    # An rhv of spaces only is a configuration error (compile refuses it), not a rule to test.
    rhv=st.text(alphabet="aAbB019 ,-yn", min_size=1, max_size=6).filter(str.strip),
)
def test_an_operator_and_its_negation_never_agree(
    pair: tuple[str, str], kind: str, lhv: str, rhv: str
) -> None:
    context = build_context(parse_lead({"x": lhv}, {"x": kind}))
    if pair[0] == "matches pattern":
        rhv = re.escape(rhv)
    results = [
        compile_rule_set([{"lhv": "x", "op": op, "rhv": rhv}]).evaluate(context).passed
        for op in pair
    ]
    assert results[0] != results[1]


@settings(max_examples=60, deadline=None)
@given(value=st.integers(-50, 50), low=st.integers(-50, 50), size=st.integers(0, 30))
def test_between_agrees_with_inclusive_comparisons(value: int, low: int, size: int) -> None:
    context = build_context(parse_lead({"x": str(value)}, {"x": "number"}))
    high = low + size
    inside = compile_rule_set([{"lhv": "x", "op": "is between", "rhv": [low, high]}])
    outside = compile_rule_set([{"lhv": "x", "op": "is not between", "rhv": f"{low} to {high}"}])
    assert inside.evaluate(context).passed is (low <= value <= high)
    assert outside.evaluate(context).passed is not (low <= value <= high)


def test_phone_type_component_is_read_by_its_spec_name() -> None:
    lead = parse_lead({"phone_1": "512-555-1234 (m)"})
    rule_set = compile_rule_set([{"lhv": "phone_1.type", "op": "is equal to", "rhv": "mobile"}])
    assert rule_set.evaluate(build_context(lead)).passed


# --- patterns run on RE2 (issue 13) ----------------------------------------------------------


def _matches(value: str, pattern: str) -> bool:
    rule_set = compile_rule_set([{"lhv": "x", "op": "matches pattern", "rhv": pattern}])
    return rule_set.evaluate(build_context(parse_lead({"x": value}))).passed


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ("ANN", "^ann$", True),  # always case-insensitive, as LeadConduit
        ("ann", "/^ANN$/", True),
        ("Zoë", "^ZOË$", True),  # Unicode case folding too
        ("a\nb", "/^b/m", True),
        ("a\nb", "^b", False),
        ("a\nb", "/a.b/s", True),
        ("a\nb", "a.b", False),
        ("abc", "/a b # a comment\n c/x", True),  # verbose layout, dropped before RE2 reads it
        ("a b", r"/a\ b/x", True),
        ("a b", "/a[ ]b/x", True),
        ("abc", r"c\Z", True),  # Python's \Z, RE2's \z
        ("abcd", r"c\Z", False),
        ("x1", r"^x\d$", True),
        ("(512)", r"^\(\d+\)$", True),
        ("ab", "/a/gu", True),  # JavaScript flags RE2 has no use for are ignored
        ("xaaaay", "xa{,3}y", False),  # Python's {,n}: at most n
        ("xaay", "^xa{,3}y$", True),
        ("a{,3}", "^a\\{,3}$", True),
    ],
)
def test_patterns_keep_their_meaning_on_re2(value: str, pattern: str, expected: bool) -> None:
    assert _matches(value, pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "uses a backreference"),
        ("(?P<n>a)(?P=n)", "uses a backreference"),
        ("a(?=b)", "uses lookahead or lookbehind"),
        ("a(?!b)", "uses lookahead or lookbehind"),
        ("(?<=a)b", "uses lookahead or lookbehind"),
        ("(?<!a)b", "uses lookahead or lookbehind"),
        ("(?>a+)b", "invalid perl operator: (?>"),
        ("a++", "bad repetition operator: ++"),
        ("(", "missing ): ("),
        ("a" * 40_000, "longer than 32768 characters"),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_rule_set([{"lhv": "x", "op": "does not match pattern", "rhv": pattern}])
    assert info.value.path == "rules[0].rhv"
    assert why in info.value.message


def test_leadflow_check_refuses_a_backreference_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from leadflow.cli import main

    path = tmp_path / "flow.yaml"
    path.write_text(
        BASE.replace(
            "    sources: [{source: vendor}]",
            "    acceptance: [{lhv: email, op: matches pattern, rhv: '^(\\w)\\1'}]\n"
            "    sources: [{source: vendor}]",
        )
    )
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    assert info.value.code == 1
    error = capsys.readouterr().err
    assert (
        "flows[0].acceptance.rules[0].rhv: pattern '^(\\\\w)\\\\1' uses a backreference (\\1):"
        " patterns run on RE2, a linear-time engine without backreferences or lookaround"
    ) in error


def test_a_pattern_rendered_from_the_lead_that_re2_cannot_run_fails_the_rule() -> None:
    context = build_context(parse_lead({"x": "aa", "p": r"(a)\1", "q": "a" * 40_000}))
    for rhv in ("{{ p }}", "{{ q }}"):
        for op in ("matches pattern", "does not match pattern"):
            rule_set = compile_rule_set([{"lhv": "x", "op": op, "rhv": rhv}])
            assert not rule_set.evaluate(context).passed


def test_a_value_with_a_lone_surrogate_is_matched_not_raised_on() -> None:
    assert _matches("a\ud800b", "^a.*b$")
