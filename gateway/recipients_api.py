"""Offers whose fate is unknown (SPEC 8.1), for operators: `GET /leads?outcome=unknown` lists
them and `POST /recipients/{event_id}/resolve` settles one: the ledger appends the outcome
(booking the sale at the quoted price on success) and routing commits or releases the step's
held caps. Both halves are idempotent, so a resolve that failed midway is simply sent again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from aiohttp import web

from gateway.clients import Downstream
from gateway.intake import BadRequest, Refused, error_response, render
from gateway.outbox import LedgerOutbox
from leadflow.config import Config
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.wire import from_proto, outcome_from_proto, outcome_to_proto

JSON = "application/json"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
RESOLUTIONS = ("success", "failure")
MAX_REASON = 500


def _respond(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=render(data, JSON), content_type=JSON)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def unknown_leads(offers: list[pb.UnknownOffer], limit: int) -> tuple[list[dict[str, Any]], str]:
    """Offers grouped by lead, newest lead first; the cursor when the page may go on. A page
    that filled up may have cut its last lead's offers short: that lead starts the next page."""
    items: list[dict[str, Any]] = []
    for offer in offers:
        if not items or items[-1]["id"] != offer.lead_id:
            items.append(
                {
                    "id": offer.lead_id,
                    "flow_id": offer.flow_id,
                    "source_id": offer.source_id,
                    "submitted_at": offer.submit_time.ToDatetime().isoformat() + "Z",
                    "outcome": "unknown",
                    "unknown_offers": [],
                }
            )
        items[-1]["unknown_offers"].append(
            {
                "recipient_event_id": offer.recipient_event_id,
                "buyer_id": offer.buyer_id,
                "stage_index": offer.stage_index,
                "step_index": offer.step_index,
                "sale_price": from_proto(offer.sale_price),
                "reason": offer.reason or None,
            }
        )
    if len(offers) < limit:
        return items, ""
    if len(items) > 1:
        items.pop()
    return items, items[-1]["id"]


def add_recipient_routes(
    app: web.Application, config: Config, downstream: Downstream, outbox: LedgerOutbox
) -> None:
    """Register GET /leads (outcome=unknown) and POST /recipients/{event_id}/resolve."""

    def admin(request: web.Request) -> bool:
        from gateway.http_api import key_matches  # http_api registers these routes

        return key_matches(request, config.account.admin_api_key)

    async def list_leads(request: web.Request) -> web.Response:
        if not admin(request):
            return error_response(401, "Unauthorized")
        params = request.query
        if params.get("outcome") != "unknown":
            # The other searches of SPEC 5.4 are not served by this gateway yet.
            return error_response(400, "only outcome=unknown is supported")
        try:
            limit = _limit(params.get("limit"))
        except ValueError as exc:
            return error_response(400, str(exc))
        cursor = params.get("cursor", "")
        if len(cursor) > 128:
            return error_response(400, "cursor is not valid")
        try:
            await outbox.flushed()  # the ledger has this gateway's latest leads
            reply = await downstream.list_unknown_offers(limit, cursor)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return error_response(400, exc.details() or "Invalid search")
            return error_response(503, "Ledger unavailable", outcome="error")
        items, next_cursor = unknown_leads(list(reply.offers), limit)
        return _respond({"items": items, "next_cursor": next_cursor or None})

    async def resolve(request: web.Request) -> web.Response:
        if not admin(request):
            return error_response(401, "Unauthorized")
        from gateway.http_api import read_body, refused_response  # http_api registers these

        event_id = request.match_info["event_id"]
        try:
            body = orjson.loads(await read_body(request))
        except Refused as exc:
            return refused_response(exc, JSON)
        except (BadRequest, orjson.JSONDecodeError):
            return error_response(400, 'body must be JSON: {"outcome":"success"|"failure"}')
        outcome = body.get("outcome") if isinstance(body, dict) else None
        if outcome not in RESOLUTIONS:
            return error_response(422, 'outcome must be "success" or "failure"')
        reason = body.get("reason", "Resolved by an operator")
        if not isinstance(reason, str) or len(reason) > MAX_REASON or "\x00" in reason:
            return error_response(422, f"reason must be text of at most {MAX_REASON} characters")
        try:
            await outbox.flushed()
            lead = await downstream.get_lead(event_id.rpartition("-")[0] or event_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return error_response(404, "Unknown recipient event")
            return error_response(503, "Ledger unavailable", outcome="error")
        event = next((e for e in lead.recipient_events if e.id == event_id), None)
        if event is None:
            return error_response(404, "Unknown recipient event")
        if outcome_from_proto(event.outcome) != "unknown":
            return error_response(409, "The recipient event's outcome is not unknown")
        message = pb.RecordDeliveryOutcomeRequest(
            recipient_event_id=event_id, outcome=outcome_to_proto(outcome), reason=reason
        )
        message.complete_time.FromDatetime(datetime.now(UTC))
        try:
            recorded = await downstream.record_delivery_outcome(message)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return error_response(404, "Unknown recipient event")
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return error_response(422, exc.details() or "Invalid resolution")
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return error_response(409, "The recipient event's outcome is not unknown")
            return error_response(503, "Ledger unavailable", outcome="error")
        settled = outcome_from_proto(recorded.outcome)
        if settled != outcome:
            return error_response(409, f"Already resolved as {settled}")
        try:
            # After the ledger: a repeat finds the ledger done and settles what is still held.
            await downstream.resolve_step(
                recorded.lead_id, recorded.stage_index, recorded.step_index, outcome == "success"
            )
        except grpc.aio.AioRpcError:
            return error_response(
                503,
                "Recorded; caps not settled yet (routing unavailable): resolve again",
                outcome="error",
            )
        return _respond(
            {
                "recipient_event_id": event_id,
                "lead_id": recorded.lead_id,
                "buyer_id": recorded.buyer_id,
                "outcome": outcome,
                "created": recorded.created,
            }
        )

    app.router.add_get("/leads", list_leads)
    app.router.add_post("/recipients/{event_id}/resolve", resolve)
