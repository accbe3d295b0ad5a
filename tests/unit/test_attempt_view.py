"""One view of a delivery attempt for operators: on a lead's recipient event and on a batch."""

from gateway.batches_api import batch_json
from gateway.lead_view import attempt_json
from leadflow.common.v1 import lead_pb2
from leadflow.delivery.v1 import delivery_service_pb2


def _attempt(**values: object) -> lead_pb2.DeliveryAttempt:
    return lead_pb2.DeliveryAttempt(number=1, request="POST /leads", **values)  # type: ignore[arg-type]


def test_an_attempt_shows_its_answer_and_what_was_captured() -> None:
    attempt = _attempt(
        response="200 OK", status_code=200, duration_ms=42, captured={"cookie": "abc"}
    )
    assert attempt_json(attempt) == {
        "number": 1,
        "request": "POST /leads",
        "response": "200 OK",
        "status_code": 200,
        "ms": 42,
        "error": None,
        "captured": {"cookie": "abc"},
    }


def test_an_attempt_without_answer_shows_nulls() -> None:
    view = attempt_json(_attempt(error="timed out"))
    assert (view["status_code"], view["error"], view["captured"]) == (None, "timed out", None)


def test_a_batch_shows_its_attempts_as_a_lead_does() -> None:
    attempt = _attempt(error="refused", duration_ms=7)
    batch = delivery_service_pb2.Batch(id="b1", buyer_id="acme", attempts=[attempt])
    assert batch_json(batch)["attempts"] == [attempt_json(attempt)]
