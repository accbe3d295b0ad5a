"""An empty store for the storage benches: on a SQLite file of its own, or in a PostgreSQL schema
of its own, dropped before and after (TEST_DATABASE_URL, or the machine's `test` database)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from sqlalchemy import text

from leadflow import db

URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


class Store(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=Store)


@asynccontextmanager
async def empty_store(
    open_store: Callable[[str, str], Awaitable[S]], backend: str, schema: str
) -> AsyncIterator[S]:
    """`open_store(url, schema)` on nothing yet: `backend` is `sqlite` or `postgresql`."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            store = await open_store(f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}", schema)
            try:
                yield store
            finally:
                await store.close()
        return
    admin = db.create_engine(URL, schema)
    drop = text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    try:
        async with admin.begin() as conn:
            await conn.execute(drop)
        store = await open_store(URL, schema)
        try:
            yield store
        finally:
            await store.close()
            async with admin.begin() as conn:
                await conn.execute(drop)
    finally:
        await admin.dispose()
