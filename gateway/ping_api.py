"""Inbound ping (SPEC 5.2): a vendor asks what we would pay for a lead before submitting it.

`POST|GET /flows/{flow_id}/sources/{source_id}/ping` takes the same authentication and bodies
as a submission (usually a partial lead: no name, email or phone), runs purchase pricing on it
and answers `200 {"outcome","reason","price","ping_id","expires_at"}`. A quote of 0 is
`failure` with reason `no bid` (no ping_id: there is nothing to honour). A later submit of the
same flow and source carrying the `ping_id` before `expires_at` is paid the quoted price, once
(the gateway's database makes "once" hold across replicas). A ping runs pricing only: hours,
duplicates and caps are checked when the lead is submitted.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

import grpc
from aiohttp import web

from gateway.http_api import CONFIG_KEY, DOWNSTREAM_KEY, STORE_KEY, read_vendor_request
from gateway.intake import render
from gateway.store import PingQuote
from leadflow.deadlines import pricing_deadline
from leadflow.fields import parse_lead
from leadflow.ids import new_lead_id
from leadflow.money import ZERO, to_micros
from leadflow.wire import LeadData, from_proto

log = logging.getLogger(__name__)

PING_TTL = timedelta(seconds=60)
NO_BID = "no bid"


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _answer(data: dict[str, object], media: str, redirect: str | None) -> web.Response:
    """200, or with `redir_url` 303 to it (as LeadConduit answers pings too)."""
    if redirect is None:
        return web.Response(status=200, body=render(data, media), content_type=media)
    headers = {"Location": redirect}
    return web.Response(status=303, body=render(data, media), content_type=media, headers=headers)


async def ping(request: web.Request) -> web.Response:
    vendor = await read_vendor_request(request, ping=True)
    if isinstance(vendor, web.Response):
        return vendor
    config = request.app[CONFIG_KEY]
    flow, flow_id, source_id = vendor.flow, vendor.flow.id, vendor.source_id
    media, fields = vendor.media, vendor.lead.fields  # a ping has no price override nor ping id
    now = datetime.now(UTC)
    lead = LeadData(new_lead_id(), flow_id, source_id, parse_lead(fields, flow.fields), now)
    try:
        quote = await request.app[DOWNSTREAM_KEY].purchase_price(lead, "", pricing_deadline(config))
    except grpc.aio.AioRpcError as exc:
        log.warning("ping for flow %s: pricing %s", flow_id, exc.code().name)
        reason = "Ping could not be processed, try again later"
        return _answer(
            {"outcome": "error", "reason": reason, "price": ZERO}, media, vendor.redirect
        )
    price = from_proto(quote.price)
    if price <= 0:
        return _answer(
            {"outcome": "failure", "reason": NO_BID, "price": ZERO}, media, vendor.redirect
        )
    ping_quote = PingQuote(secrets.token_hex(12), to_micros(price), now + PING_TTL)
    await request.app[STORE_KEY].put_ping(flow_id, source_id, ping_quote)
    return _answer(
        {
            "outcome": "success",
            "price": price,
            "ping_id": ping_quote.ping_id,
            "expires_at": _utc_text(ping_quote.expires_time),
        },
        media,
        vendor.redirect,
    )


def add_ping_routes(app: web.Application) -> None:
    path = "/flows/{flow_id}/sources/{source_id}/ping"
    app.router.add_route("POST", path, ping)
    app.router.add_route("GET", path, ping)
