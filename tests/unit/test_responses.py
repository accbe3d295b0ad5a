"""Buyer-response parsing: outcome, reasons, price and reference from an HTTP answer (SPEC 8.1)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from delivery_service.responses import interpret, json_values, parse_document, xml_values
from leadflow.config import ResponseRules

JSON = "application/json"
XML = "application/xml"
TEXT = "text/plain"


def rules(**values: Any) -> ResponseRules:
    return ResponseRules.model_validate(values)


OUTCOME_CASES = [
    # (id, rules, status, content type, body, outcome, reason)
    ("2xx without a search term is success", {}, 200, TEXT, "ok", "success", ""),
    ("4xx without a search term is failure", {}, 422, TEXT, "no", "failure", "HTTP 422"),
    ("3xx is not followed and is failure", {}, 302, TEXT, "", "failure", "HTTP 302"),
    (
        "5xx is error whatever the body says",
        {"outcome_search_term": "accepted"},
        503,
        JSON,
        '{"status": "accepted"}',
        "error",
        "HTTP 503",
    ),
    (
        "JSON path match is success",
        {"outcome_search_term": "accepted|success", "outcome_search_path": "status"},
        200,
        JSON,
        '{"status": "Accepted"}',
        "success",
        "",
    ),
    (
        "JSON path no match is failure without a reason",
        {"outcome_search_term": "accepted", "outcome_search_path": "status"},
        200,
        JSON,
        '{"status": "rejected"}',
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
    ),
    (
        "JSON nested path is searched, not the whole body",
        {"outcome_search_term": "accepted", "outcome_search_path": "result.status"},
        200,
        JSON,
        '{"result": {"status": "rejected"}, "note": "accepted elsewhere"}',
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
    ),
    (
        "whole body is searched without a path",
        {"outcome_search_term": "SUCCESS"},
        200,
        TEXT,
        "result=success&id=9",
        "success",
        "",
    ),
    (
        "search term is a regular expression",
        {"outcome_search_term": r"^ok\b"},
        200,
        TEXT,
        "OK thanks",
        "success",
        "",
    ),
    (
        "outcome_on_match failure: a match is failure",
        {
            "outcome_search_term": "duplicate",
            "outcome_on_match": "failure",
            "default_reason": "Duplicate",
        },
        200,
        TEXT,
        "Duplicate lead",
        "failure",
        "Duplicate",
    ),
    (
        "outcome_on_match failure: no match is success",
        {"outcome_search_term": "duplicate", "outcome_on_match": "failure"},
        200,
        TEXT,
        "Thanks",
        "success",
        "",
    ),
    (
        "outcome_on_match error: a match is error",
        {"outcome_search_term": "try later", "outcome_on_match": "error"},
        200,
        TEXT,
        "Please try later",
        "error",
        "",  # no reason given, none made up (as LeadConduit)
    ),
    (
        "outcome_on_match error: no match is success",
        {"outcome_search_term": "try later", "outcome_on_match": "error"},
        200,
        TEXT,
        "Thanks",
        "success",
        "",
    ),
    (
        "a search term decides even on a 4xx",
        {"outcome_search_term": "accepted"},
        400,
        TEXT,
        "nope",
        "failure",
        "HTTP 400",
    ),
    (
        "XPath match is success",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "/result/outcome"},
        200,
        XML,
        "<result><outcome>accepted</outcome></result>",
        "success",
        "",
    ),
    (
        "XPath relative to the root element is success",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "outcome"},
        200,
        XML,
        "<result><outcome>accepted</outcome></result>",
        "success",
        "",
    ),
    (
        "XPath no match is failure",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "//outcome"},
        200,
        XML,
        "<result><outcome>rejected</outcome></result>",
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
    ),
    (
        "a path on a plain-text body finds nothing",
        {"outcome_search_term": "ok", "outcome_search_path": "status"},
        200,
        TEXT,
        "ok",
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
    ),
]


@pytest.mark.parametrize(
    ("spec", "status", "content_type", "body", "outcome", "reason"),
    [case[1:] for case in OUTCOME_CASES],
    ids=[case[0] for case in OUTCOME_CASES],
)
def test_outcome_follows_the_response_rules(
    spec: dict[str, Any], status: int, content_type: str, body: str, outcome: str, reason: str
) -> None:
    verdict = interpret(rules(**spec), status, content_type, body.encode())
    assert (verdict.outcome, verdict.reason) == (outcome, reason)


def test_json_reasons_are_sorted_and_joined() -> None:
    body = b'{"outcome": "failure", "reasons": ["Invalid phone", "Duplicate", "Bad state"]}'
    spec = rules(
        outcome_search_term="success", outcome_search_path="outcome", reason_path="reasons"
    )
    assert interpret(spec, 200, JSON, body).reason == "Bad state, Duplicate, Invalid phone"


def test_json_reasons_under_a_list_of_objects_are_collected() -> None:
    body = b'{"errors": [{"message": "Zip invalid"}, {"message": "Age too low"}]}'
    spec = rules(reason_path="errors.message")
    assert interpret(spec, 400, JSON, body).reason == "Age too low, Zip invalid"


def test_xpath_reasons_from_several_matches_are_sorted_and_joined() -> None:
    body = b"<r><status>rejected</status><reason>Out of area</reason><reason>Dup</reason></r>"
    spec = rules(
        outcome_search_term="accepted", outcome_search_path="/r/status", reason_path="//reason"
    )
    assert interpret(spec, 200, XML, body).reason == "Dup, Out of area"


def test_a_success_keeps_its_reason_and_default_reason() -> None:
    body = b'{"status": "accepted", "message": " Thank you "}'
    spec = rules(
        outcome_search_term="accepted", outcome_search_path="status", reason_path="message"
    )
    assert interpret(spec, 200, JSON, body).reason == "Thank you"
    verdict = interpret(rules(default_reason="  Bought  "), 200, JSON, b"{}")
    assert (verdict.outcome, verdict.reason) == ("success", "Bought")


def test_default_reason_applies_when_no_reason_is_found() -> None:
    spec = rules(reason_path="message", default_reason="Not bought")
    assert interpret(spec, 409, JSON, b'{"other": 1}').reason == "Not bought"


def test_json_price_is_read_from_price_path() -> None:
    spec = rules(price_path="bid.amount")
    assert interpret(spec, 200, JSON, b'{"bid": {"amount": 18.5}}').price == Decimal("18.50")


def test_price_given_as_text_is_read() -> None:
    assert interpret(rules(price_path="price"), 200, JSON, b'{"price": "$1,250.00"}').price == (
        Decimal("1250.00")
    )


@pytest.mark.parametrize("amount", ["-1", "1000000.01", '"free"', "true"])
def test_price_outside_0_to_a_million_is_ignored(amount: str) -> None:
    body = f'{{"price": {amount}}}'.encode()
    assert interpret(rules(price_path="price"), 200, JSON, body).price is None


def test_xml_price_and_reference_are_read_by_xpath() -> None:
    body = b"<result><price>7.25</price><lead id='ref-9'/></result>"
    verdict = interpret(rules(price_path="price", reference_path="lead/@id"), 200, XML, body)
    assert (verdict.price, verdict.reference) == (Decimal("7.25"), "ref-9")


def test_json_reference_number_becomes_text() -> None:
    assert interpret(rules(reference_path="id"), 200, JSON, b'{"id": 12345}').reference == "12345"


def test_json_body_is_recognised_without_a_json_content_type() -> None:
    spec = rules(outcome_search_term="yes", outcome_search_path="ok")
    assert interpret(spec, 200, TEXT, b'{"ok": "yes"}').outcome == "success"


def test_xml_in_a_default_namespace_matches_plain_paths() -> None:
    body = b'<result xmlns="urn:buyer"><status>accepted</status></result>'
    assert xml_values(_xml(body), "/result/status") == ["accepted"]


def test_xml_with_an_entity_declaration_is_not_expanded() -> None:
    body = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "accepted">]><r><status>&x;</status></r>'
    document = parse_document(XML, body)
    assert document.xml is None
    spec = rules(outcome_search_term="^accepted$", outcome_search_path="status")
    assert interpret(spec, 200, XML, body).outcome == "failure"


def test_invalid_xpath_finds_nothing() -> None:
    assert xml_values(_xml(b"<r><a>1</a></r>"), "a[") == []


def test_json_list_index_in_a_path() -> None:
    assert json_values({"items": [{"id": "a"}, {"id": "b"}]}, "items.1.id") == ["b"]


def test_json_boolean_is_searched_as_true_or_false() -> None:
    spec = rules(outcome_search_term="^true$", outcome_search_path="accepted")
    assert interpret(spec, 200, JSON, b'{"accepted": true}').outcome == "success"


def _xml(body: bytes) -> Any:
    document = parse_document(XML, body)
    assert document.xml is not None
    return document.xml


def test_control_characters_in_buyer_reasons_become_spaces() -> None:
    rules = ResponseRules(outcome_search_term="ok", outcome_search_path="status", reason_path="msg")
    verdict = interpret(
        rules, 200, "application/json", b'{"status": "no", "msg": "bad\\u0000phone\\nnumber"}'
    )
    assert verdict.reason == "bad phone number"
