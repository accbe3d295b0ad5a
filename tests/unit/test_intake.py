"""Vendor request parsing and response rendering (SPEC 5.1)."""

import gzip
import zlib
from decimal import Decimal

import orjson
import pytest

from gateway.intake import (
    MAX_DEPTH,
    BadRequest,
    Refused,
    SubmissionResult,
    check_depth,
    decode_body,
    negotiate,
    pairs_to_dict,
    parse_body,
    redirect_target,
    rename_trustedform,
    render,
    vendor_fields,
)
from gateway.submission import checked_idempotency_key, read_vendor_parameters


def test_json_body_is_read_as_an_object() -> None:
    assert parse_body("application/json", b'{"first_name": "Ada", "age": 36}') == {
        "first_name": "Ada",
        "age": 36,
    }


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
def test_json_body_that_is_not_an_object_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body("application/json", body)


def test_form_body_collects_repeated_keys_in_a_list() -> None:
    assert parse_body("application/x-www-form-urlencoded", b"a=1&b=2&a=3") == {
        "a": ["1", "3"],
        "b": "2",
    }


def test_xml_body_reads_child_elements_as_fields() -> None:
    body = b"<lead><first_name>Ada</first_name><vehicle><year>2020</year></vehicle></lead>"
    assert parse_body("application/xml", body) == {
        "first_name": "Ada",
        "vehicle": {"year": "2020"},
    }


def test_xml_entity_expansion_is_refused() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><lead><a>&lol;</a></lead>'
    with pytest.raises(BadRequest):
        parse_body("text/xml", bomb)


def test_body_in_a_wrong_charset_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        parse_body("application/x-www-form-urlencoded", b"a=\xff\xfe", "utf-8")


def test_dot_keys_unflatten_into_objects() -> None:
    fields = vendor_fields({"a.b": "1", "a.c": "2", "d": "3"})
    assert fields == {"a": {"b": "1", "c": "2"}, "d": "3"}


def test_a_key_that_is_both_a_value_and_an_object_is_refused() -> None:
    with pytest.raises(BadRequest, match="both a value and an object"):
        vendor_fields({"a": "1", "a.b": "2"})


def test_too_many_fields_are_refused() -> None:
    with pytest.raises(BadRequest, match="too many fields"):
        vendor_fields({f"f{i}": "x" for i in range(1001)})


def test_dot_keys_inside_nested_objects_may_not_exceed_the_depth() -> None:
    nested = {".".join(["b"] * 20): {".".join(["c"] * 20): 1}}
    with pytest.raises(BadRequest, match="nested deeper"):
        vendor_fields(nested)


def _nested(levels: int, in_list: bool) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value] if in_list else {"a": value, "b": "text"}
    return value


@pytest.mark.parametrize("in_list", [False, True])
def test_depth_is_checked_up_to_the_limit_in_objects_and_lists(in_list: bool) -> None:
    check_depth(_nested(MAX_DEPTH, in_list))
    check_depth("not a container")
    with pytest.raises(BadRequest, match="nested deeper"):
        check_depth(_nested(MAX_DEPTH + 1, in_list))
    with pytest.raises(BadRequest, match="nested deeper"):
        check_depth({"ok": "x", "deep": _nested(MAX_DEPTH, in_list)})


def test_query_pairs_merge_over_body_values() -> None:
    data = {"state": "CA", "city": "LA"}
    data.update(pairs_to_dict([("state", "NV")]))
    assert data == {"state": "NV", "city": "LA"}


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/xml", "application/xml"),
        ("text/xml", "text/xml"),
        ("text/plain", "text/plain"),
        ("text/*", "text/xml"),
        ("text/plain;q=0.5, application/json;q=0.9", "application/json"),
        ("application/json;q=0, */*;q=0.1", "text/xml"),
        ("image/png", None),
        ("application/json;q=0", None),
    ],
)
def test_accept_header_picks_the_response_type(accept: str | None, chosen: str | None) -> None:
    assert negotiate(accept) == chosen


RESULT = SubmissionResult(outcome="failure", reason="Bad state", lead_id="L1", price=Decimal("0"))


def test_json_response_has_the_spec_shape_with_exact_money() -> None:
    success = SubmissionResult(outcome="success", reason=None, lead_id="L1", price=Decimal("12.5"))
    body = render(success.as_dict(), "application/json")
    assert body == b'{"outcome":"success","lead":{"id":"L1"},"price":12.50}'
    assert orjson.loads(body)["price"] == 12.5


def test_reason_is_absent_on_success_and_present_on_failure() -> None:
    assert orjson.loads(render(RESULT.as_dict(), "application/json"))["reason"] == "Bad state"


def test_xml_response_is_a_result_element() -> None:
    body = render(RESULT.as_dict(), "application/xml").decode()
    assert body.endswith(
        "<result><outcome>failure</outcome><reason>Bad state</reason>"
        "<lead><id>L1</id></lead><price>0.00</price></result>"
    )


def test_plain_text_response_is_key_value_lines() -> None:
    body = render(RESULT.as_dict(), "text/plain").decode()
    assert body == "outcome:failure\nreason:Bad state\nlead.id:L1\nprice:0.00\n"


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("", b"abc"),
        ("identity", b"abc"),
        ("gzip", gzip.compress(b"abc")),
        ("x-gzip", gzip.compress(b"abc")),
        ("deflate", zlib.compress(b"abc")),
        ("deflate", zlib.compress(b"abc", wbits=-zlib.MAX_WBITS)),
    ],
)
def test_a_body_is_decoded_from_its_content_coding(coding: str, encoded: bytes) -> None:
    assert decode_body(encoded, coding, 100) == b"abc"


@pytest.mark.parametrize(
    ("coding", "encoded", "status"),
    [
        ("gzip", b"abc", 400),
        ("gzip", gzip.compress(b"abc")[:-3], 400),
        ("deflate", b"\x78\x9c garbage", 400),
        ("gzip", gzip.compress(b"x" * 101), 413),
        ("br", b"abc", 415),
        ("zzz", b"abc", 415),
    ],
)
def test_a_body_not_in_its_content_coding_is_refused(
    coding: str, encoded: bytes, status: int
) -> None:
    with pytest.raises((BadRequest, Refused)) as info:
        decode_body(encoded, coding, 100)
    assert getattr(info.value, "status", 400) == status


# --- LeadConduit's inbound wire details (SPEC 5.1; activeprospect/leadconduit-integration-default,
# lib/inbound.js and test/inbound_spec.js) ---------------------------------------------------------

JSON_RETRIES = [
    # LeadConduit's own cases: a tab, a newline, a CRLF inside string values.
    (
        b'{\n  "first_name": "Harold",\n  "address_1": "123\t Main St"\n}',
        {"address_1": "123 Main St"},
    ),
    (b'{"address_1": "123 \n      Main St"}', {"address_1": "123       Main St"}),
    (b'{"address_2": "Apt.\r\n123"}', {"address_2": "Apt.123"}),
    (b'{"a": "x\ty",\r\n"b": "1"}', {"a": "xy", "b": "1"}),
    # Valid JSON is read as it is: escaped and structural whitespace stay.
    (b'{"a": "x\\ty"}', {"a": "x\ty"}),
    (b'{\n\t"a": "keep\\nme"\n}', {"a": "keep\nme"}),
]


@pytest.mark.parametrize(("body", "expected"), JSON_RETRIES)
def test_json_with_raw_newlines_or_tabs_is_read_once_more_without_them(
    body: bytes, expected: dict[str, str]
) -> None:
    parsed = parse_body("application/json", body)
    assert {key: parsed[key] for key in expected} == expected


@pytest.mark.parametrize(
    "body", [b'{"a": "x\ty"', b'{"a": \n}', b"{'a': 1}", b'{"a": "\x01"}', b"\t\n[1]"]
)
def test_json_that_does_not_parse_without_them_either_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body("application/json", body)


XML_CASES = [
    # LeadConduit's test body: the root element is the lead, its name is not a field.
    (
        b"<lead>\n  <first_name>Joe</first_name>\n  <last_name>Blow</last_name>\n</lead>",
        {"first_name": "Joe", "last_name": "Blow"},
    ),
    (b"<anything><a>1</a></anything>", {"a": "1"}),
    # Attributes merge into the element's object, its text under "_" (xml2js mergeAttrs).
    (
        b'<lead><phone type="home">5125550142</phone></lead>',
        {"phone": {"_": "5125550142", "type": "home"}},
    ),
    (
        b'<lead><phone type="home" ext="12">5125550142</phone></lead>',
        {"phone": {"_": "5125550142", "type": "home", "ext": "12"}},
    ),
    (b'<lead><phone type="home"/></lead>', {"phone": {"type": "home"}}),
    (
        b'<lead><car make="VW"><year>2020</year></car></lead>',
        {"car": {"make": "VW", "year": "2020"}},
    ),
    (b'<lead source="web"><a>1</a></lead>', {"source": "web", "a": "1"}),
    # An attribute and a child element of one name are a list, as repeated elements.
    (b'<lead><car year="2019"><year>2020</year></car></lead>', {"car": {"year": ["2019", "2020"]}}),
    # Namespaces are dropped from element and attribute names (SPEC 5.1; LeadConduit keeps
    # the prefix: `l:first_name`); declarations are attributes, kept as LeadConduit keeps them.
    (
        b'<l:lead xmlns:l="urn:lead" xmlns:x="urn:x"><l:first_name>Ada</l:first_name>'
        b'<x:phone x:type="cell">1</x:phone></l:lead>',
        {
            "xmlns:l": "urn:lead",
            "xmlns:x": "urn:x",
            "first_name": "Ada",
            "phone": {"_": "1", "type": "cell"},
        },
    ),
    (
        b'<lead xmlns="urn:default"><state>CA</state></lead>',
        {"xmlns": "urn:default", "state": "CA"},
    ),
    (
        b'<lead xmlns="urn:default"><state xmlns="urn:s">CA</state></lead>',
        {"xmlns": "urn:default", "state": {"_": "CA", "xmlns": "urn:s"}},
    ),
    (
        b'<lead xmlns:a="urn:a" xmlns:b="urn:b"><a:x>1</a:x><b:x>2</b:x></lead>',
        {"xmlns:a": "urn:a", "xmlns:b": "urn:b", "x": ["1", "2"]},
    ),
    # Repeated elements are a list; empty elements an empty string; text is kept as sent.
    (b"<lead><a>1</a><a>2</a><a>3</a></lead>", {"a": ["1", "2", "3"]}),
    (
        b"<lead><a/><b></b><c>  x  </c><d>  </d></lead>",
        {"a": "", "b": "", "c": "  x  ", "d": "  "},
    ),
    (b"<lead><a>\n x <b>1</b>\n</a></lead>", {"a": {"_": "\n x \n", "b": "1"}}),
    (b"<lead><![CDATA[]]><a><![CDATA[<b>]]></a></lead>", {"a": "<b>"}),
    # Mixed content: the element's own text under "_" beside its children.
    (b"<lead><a>x<b>1</b>y</a></lead>", {"a": {"b": "1", "_": "xy"}}),
    (b"<lead/>", {}),
    (b"<lead>  </lead>", {}),
]


@pytest.mark.parametrize(("body", "expected"), XML_CASES)
def test_xml_is_read_as_leadconduit_reads_it(body: bytes, expected: dict[str, object]) -> None:
    for media in ("application/xml", "text/xml"):
        assert parse_body(media, body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"xxTrustedFormCertUrl=https://cert.trustedform.com/testtoken",  # LeadConduit's case
        b"<lead>just text</lead>",  # a root with text and no fields: LeadConduit reads a string
        b"<lead><u:a>1</u:a></lead>",  # an undeclared prefix
        b"<lead><a></lead>",
    ],
)
def test_xml_that_is_no_lead_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body("application/xml", body)


NEGOTIATION = [
    (None, "application/json"),
    ("", "application/json"),
    ("*/*", "application/json"),  # LeadConduit: */* means JSON
    ("*", "application/json"),  # Java's URLConnection
    ("*/*;q=0.8", "text/xml"),  # only a bare */* means JSON to LeadConduit
    ("text/html, */*;q=0.1", "text/xml"),
    ("application/*", "application/xml"),  # LeadConduit's matcher picks XML
    ("APPLICATION/*", "application/xml"),
    ("text/*", "text/xml"),
    ("application/*, text/*", "text/xml"),
    ("application/*, */*", "application/xml"),
    ("application/json", "application/json"),
    ("Application/JSON", "application/json"),
    ("application/xml", "application/xml"),
    ("TEXT/XML", "text/xml"),
    ("text/plain", "text/plain"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/xml"),
    ("text/plain;q=0.5, application/json;q=0.9", "application/json"),
    # quality before specificity (RFC 9110; LeadConduit's matcher: application/xml)
    ("application/xml;q=0.5, */*", "text/xml"),
    ("application/json;q=0, */*;q=0.1", "text/xml"),
    ("application/json;q=abc", None),
    ("application/json;q=2", "application/json"),
    ("image/png", None),
    ("application/json;q=0", None),
    ("application/x-www-form-urlencoded", None),
]


@pytest.mark.parametrize(("accept", "chosen"), NEGOTIATION)
def test_accept_is_matched_case_insensitively_in_leadconduits_order(
    accept: str | None, chosen: str | None
) -> None:
    assert negotiate(accept) == chosen


CERT = "https://cert.trustedform.com/1.whomever"
PING = "https://ping.trustedform.com/0.whatever"
TRUSTEDFORM = [
    # (fields, on a ping?, trustedform_cert_url afterwards or None)
    ({"xxTrustedFormCertUrl": CERT}, False, CERT),
    ({"XXTRUSTEDFORMCERTURL": CERT}, False, CERT),
    ({"xxtrustedformcerturl": CERT}, True, CERT),
    ({"xxTrustedFormPingUrl": PING}, True, PING),
    ({"trustedform_ping_url": PING}, True, PING),
    ({"TrustedForm_Ping_URL": PING}, True, PING),
    ({"xxTrustedFormPingUrl": PING, "xxTrustedFormCertUrl": CERT}, True, PING),
    ({"xxTrustedFormPingUrl": PING, "xxTrustedFormCertUrl": CERT}, False, CERT),
    ({"xxTrustedFormPingUrl": PING}, False, None),  # LeadConduit drops it on a submission
    ({"trustedform_cert_url": CERT}, False, CERT),
    ({"trustedform_cert_url": "old", "xxTrustedFormCertUrl": CERT}, False, CERT),
    ({"xxTrustedFormCertUrl": ""}, False, None),
    ({"first_name": "Ada"}, True, None),
]


@pytest.mark.parametrize(("fields", "ping", "expected"), TRUSTEDFORM)
def test_trustedform_parameters_are_renamed_as_leadconduit_does(
    fields: dict[str, str], ping: bool, expected: str | None
) -> None:
    renamed = dict(fields)
    rename_trustedform(renamed, ping)
    assert renamed.get("trustedform_cert_url") == expected
    aliases = {"xxtrustedformcerturl", "xxtrustedformpingurl", "trustedform_ping_url"}
    assert not {name.lower() for name in renamed} & aliases


@pytest.mark.parametrize(
    "url",
    [
        "http://foo/bar?baz=bip",  # LeadConduit's case
        "https://example.com/thanks.html",
        "HTTPS://EXAMPLE.COM/",
        "http://127.0.0.1:8080/x#done",
        "http://[::1]/ok",
    ],
)
def test_an_http_redirect_url_is_taken_as_it_is(url: str) -> None:
    assert redirect_target(url) == url


def test_a_repeated_redirect_url_is_its_first() -> None:
    # LeadConduit takes the first of `redir_url=http://a.com&redir_url=http://b.com`.
    assert redirect_target(["http://a.com", "http://b.com"]) == "http://a.com"
    with pytest.raises(BadRequest):
        redirect_target(["ftp://a.com", "http://b.com"])


def test_a_form_body_is_trimmed_before_it_is_read() -> None:
    # LeadConduit trims the body: "  first_name=Ada  " is first_name "Ada".
    assert parse_body("application/x-www-form-urlencoded", b"  first_name=Ada  ") == {
        "first_name": "Ada"
    }


@pytest.mark.parametrize(
    "value",
    [
        "scooby.doo",  # LeadConduit's case
        "",
        "/relative/path",
        "//example.com/no-scheme",
        "ftp://example.com/",
        "javascript:alert(1)",
        "http://",
        "http:///path",
        "http://example.com/a b",
        "http://example.com/\r\nSet-Cookie: x=1",
        "http://exämple.com/",
        "http://example.com:port/",
        "http://[::1/",
        "http://example.com/" + "x" * 2048,
        {"x": "http://example.com/"},  # redir_url.x=…
    ],
)
def test_anything_else_as_redirect_url_is_a_bad_request(value: object) -> None:
    with pytest.raises(BadRequest, match="redir_url"):
        redirect_target(value)


def test_vendor_parameters_take_out_what_is_no_lead_field() -> None:
    read = read_vendor_parameters(
        {"first_name": "Ada", "price": "12.50", "ping_id": "p1", "redir_url": "https://v.example/"}
    )
    assert read.submission.fields == {"first_name": "Ada"}
    assert read.submission.override_price == "12.50"
    assert read.submission.ping_id == "p1"
    assert read.redirect == "https://v.example/"


def test_a_nested_price_is_no_override() -> None:
    read = read_vendor_parameters({"price.amount": "1"})
    assert read.submission.override_price == "not a single value"
    assert "price" not in read.submission.fields


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_idempotency_key_must_be_1_to_255_characters(key: str) -> None:
    with pytest.raises(BadRequest, match="Idempotency-Key"):
        checked_idempotency_key(key)
    assert checked_idempotency_key("k" * 255) == "k" * 255
