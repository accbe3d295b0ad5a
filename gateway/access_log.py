"""The gateway's HTTP access log: one INFO line per request on the `gateway.access` logger.

Method, path, status, size and time only: never a body, a query string (vendors may submit a
lead's fields there) or a header (API keys travel in Authorization and X-Api-Key). aiohttp's own
access logger has no atom for the path without its query (`%r` is the whole request line), hence
this class. Off, at no cost, below INFO (`LEADFLOW_LOG_LEVEL=WARNING`): aiohttp asks `enabled`
once per connection.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LOGGER = logging.getLogger("gateway.access")
# A mistyped URL is logged as sent, up to this long.
MAX_PATH_CHARS = 200


class AccessLogger(AbstractAccessLogger):
    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.path[:MAX_PATH_CHARS]
        duration_ms = round(time * 1000, 1)
        size = response.body_length
        fields = {
            "http_method": request.method,
            "http_path": path,
            "http_status": response.status,
            "response_bytes": size,
            "duration_ms": duration_ms,
        }
        # A request about one lead (GET /leads/{lead_id}) is a line about that lead.
        match_info = getattr(request, "match_info", None)  # a web.Request's, once routed
        if match_info is not None and (lead_id := match_info.get("lead_id")):
            fields["lead_id"] = lead_id
        self.logger.info(
            '%s "%s %s" %d %d %.1fms',
            request.remote or "-",
            request.method,
            path,
            response.status,
            size,
            duration_ms,
            extra=fields,  # fields of their own in JSON logs, for a collector to query
        )
