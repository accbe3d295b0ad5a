"""Fixtures every tier shares: storage targets on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class Database:
    """Where a test's service stores its data: a URL and the schema it owns."""

    url: str
    schema: str


async def _postgres_schema() -> tuple[asyncpg.Connection, str]:
    dsn = TEST_DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {TEST_DATABASE_URL} ({exc}); start it or set "
            "TEST_DATABASE_URL. Storage tests run on PostgreSQL and SQLite, never silently one.",
            pytrace=False,
        )
    return conn, f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Each storage test runs twice: on an SQLite file and on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield Database(url=f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", schema="test")
        return
    conn, schema = await _postgres_schema()
    try:
        yield Database(url=TEST_DATABASE_URL, schema=schema)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
