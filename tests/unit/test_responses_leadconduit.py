"""Buyer answers read as LeadConduit's custom integration reads them (SPEC 8.1, issue 15).

Each case is one of the SPEC's examples, checked against what LeadConduit's own tests expect;
where SPEC 8.1 decides otherwise (a non-2xx answer without a search term), the SPEC's answer.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery_service.responses import interpret, parse_document
from leadflow.cli import main
from leadflow.config import ResponseRules

JSON = "application/json"
XML = "text/xml"
HTML = "text/html"
TEXT = "text/plain"


def rules(**values: Any) -> ResponseRules:
    return ResponseRules.model_validate(values)


def page(body: str) -> str:
    return f"<html><body>{body}</body></html>"


# (id, rules, status, content type, body, outcome, reason, price, reference)
CASES: list[tuple[str, dict[str, Any], int, str, str, str, str, str | None, str]] = [
    # `/regex/flags`
    (
        "slashed search term",
        {"outcome_search_term": "/[a-z]{3}foo[a-z]{3}/"},
        200,
        TEXT,
        "barfoobaz",
        "success",
        "",
        None,
        "",
    ),
    (
        "slashed search term with the m flag anchors at lines",
        {"outcome_search_term": "/^status: ok$/m"},
        200,
        TEXT,
        "id: 7\nstatus: OK\n",
        "success",
        "",
        None,
        "",
    ),
    (
        "without the m flag ^ is the start of the answer",
        {"outcome_search_term": "/^status: ok$/"},
        200,
        TEXT,
        "id: 7\nstatus: OK\n",
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
        None,
        "",
    ),
    (
        "search is case-insensitive",
        {"outcome_search_term": "FOO", "outcome_search_path": "baz"},
        200,
        JSON,
        '{"baz": "foo"}',
        "success",
        "",
        None,
        "",
    ),
    # values are trimmed before they are matched or recorded
    (
        "a value is trimmed before it is matched",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "status"},
        200,
        JSON,
        '{"status": "  accepted \\n"}',
        "success",
        "",
        None,
        "",
    ),
    (
        "the whole answer is trimmed before it is matched",
        {"outcome_search_term": "^ok$"},
        200,
        TEXT,
        "\n  ok  \n",
        "success",
        "",
        None,
        "",
    ),
    (
        "reasons and reference are trimmed, blank ones dropped",
        {
            "outcome_search_term": "accepted",
            "outcome_search_path": "status",
            "reason_path": "errors",
            "reference_path": "id",
        },
        200,
        JSON,
        '{"status": "no", "errors": ["  Bad phone ", "   ", ""], "id": "  r-1  "}',
        "failure",
        "Bad phone",
        None,
        "r-1",
    ),
    # a JSON answer that is an array is `array`
    (
        "array.0.status",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "array.0.status"},
        200,
        JSON,
        '[{"status": "accepted", "id": 9}]',
        "success",
        "",
        None,
        "",
    ),
    (
        "array.0.bip as a reason",
        {"outcome_search_term": "foo", "reason_path": "array.0.bip"},
        200,
        JSON,
        '[{"bip": "the reason text!"}]',
        "failure",
        "the reason text!",
        None,
        "",
    ),
    # `*` in JSON paths
    (
        "errors.*.message",
        {
            "outcome_search_term": "^ok$",
            "outcome_search_path": "status",
            "reason_path": "errors.*.message",
        },
        200,
        JSON,
        '{"status": "bad", "errors": [{"message": "Zip"}, {"message": "Age"}]}',
        "failure",
        "Age, Zip",
        None,
        "",
    ),
    (
        "lodash's bracket form",
        {"outcome_search_term": "^ok$", "outcome_search_path": "array[0].status"},
        200,
        JSON,
        '[{"status": "ok"}]',
        "success",
        "",
        None,
        "",
    ),
    (
        "* over an object's keys, twice",
        {"outcome_search_term": "bar", "reason_path": "baz.*.details.*.more"},
        200,
        JSON,
        '{"baz": {"foo": {"details": {"bip": {"more": "really bad data"}}}}}',
        "failure",
        "really bad data",
        None,
        "",
    ),
    (
        "* in the price path",
        {"price_path": "baz.*.cost"},
        200,
        JSON,
        '{"baz": {"foo": {"cost": 1.5}}}',
        "success",
        "",
        "1.50",
        "",
    ),
    # fallback_price
    (
        "fallback_price when price_path finds nothing",
        {"price_path": "invalid_path", "fallback_price": "12.50"},
        200,
        JSON,
        '{"baz": {"foo": {"cost": 1.5}}}',
        "success",
        "",
        "12.50",
        "",
    ),
    (
        "no fallback_price when price_path finds a price",
        {"price_path": "baz.foo.cost", "fallback_price": "12.50"},
        200,
        JSON,
        '{"baz": {"foo": {"cost": 1.5}}}',
        "success",
        "",
        "1.50",
        "",
    ),
    (
        "a price of 0 from the buyer is its price (LeadConduit: the fallback)",
        {"price_path": "price", "fallback_price": "12.50"},
        200,
        JSON,
        '{"price": 0}',
        "success",
        "",
        "0",
        "",
    ),
    # XPath 1.0 on XML
    (
        "string(//status)",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "string(//status)"},
        200,
        XML,
        "<r><a><status> accepted </status></a></r>",
        "success",
        "",
        None,
        "",
    ),
    (
        "local-name() predicate on a namespaced answer",
        {
            "outcome_search_term": "^true$",
            "outcome_search_path": "//*[local-name()='Accepted']",
        },
        200,
        "application/soap+xml",
        '<s:Envelope xmlns:s="urn:soap"><s:Body><x:Accepted xmlns:x="urn:b">true</x:Accepted>'
        "</s:Body></s:Envelope>",
        "success",
        "",
        None,
        "",
    ),
    (
        "attribute predicate and text()",
        {
            "outcome_search_term": "accepted",
            "outcome_search_path": "/r/result[@type='lead']/text()",
            "reference_path": "/r/result[@type='lead']/@id",
        },
        200,
        XML,
        '<r><result type="ping">rejected</result><result type="lead" id="L-5">accepted</result></r>',
        "success",
        "",
        None,
        "L-5",
    ),
    (
        "a boolean XPath result is true or false",
        {"outcome_search_term": "^true$", "outcome_search_path": "count(//error) = 0"},
        200,
        XML,
        "<r><error>Dup</error></r>",
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
        None,
        "",
    ),
    (
        "several XPath reasons sorted, CDATA read as text",
        {"outcome_search_term": "foo", "reason_path": "//bip/text()"},
        200,
        XML,
        "<baz><bip>the reason text!</bip><bip><![CDATA[another reason]]></bip></baz>",
        "failure",
        "another reason, the reason text!",
        None,
        "",
    ),
    (
        "a relative path names the root (LeadConduit reads it from the document)",
        {"price_path": "bar/cost/text()"},
        200,
        XML,
        "<bar><cost>1.5</cost></bar>",
        "success",
        "",
        "1.50",
        "",
    ),
    (
        "an invalid XPath finds nothing and the default reason applies",
        {"outcome_search_term": "bar", "reason_path": "[[[[[   ", "default_reason": "just because"},
        200,
        XML,
        "<baz><bip>foo</bip></baz>",
        "failure",
        "just because",
        None,
        "",
    ),
    # CSS selectors on HTML
    (
        "CSS selector reason",
        {"outcome_search_term": "foo", "reason_path": 'div[id="message"]'},
        200,
        HTML,
        page('<div>bar</div><div id="message"> just because </div>'),
        "failure",
        "just because",
        None,
        "",
    ),
    (
        "CSS selector with an @attribute",
        {"outcome_search_term": "foo", "reason_path": "#message @reason"},
        200,
        HTML,
        page('<div>bar</div><div id="message" reason="just because"></div>'),
        "failure",
        "just because",
        None,
        "",
    ),
    (
        "several CSS matches, sorted",
        {"outcome_search_term": "foo", "reason_path": "div.message"},
        200,
        HTML,
        page(
            '<div class="message">the reason text!</div><div class="message">another reason</div>'
        ),
        "failure",
        "another reason, the reason text!",
        None,
        "",
    ),
    (
        "the search path's elements are searched as inner HTML",
        {"outcome_search_term": 'id="[a-z]+">foo<', "outcome_search_path": "body"},
        200,
        HTML,
        page('<div id="bar">foo</div>'),
        "success",
        "",
        None,
        "",
    ),
    (
        "a selector matching another element does not match",
        {"outcome_search_term": "foo", "outcome_search_path": 'div[id="one"]'},
        200,
        HTML,
        page('<div id="one">bar</div><div id="other">foo</div>'),
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
        None,
        "",
    ),
    (
        "CSS price",
        {"price_path": "div.cost"},
        200,
        HTML,
        page('<div class="cost">1.5</div>'),
        "success",
        "",
        "1.50",
        "",
    ),
    (
        "on HTML a path that is no selector is an expression on the text",
        {"reason_path": '"message":"([^"]+)"', "outcome_search_term": "success"},
        200,
        "text/html; charset=UTF-8",
        '{"err":1,"message":"PhoneNumber is a required field."}',
        "failure",
        "PhoneNumber is a required field.",
        None,
        "",
    ),
    (
        "XHTML with an XML declaration and UTF-8 text",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "p.s", "reason_path": "p.r"},
        200,
        "text/html",
        '<?xml version="1.0" encoding="utf-8"?><html><body><p class="s">accepted</p>'
        '<p class="r">Grüße</p></body></html>',
        "success",
        "Grüße",
        None,
        "",
    ),
    # regular expressions on plain text
    (
        "text reason is the first group",
        {"outcome_search_term": "foo", "reason_path": "[a-z]+:(.*)"},
        200,
        TEXT,
        "bad:the reason text!  ",
        "failure",
        "the reason text!",
        None,
        "",
    ),
    (
        "slashed text price",
        {"price_path": "/cost=([0-9].[0-9])/"},
        200,
        TEXT,
        "foo&cost=1.5",
        "success",
        "",
        "1.50",
        "",
    ),
    (
        "a text path without a match finds nothing",
        {"outcome_search_term": "foo", "reason_path": "whatever:(.*)"},
        200,
        TEXT,
        "bad:the reason text!",
        "failure",
        "",  # no reason given, none made up (as LeadConduit)
        None,
        "",
    ),
    (
        "a text search path is an expression too: its group is searched",
        {"outcome_search_term": "^accepted$", "outcome_search_path": "result=(\\w+)"},
        200,
        TEXT,
        "id=4&result=accepted",
        "success",
        "",
        None,
        "",
    ),
    (
        "a text/plain JSON answer still takes a text expression",
        {"reason_path": '"message":"([^"]+)"', "outcome_search_term": "success"},
        200,
        TEXT,
        '{"message":"Duplicate"}',
        "failure",
        "Duplicate",
        None,
        "",
    ),
    # response_content_type_override
    (
        "override reads a text/html answer as JSON",
        {
            "outcome_search_term": "success",
            "response_content_type_override": "application/json",
            "reason_path": "message",
        },
        422,
        "text/html; charset=UTF-8",
        '{"err":1,"message":"PhoneNumber is a required field."}',
        "failure",
        "PhoneNumber is a required field.",
        None,
        "",
    ),
    (
        "override to text/plain makes a path an expression on a JSON body",
        {
            "response_content_type_override": "text/plain",
            "reference_path": '"id":\\s*"([^"]+)"',
        },
        200,
        JSON,
        '{"id": "abc-1"}',
        "success",
        "",
        None,
        "abc-1",
    ),
    (
        "override to XML",
        {
            "response_content_type_override": "application/xml",
            "outcome_search_term": "^yes$",
            "outcome_search_path": "string(/r/ok)",
        },
        200,
        TEXT,
        "<r><ok>yes</ok></r>",
        "success",
        "",
        None,
        "",
    ),
    # SPEC 8.1 decides over LeadConduit
    (
        "a 4xx without a search term is a failure (LeadConduit: success)",
        {},
        400,
        TEXT,
        "oh no!",
        "failure",
        "HTTP 400",
        None,
        "",
    ),
    (
        "a 5xx is an error",
        {"outcome_search_term": "ok"},
        599,
        TEXT,
        "ok",
        "error",
        "HTTP 599",
        None,
        "",
    ),
    # success reasons are kept
    (
        "a success keeps the buyer's reason",
        {"outcome_search_term": "^ok$", "outcome_search_path": "status", "reason_path": "msg"},
        200,
        JSON,
        '{"status": "ok", "msg": "Thank you"}',
        "success",
        "Thank you",
        None,
        "",
    ),
    (
        "a success keeps default_reason",
        {"default_reason": "just because"},
        200,
        JSON,
        '{"baz": "bip"}',
        "success",
        "just because",
        None,
        "",
    ),
]


@pytest.mark.parametrize(
    ("spec", "status", "content_type", "body", "outcome", "reason", "price", "reference"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_answer_is_read_as_leadconduit_reads_it(
    spec: dict[str, Any],
    status: int,
    content_type: str,
    body: str,
    outcome: str,
    reason: str,
    price: str | None,
    reference: str,
) -> None:
    verdict = interpret(rules(**spec), status, content_type, body.encode())
    assert (verdict.outcome, verdict.reason) == (outcome, reason)
    assert verdict.price == (None if price is None else Decimal(price))
    assert verdict.reference == reference


COOKIE = (
    "Session_id=678; path=/; domain=.fizzbuzz.com; expires=Sat, 01-Jan-2022 16:39:03 GMT; "
    "Max-Age=155520000; secure; httpOnly"
)
COOKIE_2 = COOKIE.replace("=678", "=123")
COOKIE_3 = COOKIE.replace("=678", "=9AB")


@pytest.mark.parametrize(
    ("term", "headers", "expected"),
    [
        ("session_id", [COOKIE], COOKIE),
        ("SESSION_ID", [COOKIE], COOKIE),
        ("session.*domain=.fizzbuzz", [COOKIE], COOKIE),
        ("/^session_id=6/", [COOKIE], COOKIE),
        ("login_info", [COOKIE], None),
        ("domain=.x[0-9]{7}", [COOKIE], None),
        # Several match: the first in sorted order.
        ("session_id", [COOKIE, COOKIE_2, COOKIE_3], COOKIE_2),
        ("session.*domain=.fizzbuzz", [COOKIE_3, COOKIE, COOKIE_2], COOKIE_2),
        ("session_id", [], None),
    ],
)
def test_cookie_search_term_keeps_the_matching_set_cookie(
    term: str, headers: list[str], expected: str | None
) -> None:
    verdict = interpret(rules(cookie_search_term=term), 200, TEXT, b"ok", headers)
    assert verdict.captured.get("cookie") == expected
    assert verdict.outcome == "success"


@pytest.mark.parametrize(
    ("capture", "content_type", "body", "expected"),
    [
        (
            {"bad": "/bad: (.*)$/m", "why": "/why: (.*)$/m"},
            TEXT,
            "bad: the reason text!\nwhy: just because",
            {"bad": "the reason text!", "why": "just because"},
        ),
        (
            {"number_records": "matched (.*) records"},
            HTML,
            page("<div>result: matched 42 records.</div>"),
            {"number_records": "42"},
        ),
        ({"lead_id": "id=(\\d+)"}, TEXT, "ok id= 12 ", {}),  # no digits right after `=`
        ({"lead_id": "id=\\s*(\\d+)"}, TEXT, "ok id= 12 ", {"lead_id": "12"}),
        ({"token": "token: (.*)"}, TEXT, "token:    ", {}),  # blank after trimming
        ({"ref": '"ref":\\s*"([^"]*)"'}, JSON, '{"ref": " R-9 "}', {"ref": "R-9"}),
    ],
)
def test_capture_keeps_each_first_group(
    capture: dict[str, str], content_type: str, body: str, expected: dict[str, str]
) -> None:
    verdict = interpret(rules(capture=capture), 200, content_type, body.encode())
    assert dict(verdict.captured) == expected


def test_captures_and_cookie_are_kept_on_a_failure_too() -> None:
    spec = rules(
        outcome_search_term="accepted", capture={"code": "code=(\\w+)"}, cookie_search_term="sid"
    )
    verdict = interpret(spec, 200, TEXT, b"rejected code=DUP", ["sid=1; path=/"])
    assert verdict.outcome == "failure"
    assert dict(verdict.captured) == {"code": "DUP", "cookie": "sid=1; path=/"}


@pytest.mark.timeout(10)
def test_hostile_answers_take_linear_time() -> None:
    # `(a+)+$` backtracks exponentially in Python's re; RE2 answers in linear time.
    body = b"a" * 200_000 + b"!"
    spec = rules(outcome_search_term="(a+)+$", capture={"x": "(a+)+$"}, reason_path="(a*)*b")
    start = time.perf_counter()
    verdict = interpret(spec, 200, TEXT, body)
    assert verdict.outcome == "failure"
    assert time.perf_counter() - start < 2


def test_xml_entities_are_never_expanded() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">'
        b'<!ENTITY a "accepted">]><r><s>&x;&a;</s></r>'
    )
    assert parse_document(XML, body).xml is None
    spec = rules(outcome_search_term="root:|^accepted$", outcome_search_path="string(//s)")
    assert interpret(spec, 200, XML, body).outcome == "failure"


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ({"outcome_search_term": "(?=accepted)"}, "invalid regular expression (RE2 syntax)"),
        ({"outcome_search_term": "/(a)\\1/"}, "invalid regular expression (RE2 syntax)"),
        ({"cookie_search_term": "["}, "invalid regular expression (RE2 syntax)"),
        ({"capture": {"code": "code=\\w+"}}, "capture code: needs a capturing group"),
        ({"capture": {"code": "(?<=x)(y)"}}, "capture code: invalid regular expression"),
        ({"capture": {"9lives": "(x)"}}, "capture name '9lives'"),
        ({"capture": {"cookie": "(x)"}}, "capture name 'cookie' is kept"),
        ({"response_content_type_override": "json"}, "is not a media type"),
        ({"fallback_price": "-1"}, "fallback_price"),
        (
            {"capture_values": {"a": "(b)"}},
            "unknown key 'capture_values' (did you mean 'capture'?)",
        ),
    ],
)
def test_check_refuses_bad_response_settings(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    response: dict[str, Any],
    problem: str,
) -> None:
    path = tmp_path / "leadflow.yaml"
    path.write_text(_config(response))
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "buyers[0].delivery.response" in err and problem in err, err


def test_check_accepts_leadconduit_response_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "leadflow.yaml"
    path.write_text(
        _config(
            {
                "outcome_search_term": "/^(accepted|success)$/i",
                "outcome_on_match": " Success ",
                "outcome_search_path": "//*[local-name()='Accepted']",
                "response_content_type_override": "text/xml; charset=utf-8",
                "cookie_search_term": "session_id",
                "capture": {"lead_id": "id=(\\d+)", "note": "/note: (.*)$/m"},
            }
        )
    )
    with pytest.raises(SystemExit) as info:
        main(["check", str(path)])
    assert info.value.code == 0, capsys.readouterr().err


def _config(response: dict[str, Any]) -> str:
    import yaml

    delivery = {"type": "http", "url": "https://buyer.example/leads", "response": response}
    return yaml.safe_dump(
        {
            "account": {"name": "T"},
            "sources": [{"id": "vendor", "name": "Vendor", "api_key": "k"}],
            "buyers": [{"id": "acme", "name": "Acme", "delivery": delivery}],
            "flows": [
                {
                    "id": "auto",
                    "name": "Auto",
                    "sources": [{"source": "vendor"}],
                    "stages": [{"name": "one", "steps": [{"buyer": "acme"}]}],
                }
            ],
        }
    )


PATHS = st.sampled_from(
    [
        "status",
        "array.0.status",
        "errors.*.message",
        "a[0].b",
        "string(//status)",
        "//*[local-name()='Accepted']",
        "/r/x/@id",
        "count(//x)",
        "div.msg",
        "#m @code",
        "p:hover",
        "a::text",
        "[[[",
        "(",
        "id=(\\d+)",
        "/(.*)/m",
        "",
    ]
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.sampled_from(
        [
            b"<r><status>ok</status></r>",
            b"<html><body><div class='msg'>ok</div></body></html>",
            b'[{"status": "ok"}]',
            b'{"errors": [{"message": "x"}], "status": 3}',
            b"<!-- only a comment -->",
            b"<?xml version='1.0' encoding='latin-1'?><r>\xe9</r>",
            b"\x00\x00<r>",
            b"   ",
            b"null",
        ]
    ),
)
TYPES = st.sampled_from(
    [JSON, XML, HTML, TEXT, "", "application/xhtml+xml", "text/html; charset=latin-1", ";;"]
)


@settings(max_examples=300, deadline=None)
@given(
    body=BODIES,
    content_type=TYPES,
    search_path=PATHS,
    reason_path=PATHS,
    price_path=PATHS,
    override=st.sampled_from([None, "application/json", "text/xml", "text/html", "text/plain"]),
)
def test_any_answer_gets_a_verdict_and_never_an_exception(
    body: bytes,
    content_type: str,
    search_path: str,
    reason_path: str,
    price_path: str,
    override: str | None,
) -> None:
    spec = rules(
        outcome_search_term="ok",
        outcome_search_path=search_path,
        reason_path=reason_path,
        price_path=price_path,
        reference_path=reason_path,
        response_content_type_override=override,
        cookie_search_term="sid",
        capture={"x": "(.)"},
    )
    verdict = interpret(spec, 200, content_type, body, ["sid=1"])
    assert verdict.outcome in ("success", "failure")
    assert "\x00" not in verdict.reason
