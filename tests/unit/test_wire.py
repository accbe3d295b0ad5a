"""The shared wire types convert without losing a field."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from leadflow.common.v1 import lead_pb2
from leadflow.fields import parse_lead
from leadflow.wire import DeliveryAttempt, LeadData

ATTEMPT = DeliveryAttempt(
    number=2,
    request="POST https://buyer.example/leads\n\n{}",
    response="HTTP/1.1 503 Service Unavailable",
    status_code=503,
    duration_ms=120,
    error="HTTP 503",
    captured={"cookie": "sid=1; path=/", "lead_id": "77"},
)


def test_a_delivery_attempt_survives_the_proto_round_trip() -> None:
    assert DeliveryAttempt.from_proto(ATTEMPT.to_proto()) == ATTEMPT


def test_a_delivery_attempt_as_json_has_every_field_and_reads_back() -> None:
    as_json = ATTEMPT.to_json()
    assert set(as_json) == {field.name for field in dataclasses.fields(DeliveryAttempt)}
    assert DeliveryAttempt.from_json(as_json) == ATTEMPT


def test_an_attempt_stored_before_captures_reads_back_without_any() -> None:
    stored = {k: v for k, v in ATTEMPT.to_json().items() if k != "captured"}
    attempt = DeliveryAttempt.from_json(stored)
    assert attempt.captured == {}
    assert attempt.to_json() == stored
    assert DeliveryAttempt.from_proto(attempt.to_proto()).captured == {}


# --- the typed lead ------------------------------------------------------------------------------

SUBMITTED = {
    "phone_1": "(512) 555-1234 x12",
    "email": "A@B.com",
    "state": "tx",
    "dob": "1990-02-03",
    "opted_in": "yes",
    "age": "31",
    "tags": ["a", "b"],
    "home": {"owner": "yes", "years": "4"},
    "empty_object": {},
    "empty_list": [],
    "nothing": None,
}


def _lead(fields: dict[str, object]) -> LeadData:
    return LeadData("L1", "auto", "vendor", fields, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def test_a_parsed_lead_survives_the_typed_wire_unchanged() -> None:
    fields = parse_lead(SUBMITTED, {"opted_in": "boolean", "age": "number"})
    wire = lead_pb2.Lead.FromString(_lead(fields).to_proto().SerializeToString())
    assert LeadData.from_proto(wire) == _lead(fields)


def test_field_values_travel_typed_not_as_text() -> None:
    fields = parse_lead(SUBMITTED, {"opted_in": "boolean", "age": "number"})
    wire = _lead(fields).to_proto()
    by_name = {entry.name: entry.value for entry in wire.fields}
    phone = by_name["phone_1"].field
    assert (phone.kind, phone.raw, phone.normal.text, phone.valid) == (
        "phone",
        "(512) 555-1234 x12",
        "5125551234x12",
        True,
    )
    components = {entry.name: entry.value for entry in phone.components}
    assert components["area"].text == "512"
    assert components["country_calling_code"].integer == 1
    assert by_name["opted_in"].field.normal.flag is True
    assert by_name["home"].map.entries[0].value.field.kind == "string"
    assert by_name["tags"].list.items[1].text == "b"


def test_the_fields_keep_the_order_they_were_sent_in() -> None:
    fields = parse_lead({"zeta": "1", "alpha": "2", "mid": {"z": "1", "a": "2"}})
    wire = lead_pb2.Lead.FromString(_lead(fields).to_proto().SerializeToString())
    read = LeadData.from_proto(wire).fields
    assert list(read) == ["zeta", "alpha", "mid"]
    assert list(read["mid"]) == ["z", "a"]
    assert list(read["zeta"]) == list(fields["zeta"])  # the components too


@pytest.mark.parametrize(
    "value",
    [10**30, -(10**30), Decimal("12.345"), 1.5, -(2**63), 2**63 - 1, "", True, None],
)
def test_plain_values_read_back_exactly(value: object) -> None:
    wire = _lead({"v": value}).to_proto()
    assert LeadData.from_proto(wire).fields == {"v": value}


def test_a_lead_stored_before_the_typed_wire_reads_its_json_fields() -> None:
    stored = lead_pb2.Lead(id="L0", legacy_fields_json=b'{"email": {"raw": "a@b.co"}}')
    assert LeadData.from_proto(stored).fields == {"email": {"raw": "a@b.co"}}
