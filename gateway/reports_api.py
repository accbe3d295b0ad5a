"""Operators' reports (SPEC 5.4): `GET /reports/vendors|buyers|margin` from the ledger's journal,
in any time zone, as JSON or CSV. The numbers and their layout come from leadflow.reports, which
`leadflow report` shares."""

from __future__ import annotations

import grpc
from aiohttp import web

from gateway.clients import Downstream
from gateway.intake import error_response
from gateway.outbox import LedgerOutbox
from leadflow import reports
from leadflow.config import Config

HTTP_FORMATS = ("json", "csv")


def add_report_routes(
    app: web.Application, config: Config, downstream: Downstream, outbox: LedgerOutbox
) -> None:
    """Register GET /reports/vendors, /reports/buyers and /reports/margin."""

    async def report(request: web.Request) -> web.Response:
        from gateway.http_api import key_matches  # http_api registers these routes

        if not key_matches(request, config.account.admin_api_key):
            return error_response(401, "Unauthorized")
        params = request.query
        fmt = params.get("format", "json")
        if fmt not in HTTP_FORMATS:
            return error_response(400, "format must be json or csv")
        try:
            query = reports.parse_query(
                request.match_info["kind"],
                params.get("from"),
                params.get("to"),
                params.get("tz"),
                params.get("group_by"),
                config.account.time_zone,
            )
        except reports.ReportError as exc:
            return error_response(400, str(exc))
        try:
            await outbox.flushed()  # the ledger has this gateway's latest leads
            reply = await downstream.ledger_report(query.kind, reports.ledger_request(query))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return error_response(400, exc.details() or "Invalid report")
            return error_response(503, "Ledger unavailable", outcome="error")
        body, media = reports.render(reports.from_reply(query, reply, config), fmt)
        response = web.Response(body=body, content_type=media)
        if fmt == "csv":
            response.charset = "utf-8"
            name = f"{query.kind}-{query.start_date}-{query.end_date}.csv"
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    app.router.add_get("/reports/{kind:" + "|".join(reports.KINDS) + "}", report)
