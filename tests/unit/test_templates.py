"""Templates: ``{{ path }}`` substitution for delivery URLs, headers, bodies and rule values."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import quote

import pytest

from leadflow.fields import parse_lead
from leadflow.templates import TemplateError, compile_template, render_mapping
from leadflow.variables import build_context

CONTEXT = build_context(
    parse_lead(
        {
            "first_name": "Ann Lee",
            "phone_1": "(512) 555-1234",
            "tcpa": "yes",
            "loan_amount": "$1,000",
        },
        {"tcpa": "boolean", "loan_amount": "number"},
    ),
    source={"id": "acme"},
    purchase_price=Decimal("12.50"),
    submission={"hour": 9},
)


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("{{lead.first_name}}", "Ann Lee"),
        ("{{ lead.first_name }}", "Ann Lee"),
        ("Hi {{first_name}}!", "Hi Ann Lee!"),
        ("{{phone_1}}-{{ phone_1.area }}", "5125551234-512"),
        ("{{tcpa}}", "true"),
        ("{{loan_amount}}", "1000"),
        ("{{purchase_price}}", "12.50"),
        ("{{source.id}}/{{hour}}", "acme/9"),
        ("{{{ first_name }}}", "Ann Lee"),
        ("[{{nothing}}]", "[]"),
        ("{{lead.first_name.nothing}}", ""),
        ("a }} b", "a }} b"),
        ("{\n{{first_name}}\n}", "{\nAnn Lee\n}"),
    ],
)
def test_templates_replace_paths_with_display_text(text: str, rendered: str) -> None:
    assert compile_template(text).render(CONTEXT) == rendered


def test_text_without_braces_renders_as_itself() -> None:
    template = compile_template("plain text")
    assert template.paths == ()
    assert template.render(CONTEXT) == "plain text"


def test_template_lists_the_paths_it_reads() -> None:
    template = compile_template("{{ a }} {{b.c}} {{a}}")
    assert template.paths == ("a", "b.c", "a")


@pytest.mark.parametrize(
    "text",
    ["{{ lead.first_name", "ok {{a}} then {{b", "{{ }}", "{{ a b }}", "{{a..b}}", "{{ {{a}} }}"],
)
def test_malformed_templates_raise_template_error(text: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(text)


def test_escape_applies_to_values_not_to_the_literal_text() -> None:
    template = compile_template("https://x.test/?name={{first_name}}&s=a b")
    assert template.render(CONTEXT, escape=quote) == "https://x.test/?name=Ann%20Lee&s=a b"


def test_render_mapping_renders_each_value() -> None:
    compiled = {"name": compile_template("{{first_name}}"), "fixed": compile_template("x")}
    assert render_mapping(compiled, CONTEXT) == {"name": "Ann Lee", "fixed": "x"}
