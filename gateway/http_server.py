"""The gateway's HTTP server: aiohttp with a deadline for each request's headers.

aiohttp bounds the size of a request but not the time it takes to arrive: a client sending one
header byte a second holds its connection (a file descriptor, a parser) for as long as it likes,
and a few thousand such clients exhaust the process. aiohttp has no header-read timeout of its
own (its `keepalive_timeout` counts from the last response, not from a request's first byte, and
closing idle keep-alive connections that early would race clients reusing them), so the
connection handler here adds one: a request's headers must arrive whole within
`header_timeout_s` of its first byte (of the connection's opening, for its first request), or
the connection is answered `408` and closed; a request pipelined behind one still being answered
is late the same way, and its connection closed once that one is answered. The body's deadline
is kept where the body is read (`http_api.read_body`). Both come from `HttpLimits`
(LEADFLOW_HTTP_HEADER_TIMEOUT, LEADFLOW_HTTP_BODY_TIMEOUT).

This subclasses aiohttp's RequestHandler and reads two of its private counters; aiohttp is
pinned to one version in pyproject.toml and tests/service/test_slow_clients.py fails if they
change meaning.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

_TIMEOUT_BODY = b'{"outcome":"failure","reason":"Request not received in time"}'
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _TIMEOUT_BODY
)


@dataclass(frozen=True)
class HttpLimits:
    """How long a request may take to arrive: its headers, from its first byte; its body, from
    the end of its headers."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ValueError(f"{name} must be more than 0 and at most 3600 seconds: {value}")


DEFAULT_LIMITS = HttpLimits()


class _DeadlineHandler(RequestHandler):
    """aiohttp's connection handler, closing a connection whose request headers are late."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._requests_when_armed = 0
        self._bytes_since_armed = False
        self._last_payload: Any = None  # the body of the last request parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # a new connection owes its first request's headers from now

    def data_received(self, data: bytes) -> None:
        # Bytes that come when no request is being handled or waiting to be, or after the whole
        # body of the last one (a next request pipelined behind one still being answered),
        # start a request. `_request_count` counts the messages the parser has completed.
        if self._header_deadline is None and (
            (not self._request_in_progress and not self._messages)
            or (self._last_payload is not None and self._last_payload.is_eof())
        ):
            self._arm()
        self._bytes_since_armed = True
        super().data_received(data)
        if self._request_count != self._requests_when_armed:
            if self._messages:
                self._last_payload = self._messages[-1][1]
            self._disarm()  # the headers are in: the body's deadline is read_body's
            if self._last_payload is EMPTY_PAYLOAD and not data.endswith(b"\r\n\r\n"):
                # A request without a body, and bytes after it in the same packet: the start
                # of the next one. (After a body the parser does not say whether bytes follow
                # it; such a connection is left to aiohttp's keep-alive timeout.)
                self._arm()
                self._bytes_since_armed = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._requests_when_armed = self._request_count
        self._bytes_since_armed = False
        self._header_deadline = self._loop.call_later(self._header_timeout_s, self._late)

    def _disarm(self) -> None:
        self._requests_when_armed = self._request_count
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _late(self) -> None:
        self._header_deadline = None
        if self._request_count != self._requests_when_armed or self.transport is None:
            return
        if self._request_in_progress or self._messages:
            # A late request pipelined behind one still being answered: that one is answered,
            # then the connection closed (aiohttp's own graceful close).
            self.close()
            return
        if self._bytes_since_armed:
            # RFC 9110 15.5.9; a connection that never sent a byte is closed without one.
            self.transport.write(REQUEST_TIMEOUT)
        self.force_close()


class _DeadlineServer(web.Server):
    """aiohttp's low-level server, making _DeadlineHandler connections."""

    header_timeout_s = HttpLimits.header_timeout_s

    def __call__(self) -> RequestHandler:
        return _DeadlineHandler(
            self, loop=self._loop, header_timeout_s=self.header_timeout_s, **self._kwargs
        )


class GatewayRunner(web.AppRunner):
    """web.AppRunner serving the application with _DeadlineServer."""

    def __init__(self, app: web.Application, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        server = _DeadlineServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
        server.header_timeout_s = self.limits.header_timeout_s
        return server
