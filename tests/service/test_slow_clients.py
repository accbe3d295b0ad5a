"""Slow clients (issue 13 item 3): a request must arrive whole within the gateway's limits, and
a flood of slow connections must not delay normal submissions.

500 loopback connections (from another process) trickle a request one byte a second, half of
them stuck in the headers, half in the body, while normal submissions go on; limits are
shortened to 2 s."""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.http_server import HttpLimits
from leadflow.settings import SettingsError
from tests.conftest import Database
from tests.service.helpers_gateway import KEY, LEAD, SUBMIT, InProcessSuite, in_process_suite

LIMITS = HttpLimits(header_timeout_s=2.0, body_timeout_s=2.0)
SLOW_CONNECTIONS = 500
TRICKLE_S = 1.0  # one byte per connection a second (issue 13): far too slow to finish in 2 s
# A connection counts as closed "at the limit" up to this long after it (event loop and
# machine jitter with 500 sockets closing in the same instant).
CLOSE_SLACK_S = 1.0
P99_SLACK_S = 0.050  # the acceptance criterion

HEADERS = (
    f"POST {SUBMIT} HTTP/1.1\r\nHost: gateway\r\nX-Api-Key: {KEY}\r\n"
    "Content-Type: application/json\r\nContent-Length: 400\r\n"
)


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[InProcessSuite]:
    # SQLite only: the HTTP front door's timing does not depend on the database.
    database = Database(url=f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", schema="test")
    async with in_process_suite(database, http_limits=LIMITS) as running:
        yield running


@pytest.fixture
def enough_file_descriptors() -> None:
    """Each slow connection takes a descriptor in this process and one in the flood process,
    which inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * SLOW_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            # Never a silent skip: the flood is the acceptance test of issue 13.3.
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} the flood needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# The slow clients run in a process of their own, as they would on other machines: only what
# they cost the gateway is measured, not the work of 500 clients on the gateway's event loop.
# It prints, per connection, the seconds from its deadline's start to its close and the first
# line it was answered.
FLOOD = """
import asyncio, contextlib, json, sys

port, count, trickle, headers = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

async def slow(in_body, opened):
    loop = asyncio.get_running_loop()
    async with opened:  # not all SYNs at once: the listen backlog is 128
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if in_body:
        writer.write(headers.encode() + b"\\r\\n")  # the body's deadline starts now
        pending = b'{"first_name": "' + b"x" * 380
    else:
        pending = headers.encode()  # the headers' deadline started when it connected
    started = loop.time()

    async def send():
        for byte in pending:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(trickle)

    sender = asyncio.create_task(send())
    answer = b""
    with contextlib.suppress(ConnectionError):
        answer = await reader.read()  # until the gateway closes the connection
    took = loop.time() - started
    sender.cancel()
    writer.close()
    return [took, answer.split(b"\\r\\n", 1)[0].decode()]

async def main():
    opened = asyncio.Semaphore(50)
    print(json.dumps(await asyncio.gather(*(slow(i % 2 == 1, opened) for i in range(count)))))

asyncio.run(main())
"""


async def _submit(suite: InProcessSuite) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with suite.http.post(
        suite.base_url + SUBMIT, json=LEAD, headers={"X-Api-Key": KEY}
    ) as response:
        await response.read()
        assert response.status == 201
    return loop.time() - started


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def _flood(suite: InProcessSuite) -> list[float]:
    """500 slow connections from another process; the submissions' latencies meanwhile. Asserts
    that every slow connection was closed at the limit."""
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLOOD,
        str(suite.gateway.http_port),
        str(SLOW_CONNECTIONS),
        str(TRICKLE_S),
        HEADERS,
        stdout=asyncio.subprocess.PIPE,
    )
    flooded = asyncio.create_task(flood.communicate())
    loaded: list[float] = []
    give_up = asyncio.get_running_loop().time() + 2 + 10
    while not flooded.done():
        loaded.append(await _submit(suite))
        if asyncio.get_running_loop().time() > give_up:
            flood.kill()
            await flooded
            pytest.fail("slow connections still open 10 s after the limit")
    output, _ = await flooded
    slow = json.loads(output)
    assert len(slow) == SLOW_CONNECTIONS

    late = [
        round(took, 2)
        for took, _ in slow
        if not LIMITS.header_timeout_s - 0.05 <= took <= 2 + CLOSE_SLACK_S
    ]
    assert late == [], f"{len(late)} connections not closed at the 2 s limit: {late[:20]}"
    # A 408 before the close, or a bare close: the connection is reset when the client's next
    # byte meets the closed socket, and a reset can discard the 408 before it is read
    # (the 408 itself is asserted below, on a client that stops sending).
    told = {line for _, line in slow}
    assert told <= {"HTTP/1.1 408 Request Timeout", ""}, told
    # Enough submissions during the flood for its p99 to mean something (one at a time, each
    # 15-40 ms on this machine).
    assert len(loaded) >= 30
    return loaded


# This machine's other work moves a p99 by tens of milliseconds from one second to the next:
# the baseline is measured just before and just after the flood and the worse of the two taken,
# and a round that misses is run again, up to three. A flood that really delays submissions
# misses every round.
ROUNDS = 3


@pytest.mark.timeout(180)
async def test_slow_connections_are_closed_at_the_limit_and_do_not_delay_submissions(
    suite: InProcessSuite, enough_file_descriptors: None
) -> None:
    for _ in range(10):  # warm up: connections, first-use costs
        await _submit(suite)
    rounds = []
    for _ in range(ROUNDS):
        before = [await _submit(suite) for _ in range(100)]
        loaded = await _flood(suite)
        after = [await _submit(suite) for _ in range(100)]
        baseline = max(_p99(before), _p99(after))
        rounds.append(
            f"p99 {baseline * 1000:.1f} ms alone, {_p99(loaded) * 1000:.1f} ms with "
            f"{SLOW_CONNECTIONS} slow connections ({len(loaded)} submissions)"
        )
        print(rounds[-1])
        if _p99(loaded) <= baseline + P99_SLACK_S:
            return
    pytest.fail("; ".join(rounds))


@pytest.mark.parametrize("in_body", [False, True])
async def test_a_late_request_is_answered_408_and_closed(
    suite: InProcessSuite, in_body: bool
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", suite.gateway.http_port)
    started = loop.time()
    # Part of the headers, or all of them and part of the body; then nothing more.
    writer.write(HEADERS.encode() + (b'\r\n{"first_name": ' if in_body else b""))
    try:
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    took = loop.time() - started
    assert 2 - 0.05 <= took <= 2 + CLOSE_SLACK_S, took
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"Connection: close" in head
    assert b"not received" in body


async def test_a_request_sent_in_pieces_within_the_limits_is_served(suite: InProcessSuite) -> None:
    """Slow but in time: the deadlines are per request, not per byte or per connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", suite.gateway.http_port)
    body = b'{"first_name": "Ada", "state": "CA"}'
    request = HEADERS.replace("400", str(len(body))).encode() + b"\r\n" + body
    for _ in range(2):  # two requests on one keep-alive connection, each taking 1.5 s
        for piece in (request[:30], request[30:-10], request[-10:]):
            writer.write(piece)
            await asyncio.sleep(0.5)
        async with asyncio.timeout(10):
            status = await reader.readline()
            headers = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 201"), status
        length = int(headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()


def test_the_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().http_limits == HttpLimits(10.0, 30.0)
    monkeypatch.setenv("LEADFLOW_HTTP_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("LEADFLOW_HTTP_BODY_TIMEOUT", "7")
    assert Settings.from_env().http_limits == HttpLimits(2.5, 7.0)
    for bad in ("soon", "0", "-1", "99999"):
        monkeypatch.setenv("LEADFLOW_HTTP_BODY_TIMEOUT", bad)
        with pytest.raises(SettingsError, match=r"^LEADFLOW_HTTP_BODY_TIMEOUT must be a number"):
            Settings.from_env()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One response's status line (its body read and dropped)."""
    status = await reader.readline()
    headers = await reader.readuntil(b"\r\n\r\n")
    length = int(headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return status


async def test_an_idle_keep_alive_connection_is_not_cut_at_the_header_limit(
    suite: InProcessSuite,
) -> None:
    """The header deadline starts with a request's first byte: a client keeping its connection
    between requests is not the slow client (closing it would race its next request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", suite.gateway.http_port)
    try:
        async with asyncio.timeout(20):
            writer.write(HEALTHZ)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(LIMITS.header_timeout_s + 1)
            writer.write(HEALTHZ)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


@pytest.mark.parametrize("same_packet", [True, False])
async def test_a_late_request_pipelined_behind_another_is_cut_at_the_limit(
    suite: InProcessSuite, same_packet: bool
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", suite.gateway.http_port)
    if same_packet:
        writer.write(HEALTHZ + b"GET /hea")
    else:
        writer.write(HEALTHZ)
        await asyncio.sleep(0.3)
        writer.write(b"GET /hea")
    started = loop.time()
    try:
        async with asyncio.timeout(10):
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
            rest = await reader.read()
    finally:
        writer.close()
    took = loop.time() - started
    assert LIMITS.header_timeout_s - 0.05 <= took <= LIMITS.header_timeout_s + CLOSE_SLACK_S, took
    assert rest.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), rest
