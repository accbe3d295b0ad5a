"""Operators' batch endpoints (SPEC 5.4): list a batch buyer's queue and files, deliver the
pending leads now, resend a delivered file. Admin key required, as for every operator call."""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.clients import Downstream
from gateway.intake import error_response, render
from gateway.lead_view import attempt_json
from leadflow.config import Config
from leadflow.delivery.v1 import delivery_service_pb2

JSON = "application/json"
MAX_LIMIT = 500
MAX_REQUEST_ID = 128
_STATUS = {
    delivery_service_pb2.BATCH_STATUS_SENDING: "sending",
    delivery_service_pb2.BATCH_STATUS_DELIVERED: "delivered",
    delivery_service_pb2.BATCH_STATUS_FAILED: "failed",
}
_KIND = {
    delivery_service_pb2.BATCH_KIND_SCHEDULED: "scheduled",
    delivery_service_pb2.BATCH_KIND_MANUAL: "manual",
    delivery_service_pb2.BATCH_KIND_RETRY: "retry",
    delivery_service_pb2.BATCH_KIND_RESEND: "resend",
}
_HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
}


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=render(data, JSON), content_type=JSON)


def _time(stamp: Timestamp, present: bool = True) -> str | None:
    return stamp.ToDatetime().isoformat() + "Z" if present else None


def batch_json(batch: delivery_service_pb2.Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "buyer_id": batch.buyer_id,
        "status": _STATUS.get(batch.status, "unknown"),
        "kind": _KIND.get(batch.kind, "unknown"),
        "resend_of": batch.resend_of_batch_id or None,
        "leads": batch.lead_count,
        "file": batch.file_name,
        "bytes": batch.size_bytes,
        "created_at": _time(batch.create_time),
        "completed_at": _time(batch.complete_time, batch.HasField("complete_time")),
        "reason": batch.reason or None,
        "attempts": [attempt_json(attempt) for attempt in batch.attempts],
        "recipient_event_ids": list(batch.recipient_event_ids),
    }


def queue_json(queue: delivery_service_pb2.BatchQueue) -> dict[str, Any]:
    return {
        "buyer_id": queue.buyer_id,
        "schedule": queue.schedule,
        "pending_leads": queue.pending_leads,
        "next_run_at": _time(queue.next_run_time, queue.HasField("next_run_time")),
        "retry_at": _time(queue.retry_time, queue.HasField("retry_time")),
        "failures": queue.failures,
    }


def _rpc_error(exc: grpc.aio.AioRpcError) -> web.Response:
    status = _HTTP_STATUS.get(exc.code())
    if status is not None:
        return error_response(status, exc.details() or exc.code().name)
    return error_response(503, "Delivery unavailable", outcome="error")


def _request_id(request: web.Request, action: str) -> str | None:
    """`Idempotency-Key` makes a retried deliver or resend return the first batch."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ""
    if not 0 < len(key) <= MAX_REQUEST_ID:
        return None
    return f"{action}:{key}"


def add_batch_routes(app: web.Application, config: Config, downstream: Downstream) -> None:
    """Register GET /batches, POST /batches/{buyer_id}/deliver, POST /batches/{batch_id}/resend."""

    def authorized(request: web.Request) -> bool:
        from gateway.http_api import key_matches  # http_api registers these routes

        return key_matches(request, config.account.admin_api_key)

    async def list_batches(request: web.Request) -> web.Response:
        if not authorized(request):
            return error_response(401, "Unauthorized")
        buyer_id = request.query.get("buyer", "")
        if buyer_id and buyer_id not in config.buyers_by_id:
            return error_response(404, f"Unknown buyer {buyer_id!r}")
        limit_text = request.query.get("limit", "50")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            return error_response(400, f"limit must be a number from 1 to {MAX_LIMIT}")
        try:
            reply = await downstream.list_batches(
                buyer_id, int(limit_text), request.query.get("page_token", "")
            )
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        return _json(
            {
                "queues": [queue_json(queue) for queue in reply.queues],
                "batches": [batch_json(batch) for batch in reply.batches],
                "next_page_token": reply.next_page_token or None,
            }
        )

    async def deliver(request: web.Request) -> web.Response:
        if not authorized(request):
            return error_response(401, "Unauthorized")
        buyer_id = request.match_info["buyer_id"]
        if buyer_id not in config.buyers_by_id:
            return error_response(404, f"Unknown buyer {buyer_id!r}")
        request_id = _request_id(request, "deliver")
        if request_id is None:
            return error_response(400, f"Idempotency-Key must be 1 to {MAX_REQUEST_ID} characters")
        try:
            reply = await downstream.deliver_pending(buyer_id, request_id)
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        if not reply.HasField("batch"):
            return _json({"batch": None, "reason": "No pending leads"})
        return _json({"batch": batch_json(reply.batch)})

    async def resend(request: web.Request) -> web.Response:
        if not authorized(request):
            return error_response(401, "Unauthorized")
        request_id = _request_id(request, "resend")
        if request_id is None:
            return error_response(400, f"Idempotency-Key must be 1 to {MAX_REQUEST_ID} characters")
        try:
            reply = await downstream.resend_batch(request.match_info["batch_id"], request_id)
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        return _json({"batch": batch_json(reply.batch)})

    app.router.add_get("/batches", list_batches)
    app.router.add_post("/batches/{buyer_id}/deliver", deliver)
    app.router.add_post("/batches/{batch_id}/resend", resend)
