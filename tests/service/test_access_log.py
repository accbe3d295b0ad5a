"""The gateway's access log: one line per HTTP request, without body, query string or key."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway import access_log


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"outcome": "success"}, status=201)

    app = web.Application()
    app.router.add_route("*", "/flows/{flow}/sources/{source}/submit", echo)
    runner = web.AppRunner(
        app, access_log_class=access_log.AccessLogger, access_log=access_log.LOGGER
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_request_is_logged_without_body_query_or_key(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            server + "/flows/f1/sources/s1/submit?email=jane@example.com",
            data={"phone": "5551234567"},
            headers={"X-Api-Key": "sekrit-key", "Authorization": "Basic c2Vrcml0"},
        )
        response.release()
    [record] = [r for r in caplog.records if r.name == "gateway.access"]
    message = record.getMessage()
    assert '"POST /flows/f1/sources/s1/submit" 201' in message
    for secret in ("jane", "example.com", "5551234567", "sekrit", "c2Vrcml0", "?"):
        assert secret not in message
    assert record.http_status == 201  # type: ignore[attr-defined]
    assert record.http_path == "/flows/f1/sources/s1/submit"  # type: ignore[attr-defined]


async def test_below_info_there_is_no_access_log(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.access")
    async with aiohttp.ClientSession() as session:
        (await session.get(server + "/flows/f1/sources/s1/submit")).release()
    assert not [r for r in caplog.records if r.name == "gateway.access"]
