"""The HTTP adapter against a real buyer on loopback: lead values in a URL path arrive as data
(issue 13 item 5: a `..` value must not climb the buyer's path, whatever aiohttp/yarl would
normalise), and what the answer gives (cookie, captures, a success reason) is kept (issue 15)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from delivery_service.http_adapter import HttpAdapter, create_session
from leadflow.config import HttpDelivery
from leadflow.fields import parse_lead
from leadflow.variables import build_context

pytestmark = pytest.mark.timeout(30)


@pytest_asyncio.fixture
async def buyer() -> AsyncIterator[tuple[str, list[str]]]:
    """A buyer answering every path, recording the raw request target it received."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), seen
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("value", "raw_path"),
    [
        ("..", "/v1/%2E%2E/leads?src=x"),
        (".", "/v1/%2E/leads?src=x"),
        ("../../admin", "/v1/%2E%2E%2F%2E%2E%2Fadmin/leads?src=x"),
        ("%2e%2e", "/v1/%252e%252e/leads?src=x"),
        ("a b?c#d", "/v1/a%20b%3Fc%23d/leads?src=x"),
    ],
)
async def test_a_path_value_arrives_as_one_segment(
    buyer: tuple[str, list[str]], value: str, raw_path: str
) -> None:
    base, seen = buyer
    spec = HttpDelivery.model_validate(
        {
            "type": "http",
            "url": base + "/v1/{{campaign}}/leads?src=x",
            "response": {"outcome_search_term": "accepted"},
        }
    )
    fields = parse_lead({"campaign": value})
    context = build_context(fields, flow={}, source={}, buyer={})
    session = create_session(allow_private_network=True)
    try:
        adapter = HttpAdapter("acme", spec, session, allow_private_network=True)
        result = await adapter.deliver(fields, context, "evt-1")
    finally:
        await session.close()
    assert result.outcome == "success"
    assert seen == [raw_path]


async def test_a_real_answer_keeps_its_cookie_captures_and_success_reason() -> None:
    """Set-Cookie headers and an HTML body from a real buyer end up on the attempt."""

    async def answer(request: web.Request) -> web.Response:
        response = web.Response(
            text=page('<p class="msg"> Thank you </p><p>Lead id: L-77</p>'),
            content_type="text/html",
        )
        response.headers.add("Set-Cookie", "tracking=1; path=/")
        response.headers.add("Set-Cookie", "Session_id=678; path=/; secure")
        return response

    app = web.Application()
    app.router.add_post("/leads", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    spec = HttpDelivery.model_validate(
        {
            "type": "http",
            "url": str(server.make_url("/leads")),
            "response": {
                "outcome_search_term": "thank you",
                "outcome_search_path": "p.msg",
                "reason_path": "p.msg",
                "cookie_search_term": "session_id",
                "capture": {"lead_id": "Lead id: ([\\w-]+)"},
            },
        }
    )
    fields = parse_lead({"first_name": "Ada"})
    session = create_session(allow_private_network=True)
    try:
        adapter = HttpAdapter("acme", spec, session, allow_private_network=True)
        result = await adapter.deliver(fields, build_context(fields), "evt-2")
    finally:
        await session.close()
        await server.close()
    assert (result.outcome, result.reason) == ("success", "Thank you")
    [attempt] = result.attempts
    assert dict(attempt.captured) == {"cookie": "Session_id=678; path=/; secure", "lead_id": "L-77"}
    # As the delivery service answers it, and as the ledger stores it.
    assert dict(attempt.to_proto().captured) == dict(attempt.captured)
    assert attempt.to_json()["captured"] == dict(attempt.captured)


def page(body: str) -> str:
    return f"<html><body>{body}</body></html>"
