"""Buyer feedback (SPEC 5.3): `POST /feedback` with the buyer's key, returns and conversions
judged by the ledger under the buyer's `returns` policy; `POST /returns/{id}/approve|deny` for
operators. Also the JSON of feedback, postings and batch outcomes that `GET /leads/{id}` shows."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.clients import Downstream
from gateway.intake import (
    NOT_ACCEPTABLE,
    BadRequest,
    Refused,
    error_response,
    negotiate,
    render,
)
from gateway.outbox import LedgerOutbox
from gateway.submission import checked_idempotency_key
from leadflow.config import Buyer, Config
from leadflow.ids import new_id
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.money import CENT, is_price, parse_amount
from leadflow.wire import from_proto, outcome_from_proto, to_proto

JSON = "application/json"
MAX_REASON = 500
TYPES = {"return": pb.FEEDBACK_TYPE_RETURN, "conversion": pb.FEEDBACK_TYPE_CONVERSION}
TYPE_NAMES = {value: name for name, value in TYPES.items()}
STATUS_NAMES = {
    pb.FEEDBACK_STATUS_APPROVED: "approved",
    pb.FEEDBACK_STATUS_PENDING: "pending",
    pb.FEEDBACK_STATUS_DENIED: "denied",
}


def _respond(data: dict[str, Any], status: int, media: str = JSON) -> web.Response:
    return web.Response(status=status, body=render(data, media), content_type=media)


def authenticated_buyer(config: Config, request: web.Request) -> Buyer | None:
    """The buyer whose api_key the request presents; a buyer without one never matches."""
    from gateway.http_api import presented_key  # http_api registers these routes

    presented = presented_key(request)
    if presented is None:
        return None
    for buyer in config.buyers:
        if buyer.api_key and hmac.compare_digest(presented.encode(), buyer.api_key.encode()):
            return buyer
    return None


def feedback_id(buyer_id: str, idempotency_key: str | None) -> str:
    """Time-ordered and unguessable; derived from the buyer's Idempotency-Key when it sends one,
    so a retried POST names the same feedback and the ledger returns the first result."""
    if idempotency_key is None:
        return new_id()
    digest = hashlib.sha256(f"{buyer_id}\n{idempotency_key}".encode()).hexdigest()
    return f"k{digest[:23]}"


def return_policy(config: Config, buyer: Buyer) -> pb.ReturnPolicy | None:
    returns = buyer.returns
    if returns is None:
        return None
    return pb.ReturnPolicy(
        window_days=returns.window_days,
        max_percent=str(returns.max_percent),
        auto_approve=returns.auto_approve,
        reasons=returns.reasons,
        return_to_source=returns.return_to_source,
        time_zone=buyer.time_zone or config.account.time_zone,
    )


async def _parameters(request: web.Request) -> dict[str, Any]:
    from gateway.http_api import read_parameters  # http_api registers these routes

    return await read_parameters(request)


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if isinstance(value, dict | list | bool):
        raise BadRequest(f"{name} must be a single value")
    return str(value).strip()


def feedback_request(
    config: Config, buyer: Buyer, data: dict[str, Any], idempotency_key: str | None
) -> pb.SubmitFeedbackRequest:
    """The ledger request for a buyer's parameters; BadRequest names what is wrong."""
    lead_id = _text(data, "lead_id")
    event_id = _text(data, "event_id")
    if not lead_id and not event_id:
        raise BadRequest("lead_id or event_id is required")
    kind = _text(data, "type").lower()
    if kind not in TYPES:
        raise BadRequest("type must be return or conversion")
    reason = " ".join(_text(data, "reason").split())  # control characters become spaces
    if len(reason) > MAX_REASON:
        raise BadRequest(f"reason must be at most {MAX_REASON} characters")
    message = pb.SubmitFeedbackRequest(
        feedback_id=feedback_id(buyer.id, idempotency_key),
        buyer_id=buyer.id,
        lead_id=lead_id,
        recipient_event_id=event_id,
        type=TYPES[kind],
        reason=reason,
    )
    if data.get("amount") not in (None, ""):
        amount = parse_amount(data["amount"])
        # Bounded before quantize, which raises InvalidOperation on huge values (1e999: a 500).
        if amount is None or not is_price(amount) or amount != amount.quantize(CENT):
            raise BadRequest("amount must be an amount of money (0 to 1,000,000, cents precision)")
        message.amount.CopyFrom(to_proto(amount, config.account.currency))
    policy = return_policy(config, buyer)
    if policy is not None:
        message.return_policy.CopyFrom(policy)
    return message


def _result(feedback: pb.Feedback) -> dict[str, Any]:
    """SPEC 5.3's answer: outcome, reason (on failure), feedback id and status."""
    outcome = outcome_from_proto(feedback.outcome)
    data: dict[str, Any] = {"outcome": outcome}
    if outcome != "success":
        data["reason"] = feedback.outcome_reason
    data["feedback"] = {"id": feedback.id, "status": STATUS_NAMES.get(feedback.status, "denied")}
    return data


def add_feedback_routes(
    app: web.Application, config: Config, downstream: Downstream, outbox: LedgerOutbox
) -> None:
    """Register POST /feedback and POST /returns/{feedback_id}/approve|deny."""

    async def submit(request: web.Request) -> web.Response:
        media = negotiate(request.headers.get("Accept"))
        if media is None:
            return error_response(406, NOT_ACCEPTABLE)
        buyer = authenticated_buyer(config, request)
        if buyer is None:
            return error_response(401, "Unauthorized buyer", media)
        try:
            key = checked_idempotency_key(request.headers.get("Idempotency-Key"))
            message = feedback_request(config, buyer, await _parameters(request), key)
        except Refused as exc:
            from gateway.http_api import refused_response  # http_api registers these routes

            return refused_response(exc, media)
        except BadRequest as exc:
            return error_response(400, str(exc), media)
        try:
            await outbox.flushed()  # the ledger has this gateway's latest leads
            reply = await downstream.submit_feedback(message)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return error_response(404, "Unknown lead or event", media)
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return error_response(400, exc.details() or "Invalid feedback", media)
            return error_response(503, "Ledger unavailable", media, outcome="error")
        return _respond(_result(reply.feedback), 201, media)

    def decide(approve: bool) -> Any:
        async def handler(request: web.Request) -> web.Response:
            from gateway.http_api import key_matches  # http_api registers these routes

            if not key_matches(request, config.account.admin_api_key):
                return error_response(401, "Unauthorized")
            try:
                reply = await downstream.decide_return(request.match_info["feedback_id"], approve)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    return error_response(404, "Unknown return")
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    return error_response(409, exc.details() or "Return already decided")
                return error_response(503, "Ledger unavailable", outcome="error")
            return _respond(_result(reply.feedback), 200)

        return handler

    app.router.add_post("/feedback", submit)
    app.router.add_post("/returns/{feedback_id}/approve", decide(True))
    app.router.add_post("/returns/{feedback_id}/deny", decide(False))


# --- What GET /leads/{id} shows beside the events ---------------------------------------------


def _time(stamp: Timestamp, present: bool) -> str | None:
    return stamp.ToDatetime().isoformat() + "Z" if present else None


def feedback_json(feedback: pb.Feedback) -> dict[str, Any]:
    return {
        "id": feedback.id,
        "type": TYPE_NAMES.get(feedback.type, "return"),
        "buyer_id": feedback.buyer_id,
        "recipient_event_id": feedback.recipient_event_id,
        "reason": feedback.reason or None,
        "amount": from_proto(feedback.amount),
        "outcome": outcome_from_proto(feedback.outcome),
        "outcome_reason": feedback.outcome_reason or None,
        "status": STATUS_NAMES.get(feedback.status, "denied"),
        "created_at": _time(feedback.create_time, feedback.HasField("create_time")),
        "decided_at": _time(feedback.decide_time, feedback.HasField("decide_time")),
    }


def posting_json(posting: pb.Posting) -> dict[str, Any]:
    return {
        "id": posting.id,
        "kind": posting.kind,
        "debit": posting.debit_account,
        "credit": posting.credit_account,
        "amount": from_proto(posting.amount),
        "effective_at": _time(posting.effective_time, posting.HasField("effective_time")),
        "posted_at": _time(posting.post_time, posting.HasField("post_time")),
    }


def delivery_outcome_json(outcome: pb.DeliveryOutcome) -> dict[str, Any]:
    return {
        "recipient_event_id": outcome.recipient_event_id,
        "outcome": outcome_from_proto(outcome.outcome),
        "reason": outcome.reason or None,
        "sale_price": from_proto(outcome.sale_price),
        "batch_id": outcome.batch_id or None,
        "completed_at": _time(outcome.complete_time, outcome.HasField("complete_time")),
    }


def ledger_sections(reply: pb.GetLeadResponse) -> dict[str, Any]:
    """`feedback`, `postings` and `delivery_outcomes` for the lead view."""
    return {
        "delivery_outcomes": [delivery_outcome_json(item) for item in reply.delivery_outcomes],
        "feedback": [feedback_json(item) for item in reply.feedback],
        "postings": [posting_json(item) for item in reply.postings],
    }
