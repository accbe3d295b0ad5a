"""The shared wire types convert without losing a field."""

from __future__ import annotations

import dataclasses

from leadflow.wire import DeliveryAttempt

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
