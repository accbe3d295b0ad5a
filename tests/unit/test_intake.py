"""Vendor request parsing and response rendering (SPEC 5.1)."""

import gzip
import zlib
from decimal import Decimal

import orjson
import pytest

from gateway.intake import (
    BadRequest,
    Refused,
    SubmissionResult,
    decode_body,
    negotiate,
    pairs_to_dict,
    parse_body,
    render,
    unflatten,
)


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
    assert unflatten({"a.b": "1", "a.c": "2", "d": "3"}) == {"a": {"b": "1", "c": "2"}, "d": "3"}


def test_a_key_that_is_both_a_value_and_an_object_is_refused() -> None:
    with pytest.raises(BadRequest, match="both a value and an object"):
        unflatten({"a": "1", "a.b": "2"})


def test_too_many_fields_are_refused() -> None:
    with pytest.raises(BadRequest, match="too many fields"):
        unflatten({f"f{i}": "x" for i in range(1001)})


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
        ("application/json;q=0, */*;q=0.1", "application/xml"),
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
