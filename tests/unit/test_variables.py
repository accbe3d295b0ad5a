"""Variables: the rule/template context, path resolution, display text and variable types."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from leadflow.fields import parse_lead
from leadflow.variables import build_context, compile_path, display, resolve, variable_type

LEAD = parse_lead(
    {
        "first_name": "Ann",
        "phone_1": "(512) 555-1234",
        "email": "Ann@Example.com",
        "state": "texas",
        "loan_amount": "$250,000",
        "vehicle": {"make": "Ford", "year": "2019"},
        "tags": ["a", "b"],
        "source": "organic",
    },
    {"loan_amount": "number"},
)
CONTEXT = build_context(
    LEAD,
    flow={"id": "auto", "name": "Auto"},
    source={"id": "acme-leads", "name": "Acme Leads"},
    buyer={"id": "buyer-1"},
    purchase_price=Decimal("12.50"),
    submission={"timestamp": "2024-05-15T10:00:00-05:00", "hour": 10, "day_of_week": "Wednesday"},
    extra={"bid": Decimal("20"), "campaign": "spring"},
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("lead.phone_1.area", "512"),
        ("phone_1.area", "512"),
        ("lead.phone_1.valid", True),
        ("lead.email.domain", "Example.com"),  # the case sent, as LeadConduit
        ("state.name", "Texas"),
        ("source.id", "acme-leads"),
        ("flow.name", "Auto"),
        ("buyer.id", "buyer-1"),
        ("purchase_price", Decimal("12.50")),
        ("sale_price", None),
        ("bid", Decimal("20")),
        ("campaign", "spring"),
        ("hour", 10),
        ("day_of_week", "Wednesday"),
        ("submission.hour", 10),
        ("lead.vehicle.make.normal", "Ford"),
        ("vehicle.year.normal", "2019"),
        ("tags.1", "b"),
        ("tags.9", None),
        ("missing", None),
        ("lead.phone_1.nothing", None),
        ("source.nothing.deeper", None),
        ("first_name.normal.deeper", None),
    ],
)
def test_paths_resolve_to_values_and_components(path: str, expected: object) -> None:
    assert resolve(path, CONTEXT) == expected


def test_a_typed_field_resolves_to_its_field_dict() -> None:
    field = resolve("loan_amount", CONTEXT)
    assert isinstance(field, dict)
    assert (field["kind"], field["normal"], field["valid"]) == ("number", "250000", True)


def test_a_reserved_name_means_the_context_and_lead_prefix_reaches_the_field() -> None:
    assert resolve("source", CONTEXT) == {"id": "acme-leads", "name": "Acme Leads"}
    assert display(resolve("lead.source", CONTEXT)) == "organic"


def test_reserved_names_do_not_fall_back_to_the_lead_when_missing() -> None:
    context = build_context(parse_lead({"bid": "5"}))
    assert resolve("bid", context) is None


def test_compiled_paths_are_cached_and_reusable() -> None:
    getter = compile_path("lead.state")
    assert compile_path("lead.state") is getter
    assert display(getter(CONTEXT)) == "TX"
    assert getter(build_context({})) is None


def test_build_context_fills_every_scope_with_an_empty_default() -> None:
    context = build_context({})
    assert context == {
        "lead": {},
        "flow": {},
        "source": {},
        "buyer": {},
        "purchase_price": None,
        "sale_price": None,
        "submission": {},
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("x", "x"),
        (True, "true"),
        (False, "false"),
        (12, "12"),
        (Decimal("1E+3"), "1000"),
        (Decimal("12.50"), "12.50"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        ({"kind": "number", "raw": "1,000", "normal": "1000", "valid": True}, "1000"),
        ({"kind": "boolean", "raw": "y", "normal": True, "valid": True}, "true"),
        (["a", 1, None], "a, 1, "),
        ({"a": 1}, '{"a":1}'),
        (date(2024, 1, 2), "2024-01-02"),
        (datetime(2024, 1, 2, 3, 4, tzinfo=UTC), "2024-01-02T03:04:00+00:00"),
    ],
)
def test_display_renders_values_as_plain_text(value: object, text: str) -> None:
    assert display(value) == text


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("state", "state"),
        ("lead.phone_1", "phone"),
        ("phone_1.valid", "boolean"),
        ("phone_1.area", "string"),
        ("phone_1.is_tollfree", "boolean"),
        ("email.is_free", "boolean"),
        ("dob.age", "number"),
        ("loan_amount", "number"),
        ("vehicle.year", "number"),
        ("anything_else", "string"),
        ("hour", "number"),
        ("day_of_week", "string"),
        ("purchase_price", "number"),
        ("source.id", "string"),
        ("submission", None),
        ("phone_1.nonsense", None),
    ],
)
def test_variable_type_names_what_a_rule_compares(path: str, kind: str | None) -> None:
    assert variable_type(path, {"loan_amount": "number", "vehicle.year": "number"}) == kind
