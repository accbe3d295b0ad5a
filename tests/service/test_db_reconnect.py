"""Pooled PostgreSQL connections that the server has closed (a restart, a terminated backend)
are replaced before a transaction gets them, without SQLAlchemy's per-checkout pre-ping."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from leadflow import db
from tests.conftest import TEST_DATABASE_URL

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]
POOLED = 5


async def _backend_pids(engine: AsyncEngine, count: int) -> set[int]:
    """The server processes of `count` pooled connections, each held by one transaction."""
    barrier = asyncio.Barrier(count)

    async def one() -> int:
        async with engine.begin() as conn:
            pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await barrier.wait()  # every transaction holds its own connection
            return pid

    return set(await asyncio.gather(*(one() for _ in range(count))))


async def _restart(pids: set[int]) -> None:
    """What a PostgreSQL restart does to the pool: the server ends every backend."""
    admin = await asyncpg.connect(
        TEST_DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://")
    )
    try:
        ended = await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS ok"
            " FROM unnest($1::int[]) AS pid) AS t WHERE ok",
            list(pids),
        )
        assert ended == len(pids)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the goodbye reaches the idle connections


async def test_connections_the_server_closed_are_replaced_at_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No ping at all: only the closed sockets give the dead connections away.
    monkeypatch.setattr(db, "IDLE_PING_S", 1e9)
    engine = db.create_engine(TEST_DATABASE_URL, f"t_{uuid.uuid4().hex[:12]}")
    try:
        before = await _backend_pids(engine, POOLED)
        await _restart(before)
        after = await _backend_pids(engine, POOLED)  # every transaction succeeds
    finally:
        await engine.dispose()
    assert len(before) == POOLED
    assert not before & after


async def test_an_idle_connection_that_looks_open_but_is_dead_is_pinged_and_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A network that dropped the connection silently: the socket does not say it is closed.
    monkeypatch.setattr(db, "IDLE_PING_S", 0.0)
    engine = db.create_engine(TEST_DATABASE_URL, f"t_{uuid.uuid4().hex[:12]}")
    try:
        before = await _backend_pids(engine, POOLED)
        await _restart(before)
        monkeypatch.setattr(db, "_closed", lambda _connection: False)
        after = await _backend_pids(engine, POOLED)
    finally:
        await engine.dispose()
    assert not before & after
