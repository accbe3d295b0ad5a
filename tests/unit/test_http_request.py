"""Building a buyer's HTTP request: formats, mapping, auth, signing, masking, backoff (SPEC 8.1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.etree import ElementTree

import orjson
import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from delivery_service.http_adapter import (
    MASK,
    PreparedRequest,
    RequestBuilder,
    backoff_ms,
    forbidden_reason,
    literal_host_refusal,
    retry_after_ms,
    signature_headers,
    split_url_template,
    wire_url,
)
from leadflow.config import HttpDelivery, Retry
from leadflow.fields import parse_lead
from leadflow.variables import build_context

FIELDS = parse_lead(
    {
        "first_name": "Ada",
        "phone_1": "(512) 555-1234",
        "state": "california",
        "email": "Ada@Example.com",
        "vehicle": {"make": "Ford", "year": "2019"},
    }
)
CONTEXT = build_context(
    FIELDS,
    flow={"id": "auto", "name": "Auto"},
    source={"id": "vendor", "name": "Vendor"},
    buyer={"id": "acme", "name": "Acme"},
    purchase_price=Decimal("4.00"),
    sale_price=Decimal("12.50"),
)


def build(**spec: Any) -> PreparedRequest:
    values = {"type": "http", "url": "https://buyer.example/leads", **spec}
    return RequestBuilder(HttpDelivery.model_validate(values)).build(FIELDS, CONTEXT)


def test_json_without_mapping_sends_every_field_normalised() -> None:
    body = orjson.loads(build().body)
    assert body == {
        "first_name": "Ada",
        "phone_1": "5125551234",
        "state": "CA",
        "email": "ada@example.com",
        "vehicle": {"make": "Ford", "year": "2019"},
    }


def test_json_request_has_a_json_content_type() -> None:
    assert build().headers["Content-Type"] == "application/json"


def test_mapping_renders_templates_with_normal_values_and_prices() -> None:
    mapping = {
        "phone": "{{lead.phone_1}}",
        "st": "{{state}}",
        "price": "{{sale_price}}",
        "src": "{{source.id}}",
        "cost": "{{purchase_price}}",
        "to": "{{buyer.name}}",
    }
    body = orjson.loads(build(mapping=mapping).body)
    assert body == {
        "phone": "5125551234",
        "st": "CA",
        "price": "12.50",
        "src": "vendor",
        "cost": "4.00",
        "to": "Acme",
    }


def test_mapping_dot_keys_nest_in_json() -> None:
    body = orjson.loads(build(mapping={"contact.phone": "{{phone_1}}", "id": "x"}).body)
    assert body == {"contact": {"phone": "5125551234"}, "id": "x"}


def test_form_body_is_urlencoded_with_dot_keys_for_groups() -> None:
    request = build(format="form")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    pairs = dict(parse_qsl(request.body.decode()))
    assert pairs["phone_1"] == "5125551234"
    assert pairs["vehicle.make"] == "Ford"


def test_xml_body_is_a_lead_element_with_escaped_values() -> None:
    request = build(format="xml", mapping={"name": "<{{first_name}} & co>", "a.b": "1"})
    root = ElementTree.fromstring(request.body)
    assert root.tag == "lead"
    assert root.findtext("name") == "<Ada & co>"
    assert root.findtext("a/b") == "1"
    assert request.headers["Content-Type"].startswith("application/xml")


def test_xml_element_names_are_made_valid() -> None:
    root = ElementTree.fromstring(build(format="xml", mapping={"First Name": "x"}).body)
    assert root.findtext("First_Name") == "x"


def test_query_format_puts_fields_in_the_query_string() -> None:
    request = build(
        format="query", url="https://buyer.example/leads?key=abc", mapping={"phone": "{{phone_1}}"}
    )
    assert request.body == b""
    assert parse_qsl(urlsplit(request.url).query) == [("key", "abc"), ("phone", "5125551234")]


def test_get_always_sends_fields_as_query() -> None:
    request = build(method="GET", format="json", mapping={"st": "{{state}}"})
    assert (request.method, request.body, urlsplit(request.url).query) == ("GET", b"", "st=CA")


def test_url_template_values_are_url_quoted() -> None:
    request = build(url="https://buyer.example/leads/{{email}}?n={{first_name}}&e={{email}}")
    assert request.url == (
        "https://buyer.example/leads/ada%40example%2Ecom?n=Ada&e=ada%40example.com"
    )


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("..", "/v1/%2E%2E/leads"),
        (".", "/v1/%2E/leads"),
        ("../../admin", "/v1/%2E%2E%2F%2E%2E%2Fadmin/leads"),
        ("a?b=1#c", "/v1/a%3Fb%3D1%23c/leads"),
        ("%2e%2e", "/v1/%252e%252e/leads"),
    ],
)
def test_lead_values_in_a_url_path_stay_one_segment_of_data(value: str, path: str) -> None:
    fields = parse_lead({"campaign": value})
    context = build_context(fields, flow={}, source={}, buyer={})
    spec = HttpDelivery.model_validate(
        {"type": "http", "url": "https://buyer.example/v1/{{campaign}}/leads?k=1"}
    )
    request = RequestBuilder(spec).build(fields, context)
    assert urlsplit(request.url).path == path
    # What aiohttp is handed: no dot segment removed, no escape decoded.
    assert wire_url(request.url).raw_path_qs == f"{path}?k=1"


def test_wire_url_keeps_escapes_and_quotes_only_what_must_be() -> None:
    url = wire_url("https://u:p@Bücher.example:8443/a b/%2E%2E/ü?q=a b&r=%2E")
    assert str(url) == "https://u:p@xn--bcher-kva.example:8443/a%20b/%2E%2E/%C3%BC?q=a%20b&r=%2E"
    assert (url.user, url.password) == ("u", "p")


def test_a_question_mark_inside_a_template_expression_does_not_end_the_path() -> None:
    assert split_url_template("https://x/{{a}}/b?c={{d}}#e") == (
        "https://x",
        "/{{a}}/b",
        "?c={{d}}#e",
    )
    assert split_url_template("https://x/{{a}}") == ("https://x", "/{{a}}", "")
    assert split_url_template("https://{{h}}.x?q=1") == ("https://{{h}}.x", "", "?q=1")
    assert split_url_template("{{base}}/leads") == ("", "{{base}}/leads", "")


def test_a_value_in_the_host_keeps_its_dots() -> None:
    fields = parse_lead({"region": "us.east"})
    context = build_context(fields, flow={}, source={}, buyer={})
    spec = HttpDelivery.model_validate(
        {"type": "http", "url": "https://{{region}}.buyer.example/{{region}}"}
    )
    request = RequestBuilder(spec).build(fields, context)
    assert request.url == "https://us.east.buyer.example/us%2Eeast"


def test_header_templates_are_rendered() -> None:
    request = build(headers={"X-Source": "{{source.id}}"})
    assert request.headers["X-Source"] == "vendor"


def test_header_values_cannot_smuggle_new_lines() -> None:
    fields = parse_lead({"first_name": "Ada\r\nX-Evil: 1"})
    spec = HttpDelivery.model_validate(
        {"type": "http", "url": "https://b.example", "headers": {"X-Name": "{{first_name}}"}}
    )
    request = RequestBuilder(spec).build(fields, build_context(fields))
    assert "\n" not in request.headers["X-Name"] and "\r" not in request.headers["X-Name"]


def test_basic_auth_header() -> None:
    request = build(auth={"type": "basic", "username": "u", "password": "s3cret-pw"})
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"u:s3cret-pw").decode()


def test_bearer_auth_header() -> None:
    request = build(auth={"type": "bearer", "token": "tok-123456"})
    assert request.headers["Authorization"] == "Bearer tok-123456"


def test_described_request_masks_the_auth_header_and_password() -> None:
    request = build(auth={"type": "basic", "username": "u", "password": "s3cret-pw"})
    assert f"Authorization: {MASK}" in request.described
    assert "s3cret-pw" not in request.described
    assert base64.b64encode(b"u:s3cret-pw").decode() not in request.described


def test_described_request_masks_secret_looking_headers_and_fields() -> None:
    request = build(
        headers={"X-Api-Key": "key-98765"},
        mapping={"api_key": "key-98765", "password": "pw-4321", "phone": "{{phone_1}}"},
    )
    assert "key-98765" not in request.described
    assert "pw-4321" not in request.described
    assert "5125551234" in request.described


def test_described_request_masks_a_nested_secret_of_a_dot_key_mapping() -> None:
    request = build(mapping={"auth.token": "tok-55555", "contact.phone": "{{phone_1}}"})
    assert orjson.loads(request.body)["auth"] == {"token": "tok-55555"}
    assert "tok-55555" not in request.described
    assert '"token":"***"' in request.described
    assert "5125551234" in request.described


def test_described_request_masks_a_secret_looking_lead_field_sent_without_mapping() -> None:
    fields = parse_lead({"first_name": "Ada", "account": {"password": "pw-777777"}})
    spec = HttpDelivery.model_validate({"type": "http", "url": "https://buyer.example/leads"})
    builder = RequestBuilder(spec)
    request = builder.build(fields, build_context(fields))
    assert orjson.loads(request.body)["account"] == {"password": "pw-777777"}
    assert "pw-777777" not in request.described
    # A lead without one shows its body as sent.
    plain = builder.build(FIELDS, CONTEXT)
    assert plain.described.partition("\n\n")[2] == plain.body.decode()


def test_described_url_follows_the_lead_values_in_it() -> None:
    spec = HttpDelivery.model_validate(
        {"type": "http", "method": "GET", "url": "https://buyer.example/leads?token=tk-123456"}
    )
    builder = RequestBuilder(spec)
    for state, code in (("california", "CA"), ("texas", "TX"), ("california", "CA")):
        fields = parse_lead({"state": state})
        request = builder.build(fields, build_context(fields))
        first_line = request.described.splitlines()[0]
        assert first_line == f"GET {request.url.replace('tk-123456', MASK)}"
        assert dict(parse_qsl(urlsplit(request.url).query))["state"] == code


def test_described_request_masks_a_url_password_and_token_parameter() -> None:
    request = build(url="https://user:hunter22@buyer.example/leads?token=tk-abcdef&a=1")
    first_line = request.described.splitlines()[0]
    assert "hunter22" not in first_line and "tk-abcdef" not in first_line
    assert first_line.startswith("POST https://user:***@buyer.example/leads?token=***&a=1")


def test_described_request_shows_method_url_headers_and_body() -> None:
    request = build(mapping={"st": "{{state}}"})
    head, _, body = request.described.partition("\n\n")
    assert head.splitlines()[0] == "POST https://buyer.example/leads"
    assert "Content-Type: application/json" in head.splitlines()
    assert body == '{"st":"CA"}'


def test_signing_adds_standard_webhooks_headers_and_masks_the_signature() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    spec = HttpDelivery.model_validate(
        {"type": "http", "url": "https://b.example", "signing_secret": secret}
    )
    builder = RequestBuilder(spec)
    signed = builder.sign(builder.build(FIELDS, CONTEXT), "evt_1", 1_700_000_000)
    expected = base64.b64encode(
        hmac.new(b"0123456789abcdef", b"evt_1.1700000000." + signed.body, hashlib.sha256).digest()
    ).decode()
    assert signed.headers["webhook-id"] == "evt_1"
    assert signed.headers["webhook-timestamp"] == "1700000000"
    assert signed.headers["webhook-signature"] == f"v1,{expected}"
    assert f"webhook-signature: {MASK}" in signed.described
    assert expected not in signed.described and secret not in signed.described


def test_an_unsigned_request_still_carries_its_webhook_id_and_timestamp() -> None:
    """SPEC 8.1: a buyer de-duplicates a resent lead on webhook-id, signed or not."""
    builder = RequestBuilder(HttpDelivery.model_validate({"type": "http", "url": "https://b.x"}))

    sent = builder.sign(builder.build(FIELDS, CONTEXT), "evt_1", 1_700_000_000)

    assert sent.headers["webhook-id"] == "evt_1"
    assert sent.headers["webhook-timestamp"] == "1700000000"
    assert "webhook-signature" not in sent.headers
    assert "webhook-id: evt_1" in sent.described


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(b"0123456789abcdef").decode(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "plain-secret",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ],
)
def test_standard_webhooks_library_verifies_our_signature(secret: str) -> None:
    body = b'{"first_name":"Ada"}'
    headers = signature_headers(secret, "evt_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"first_name": "Ada"}


@pytest.mark.parametrize("secret", ["!!!", "s3cr3t value with spaces!"])
def test_a_plain_secret_that_is_not_base64_signs_with_its_text(secret: str) -> None:
    body = b"{}"
    headers = signature_headers(secret, "evt_1", int(time.time()), body)
    assert Webhook(secret.encode()).verify(body, headers) == {}


def test_a_tampered_body_fails_standard_webhooks_verification() -> None:
    headers = signature_headers("plain-secret", "evt_1", int(time.time()), b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook("plain-secret").verify(b'{"x":1}', headers)


@pytest.mark.parametrize("mapping", [{"a": "1", "a.b": "2"}, {"a..b": "1"}])
def test_a_json_mapping_whose_keys_cannot_nest_is_refused_at_load(mapping: dict[str, str]) -> None:
    # Sent flat beside its parent, `a.b` would reach the buyer in a shape the mapping does not
    # describe; the vendor side refuses the same keys (leadflow.payload.unflatten).
    with pytest.raises(ValidationError, match="mapping"):
        build(mapping=mapping)


def test_a_form_mapping_keeps_its_dot_keys_flat() -> None:
    request = build(format="form", mapping={"a": "1", "a.b": "2"})
    assert parse_qsl(request.body.decode()) == [("a", "1"), ("a.b", "2")]


RETRY = Retry(attempts=5, backoff_ms=100, multiplier=Decimal(2), max_backoff_ms=500)


@pytest.mark.parametrize(("failed_attempt", "expected"), [(1, 100), (2, 200), (3, 400), (4, 500)])
def test_backoff_grows_exponentially_up_to_the_cap(failed_attempt: int, expected: float) -> None:
    assert backoff_ms(RETRY, failed_attempt) == expected


def test_retry_after_replaces_the_backoff() -> None:
    assert backoff_ms(RETRY, 1, retry_after_ms("0")) == 0
    assert backoff_ms(RETRY, 3, retry_after_ms("0")) == 0


def test_retry_after_beyond_max_backoff_means_no_next_attempt() -> None:
    assert backoff_ms(RETRY, 1, retry_after_ms("120")) is None


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_ms("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10_000


def test_unreadable_retry_after_is_ignored() -> None:
    assert retry_after_ms("soon") is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "non-public"),
        ("192.168.0.9", "non-public"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.64.0.1", "non-public"),
    ],
)
def test_private_addresses_are_refused(address: str, kind: str) -> None:
    assert forbidden_reason(address) == f"a private address ({kind})"


def test_public_address_is_allowed() -> None:
    assert forbidden_reason("93.184.216.34") is None


def test_literal_private_host_in_a_url_is_refused_by_name() -> None:
    assert literal_host_refusal("http://127.0.0.1:8080/x") == (
        "refused: 127.0.0.1 is a private address (loopback)"
    )
    assert literal_host_refusal("http://buyer.example/x") is None
