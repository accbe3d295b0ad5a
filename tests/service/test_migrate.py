"""`leadflow migrate`: Alembic revisions bring every service's storage to the current schema from
an empty database or from the one main made with `create_all` before revisions existed (frozen in
main_schema/), with nothing lost, and a second run changes nothing; on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest
from sqlalchemy import text

from leadflow import db
from leadflow.migrate import BASELINE, SERVICES, differences, migrate
from tests.conftest import TEST_DATABASE_URL

MAIN_SCHEMA = Path(__file__).with_name("main_schema")

# A row in some table of every service, as main would have stored it: each must survive.
ROWS = {
    "gateway": [
        "INSERT INTO ledger_outbox (lead_id, created_time, request) "
        "VALUES ('L1', '2026-03-10 15:00:00+00:00', 'record')",
        "INSERT INTO idempotency_keys (source_id, key, created_time, status) "
        "VALUES ('s1', 'k1', '2026-03-10 15:00:00+00:00', 201)",
    ],
    "ledger": [
        "INSERT INTO leads VALUES ('L1', 'f1', 's1', '{\"a\": 1.50}', 'USD', "
        "'2026-03-10 15:00:00+00:00', '2026-03-10 15:00:01+00:00')",
        "INSERT INTO postings VALUES ('purchase:L1', 'purchase', 'L1', 'f1', 's1', '', '', '', "
        "'cost:f1', 'vendor_payable:s1', 1500000, 'USD', '2026-03-10 15:00:00+00:00', "
        "'2026-03-10 15:00:01+00:00')",
    ],
    "delivery": [
        "INSERT INTO buyer_schedules (buyer_id, schedule, time_zone, failures, version) "
        "VALUES ('b1', '0 9 * * *', 'UTC', 0, 3)",
    ],
    "routing": [
        "INSERT INTO rotation_cursors VALUES ('f1', 0, 2)",
    ],
}


class Site:
    """One copy of the suite's storage: SQLite files in a directory, or PostgreSQL schemas."""

    def __init__(self, url: str | None, data_dir: Path, pg: asyncpg.Connection | None) -> None:
        self.url = url
        self.data_dir = data_dir
        self.tag = uuid.uuid4().hex[:10]
        self.schemas = {n: (f"t_{self.tag}_{n}" if pg else n) for n in SERVICES}
        self._pg = pg
        self.dialect = "postgresql" if pg else "sqlite"

    async def migrate(self) -> list[str]:
        return await migrate(self.url, self.data_dir, schemas=self.schemas)

    async def run(self, name: str, script: str) -> None:
        if self._pg is None:
            with sqlite3.connect(self.data_dir / f"{name}.db") as conn:
                conn.executescript(script)
            conn.close()
            return
        schema = self.schemas[name]
        await self._pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await self._pg.execute(f'SET search_path TO "{schema}"')
        try:
            await self._pg.execute(script)
        finally:
            await self._pg.execute("RESET search_path")

    async def replay_main(self, rows: bool = True) -> None:
        """Every service's tables as main's `create_all` made them (and a few rows)."""
        for name in SERVICES:
            script = (MAIN_SCHEMA / f"{name}.{self.dialect}.sql").read_text()
            await self.run(name, script + (";\n".join(ROWS[name]) + ";" if rows else ""))

    async def dump(self) -> dict[str, dict[str, Any]]:
        """Each service's catalog (tables, columns, constraints, indexes, triggers) and rows."""
        if self._pg is None:
            return {n: await _sqlite_dump(self.data_dir / f"{n}.db") for n in SERVICES}
        return {n: await _pg_dump(self._pg, self.schemas[n]) for n in SERVICES}

    async def drop(self) -> None:
        if self._pg is not None:
            for schema in self.schemas.values():
                await self._pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _normal(sql: str | None, schema: str = "") -> str:
    text_ = (sql or "").replace(f"{schema}.", "") if schema else (sql or "")
    return re.sub(r"\s+", " ", text_).replace("( ", "(").replace(" )", ")").strip()


async def _sqlite_dump(path: Path) -> dict[str, Any]:
    async with aiosqlite.connect(path) as conn:
        catalog = await conn.execute_fetchall(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE tbl_name NOT LIKE 'alembic_version%' ORDER BY type, name"
        )
        rows = {}
        for _type, name, *_ in catalog:
            if _type == "table":
                rows[name] = sorted(await conn.execute_fetchall(f'SELECT * FROM "{name}"'))
    return {
        "catalog": [(t, n, tb, _normal(sql)) for t, n, tb, sql in catalog],
        "rows": rows,
    }


_PG_CATALOG = {
    "columns": "SELECT table_name, ordinal_position, column_name, data_type, "
    "character_maximum_length, is_nullable, column_default FROM information_schema.columns "
    "WHERE table_schema = $1 AND table_name NOT LIKE 'alembic_version%' ORDER BY 1, 2",
    "constraints": "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) "
    "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
    "WHERE n.nspname = $1 AND c.conrelid::regclass::text NOT LIKE '%alembic_version%' "
    "ORDER BY 1, 2",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 "
    "AND tablename NOT LIKE 'alembic_version%' ORDER BY 1",
    "triggers": "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
    "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = $1 AND NOT t.tgisinternal ORDER BY 2",
    "functions": "SELECT p.proname, p.prosrc FROM pg_proc p "
    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 ORDER BY 1",
}


async def _pg_dump(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    dump: dict[str, Any] = {}
    for part, query in _PG_CATALOG.items():
        dump[part] = [
            tuple(_normal(v, schema) if isinstance(v, str) else v for v in row)
            for row in await conn.fetch(query, schema)
        ]
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 "
        "AND tablename NOT LIKE 'alembic_version%' ORDER BY 1",
        schema,
    )
    dump["rows"] = {
        t["tablename"]: sorted(
            tuple(r) for r in await conn.fetch(f'SELECT * FROM "{schema}"."{t["tablename"]}"')
        )
        for t in tables
    }
    return dump


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def new_site(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Site]]:
    """Makes copies of the suite's storage on one backend; PostgreSQL schemas dropped after."""
    pg = None
    if request.param == "postgresql":
        pg = await asyncpg.connect(TEST_DATABASE_URL.replace("+asyncpg", ""), timeout=10)
    sites: list[Site] = []

    def make() -> Site:
        data_dir = tmp_path / f"site{len(sites)}"
        data_dir.mkdir()
        sites.append(Site(TEST_DATABASE_URL if pg else None, data_dir, pg))
        return sites[-1]

    try:
        yield make
    finally:
        for site in sites:
            await site.drop()
        if pg is not None:
            await pg.close()


async def test_migrate_upgrades_what_main_made_with_nothing_lost(
    new_site: Callable[[], Site],
) -> None:
    site = new_site()
    await site.replay_main()
    before = await site.dump()

    done = await site.migrate()

    assert done[:4] == [f"{name}: unversioned -> {BASELINE}" for name in SERVICES]
    assert await site.dump() == before
    assert all(before[name]["rows"] for name in SERVICES)


async def test_migrate_a_second_time_changes_nothing(new_site: Callable[[], Site]) -> None:
    site = new_site()
    await site.replay_main()
    await site.migrate()
    first = await site.dump()

    await site.migrate()

    assert await site.dump() == first


async def test_migrate_an_empty_database_makes_exactly_the_schema_main_made(
    new_site: Callable[[], Site],
) -> None:
    made, main = new_site(), new_site()
    done = await made.migrate()
    await main.replay_main(rows=False)

    assert done[:4] == [f"{name}: empty -> {BASELINE}" for name in SERVICES]
    assert await made.dump() == await main.dump()


async def test_the_tables_match_their_revisions(new_site: Callable[[], Site]) -> None:
    # What `make lint` checks on SQLite, here on both backends (PostgreSQL has its own indexes).
    site = new_site()
    await site.migrate()
    for name, service in SERVICES.items():
        url = site.url or db.database_url(None, site.data_dir, name)
        engine = db.create_engine(url, site.schemas[name])
        try:
            async with engine.connect() as conn:
                assert await conn.run_sync(differences, service) == [], name
                # A table the revisions do not make is reported: the check can fail.
                await conn.execute(text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))
                assert await conn.run_sync(differences, service) != [], name
                await conn.rollback()
        finally:
            await engine.dispose()


async def test_the_ledger_keeps_refusing_changes_after_the_upgrade(
    new_site: Callable[[], Site],
) -> None:
    site = new_site()
    await site.replay_main()
    await site.migrate()
    url = site.url or db.database_url(None, site.data_dir, "ledger")
    engine = db.create_engine(url, site.schemas["ledger"])
    try:
        with pytest.raises(Exception, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM postings"))
    finally:
        await engine.dispose()


async def test_migrate_creates_each_service_database_and_can_run_again(tmp_path: Path) -> None:
    await migrate(None, tmp_path)
    await migrate(None, tmp_path)  # a second run changes nothing and does not fail
    assert {"idempotency_keys", "ledger_outbox"} <= await _tables(tmp_path / "gateway.db")
    assert {"leads", "source_events", "recipient_events"} <= await _tables(tmp_path / "ledger.db")


async def _tables(path: Path) -> set[str]:
    async with aiosqlite.connect(path) as conn:
        rows = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}
