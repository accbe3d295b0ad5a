"""The gateway's HTTP API (SPEC section 5): vendor submissions, operators' lead view, health and
metrics (admin key only: Prometheus scrapes the metrics port). Every client mistake gets a 4xx
with a reason; nothing a client sends yields a 500."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.async_intake import AsyncIntake, Submission
from gateway.batches_api import add_batch_routes
from gateway.clients import Downstream
from gateway.feedback_api import add_feedback_routes
from gateway.intake import (
    BODY_TYPES,
    NOT_ACCEPTABLE,
    BadRequest,
    Refused,
    decode_body,
    error_response,
    negotiate,
    pairs_to_dict,
    parse_body,
    render,
)
from gateway.lead_view import lead_view
from gateway.openapi import openapi_json
from gateway.orchestrator import Orchestrator
from gateway.outbox import LedgerOutbox
from gateway.rate_limit import RateLimiter
from gateway.recipients_api import add_recipient_routes
from gateway.reports_api import add_report_routes
from gateway.store import GatewayStore, IntakeRow, StoredResponse
from gateway.submission import (
    KeyInUse,
    RateLimited,
    Submissions,
    SubmitRefused,
    Unauthorized,
    UnknownSource,
    checked_idempotency_key,
    read_vendor_parameters,
)
from leadflow.config import Config, Flow

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
CONFIG_KEY = web.AppKey("config", Config)
ORCHESTRATOR_KEY = web.AppKey("orchestrator", Orchestrator)
DOWNSTREAM_KEY = web.AppKey("downstream", Downstream)
STORE_KEY = web.AppKey("store", GatewayStore)
OUTBOX_KEY = web.AppKey("outbox", LedgerOutbox)
SUBMISSIONS_KEY = web.AppKey("submissions", Submissions)
# Set while a stopping gateway drains its open connections (gateway.server).
DRAINING_KEY = web.AppKey("draining", asyncio.Event)
# How long a request's body may take to arrive once its headers are in (HttpLimits).
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)
# Set on a request whose body did not arrive in time: its connection is closed after the 408.
ABANDONED_KEY = web.RequestKey("abandoned", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 become the same `{"outcome","reason"}` bodies as ours."""
    try:
        response = await handler(request)
        if request.get(ABANDONED_KEY):
            await _answer_and_close(request, response)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal error", outcome="error")


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer, then close the connection at once: aiohttp would otherwise go on
    reading the rest of the late body for its lingering time (10 s) before closing."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


def presented_key(request: web.Request) -> str | None:
    """The API key from `X-Api-Key` or HTTP Basic with user `API`."""
    header = request.headers.get("X-Api-Key")
    if header:
        return header
    auth = request.headers.get("Authorization", "")
    scheme, _, encoded = auth.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user.upper() == "API" else None


def key_matches(request: web.Request, expected: str | None) -> bool:
    presented = presented_key(request)
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


@dataclass(frozen=True)
class VendorRequest:
    """An authenticated vendor request (submit or ping): what it is for and what it says."""

    flow: Flow
    source_id: str
    media: str
    lead: Submission
    redirect: str | None = None  # `redir_url`: answer 303 to it once the lead is handled


async def read_vendor_request(
    request: web.Request, ping: bool = False
) -> VendorRequest | web.Response:
    """The vendor request, or the 404/401/429/406/408/413/415/400 answer it gets (SPEC 5.1's
    order); `ping` for an inbound ping (SPEC 5.2), which prefers a TrustedForm ping URL."""
    source_id = request.match_info["source_id"]
    try:
        flow = request.app[SUBMISSIONS_KEY].admit(
            request.match_info["flow_id"], source_id, presented_key(request)
        )
    except SubmitRefused as exc:
        return refusal_response(exc)
    media = negotiate(request.headers.get("Accept"))
    if media is None:
        return error_response(406, NOT_ACCEPTABLE)
    try:
        parameters = read_vendor_parameters(await read_parameters(request), ping=ping)
    except Refused as exc:
        return refused_response(exc, media)
    except BadRequest as exc:
        return error_response(400, str(exc), media=media)
    return VendorRequest(flow, source_id, media, parameters.submission, parameters.redirect)


_REFUSAL_STATUS: dict[type[SubmitRefused], int] = {
    UnknownSource: 404,
    Unauthorized: 401,
    KeyInUse: 409,
}


def refusal_response(exc: SubmitRefused, media: str = "application/json") -> web.Response:
    """A refused submission as HTTP; a rate-limited one says when to retry in its header."""
    if isinstance(exc, RateLimited):
        response = error_response(429, "Rate limit exceeded", media=media)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return error_response(_REFUSAL_STATUS[type(exc)], str(exc), media=media)


def refused_response(exc: Refused, media: str) -> web.Response:
    response = error_response(exc.status, exc.reason, media=media)
    response.headers.update(exc.headers)
    return response


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded from its Content-Encoding: the one place every endpoint reads
    a body. aiohttp's own decompression is off (gateway.server) because it fails inside
    `read()` with an exception of its own on a body that is not what its Content-Encoding says
    (a 500), passes a coding it does not know through as if it were none, and answers a coding
    it knows but cannot decode (br, zstd without their libraries) with a bare 400 of its own."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    timeout_s = request.app[BODY_TIMEOUT_KEY]
    # A body already whole (a lead's usually comes with its headers) is read without waiting:
    # no deadline to arm and cancel for it.
    deadline = nullcontext() if request.content.is_eof() else asyncio.timeout(timeout_s)
    try:
        async with deadline:
            body = await request.read()  # client_max_size bounds the bytes as sent
    except TimeoutError:
        request[ABANDONED_KEY] = True
        raise Refused(408, f"Body not received within {timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, f"Body over {MAX_BODY_BYTES} bytes") from None
    except RequestPayloadError as exc:  # e.g. broken chunked framing
        raise BadRequest(f"the body could not be read: {exc}") from None
    return decode_body(body, coding, MAX_BODY_BYTES)


async def submit(request: web.Request) -> web.Response:
    vendor = await read_vendor_request(request)
    if isinstance(vendor, web.Response):
        return vendor
    try:
        key = checked_idempotency_key(request.headers.get("Idempotency-Key"))
    except BadRequest as exc:
        return error_response(400, str(exc), media=vendor.media)
    submissions = request.app[SUBMISSIONS_KEY]

    async def answer() -> StoredResponse:
        flow_id, source_id, lead = vendor.flow.id, vendor.source_id, vendor.lead
        # A redirect follows the handled lead, so `redir_url` outweighs a preference to be
        # answered before it is handled (RFC 7240 lets a server ignore a preference).
        if vendor.redirect is None and prefers_async(request):
            lead_id = await submissions.accept(flow_id, source_id, lead)
            return _accepted(lead_id, vendor.media)
        result = await submissions.submit(flow_id, source_id, lead)
        answered = StoredResponse(201, vendor.media, render(result.as_dict(), vendor.media))
        return redirected(answered, vendor.redirect)

    try:
        response = await submissions.once(vendor.source_id, key, answer)
    except SubmitRefused as exc:
        return refusal_response(exc, vendor.media)
    if response.status == 303 and vendor.redirect is not None:
        # The store keeps status and body, not headers: the retry names the same URL.
        response = redirected(response, vendor.redirect)
    return _stored(response)


def redirected(response: StoredResponse, redirect: str | None) -> StoredResponse:
    """With `redir_url`, the answer (body unchanged) as `303 See Other` to it, as LeadConduit."""
    if redirect is None:
        return response
    headers = {**(response.headers or {}), "Location": redirect}
    return StoredResponse(303, response.content_type, response.body, headers)


def prefers_async(request: web.Request) -> bool:
    """RFC 7240: `Prefer: respond-async` (among other preferences, in any case)."""
    for header in request.headers.getall("Prefer", ()):
        for preference in header.split(","):
            name = preference.split(";")[0].split("=")[0].strip().lower()
            if name == "respond-async":
                return True
    return False


def _accepted(lead_id: str, media: str) -> StoredResponse:
    """202 for a submission committed for background processing, with where to read its
    outcome."""
    status_url = f"/leads/{lead_id}"
    body = {"outcome": "pending", "lead": {"id": lead_id}, "status_url": status_url}
    headers = {"Location": status_url, "Preference-Applied": "respond-async"}
    return StoredResponse(202, media, render(body, media), headers)


def _stored(response: StoredResponse) -> web.Response:
    return web.Response(
        status=response.status,
        body=response.body,
        content_type=response.content_type,
        headers=response.headers,
    )


def body_media(request: web.Request) -> tuple[str, str | None]:
    """The request's media type and charset; a Content-Type the parser chokes on (the stdlib's
    header parser raises IndexError on some) is no supported type rather than a 500."""
    try:
        return request.content_type, request.charset
    except Exception:
        return "", None


UNSUPPORTED_TYPE = (
    "MIME type in Content-Type header is not supported. Use only "
    "application/x-www-form-urlencoded, application/json, application/xml, text/xml."
)


async def read_parameters(request: web.Request) -> dict[str, Any]:
    """Body fields with the query parameters merged over them (submit, ping and feedback).
    A body needs a Content-Type (415 without one) of the four supported types (406 for any
    other, as LeadConduit answers)."""
    body = await read_body(request)
    data: dict[str, Any] = {}
    if body.strip():
        if not request.headers.get("Content-Type", "").strip():
            raise Refused(415, "Content-Type header is required")
        content_type, charset = body_media(request)
        if content_type not in BODY_TYPES:
            raise Refused(406, UNSUPPORTED_TYPE)
        data = parse_body(content_type, body, charset)
    data.update(pairs_to_dict(request.query.items()))
    return data


async def get_lead(request: web.Request) -> web.Response:
    """The whole lead for operators; for an asynchronous submission, its outcome also for the
    vendor that sent it (202 while it is still being processed)."""
    config = request.app[CONFIG_KEY]
    lead_id = request.match_info["lead_id"]
    intake = await request.app[STORE_KEY].intake(lead_id) if len(lead_id) <= 128 else None
    if not key_matches(request, config.account.admin_api_key):
        source = config.sources_by_id.get(intake.source_id) if intake else None
        if intake is None or source is None or not key_matches(request, source.api_key):
            return error_response(401, "Unauthorized")
        return _vendor_status(request, intake)
    if intake is not None and intake.result is None:
        return _vendor_status(request, intake)
    await request.app[OUTBOX_KEY].flushed()
    try:
        reply = await request.app[DOWNSTREAM_KEY].get_lead(lead_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return error_response(404, "Unknown lead")
        return error_response(503, "Ledger unavailable", outcome="error")
    body = render(lead_view(reply), "application/json")
    return web.Response(body=body, content_type="application/json")


def _vendor_status(request: web.Request, intake: IntakeRow) -> web.Response:
    """An asynchronous submission's answer as the synchronous submit would have given it, in the
    media type the vendor accepts; pending (202, Retry-After) until it is processed."""
    media = negotiate(request.headers.get("Accept"))
    if media is None:
        return error_response(406, NOT_ACCEPTABLE)
    if intake.result is None:
        body = {"outcome": "pending", "lead": {"id": intake.lead_id}}
        headers = {"Retry-After": "1"}
        return web.Response(
            status=202, body=render(body, media), content_type=media, headers=headers
        )
    result = json.loads(intake.result, parse_float=Decimal)  # money stays exact to the cent
    return web.Response(body=render(result, media), content_type=media)


async def healthz(request: web.Request) -> web.Response:
    down = await request.app[DOWNSTREAM_KEY].unhealthy()
    if down:
        body = render({"status": "NOT_SERVING", "down": ", ".join(down)}, "application/json")
        return web.Response(status=503, body=body, content_type="application/json")
    return web.Response(body=b'{"status":"SERVING"}', content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """The metrics on the vendor-facing port only for the admin key (SPEC 5.4): they show revenue
    by buyer. Prometheus scrapes the gateway's metrics port (B+15) instead."""
    if not key_matches(request, request.app[CONFIG_KEY].account.admin_api_key):
        return error_response(401, "Unauthorized")
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    if request.app[DRAINING_KEY].is_set():
        # The client opens its next connection elsewhere. (Headers are computed before this
        # hook runs, hence the header as well as the close.)
        response.force_close()
        response.headers["Connection"] = "close"


def create_app(
    config: Config,
    orchestrator: Orchestrator,
    downstream: Downstream,
    store: GatewayStore,
    outbox: LedgerOutbox,
    intake: AsyncIntake,
    rate_limiter: RateLimiter,
    body_timeout_s: float = 30.0,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_as_bodies])
    app[BODY_TIMEOUT_KEY] = body_timeout_s
    app[CONFIG_KEY] = config
    app[ORCHESTRATOR_KEY] = orchestrator
    app[DOWNSTREAM_KEY] = downstream
    app[STORE_KEY] = store
    app[OUTBOX_KEY] = outbox
    app[SUBMISSIONS_KEY] = Submissions(config, orchestrator, store, rate_limiter, intake)
    app[DRAINING_KEY] = asyncio.Event()
    app.on_response_prepare.append(_close_when_draining)
    submit_path = "/flows/{flow_id}/sources/{source_id}/submit"
    app.router.add_route("POST", submit_path, submit)
    app.router.add_route("GET", submit_path, submit)
    app.router.add_get("/leads/{lead_id}", get_lead)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    add_batch_routes(app, config, downstream)
    add_feedback_routes(app, config, downstream, outbox)
    add_report_routes(app, config, downstream, outbox)
    add_recipient_routes(app, config, downstream, outbox)
    from gateway.ping_api import add_ping_routes  # here: ping_api builds on this module

    add_ping_routes(app)
    from gateway.docs_page import source_docs  # here: docs_page builds on this module

    app.router.add_get("/flows/{flow_id}/sources/{source_id}/docs", source_docs)
    app.router.add_get("/openapi.json", openapi_json)
    return app
