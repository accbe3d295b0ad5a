"""`leadflow migrate`: Alembic revisions bring every service's storage to the current schema from
an empty database or from the one main made with `create_all` before revisions existed (frozen in
main_schema/), with nothing lost, and a second run changes nothing; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest
from sqlalchemy import Column, MetaData, String, text
from sqlalchemy.engine import make_url

from leadflow import db
from leadflow.cli import parser
from leadflow.migrate import BASELINE, SERVICES, Service, _head, differences, migrate
from leadflow.migrate import main as migrate_main
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

    async def migrate(self, target: str = "head") -> list[str]:
        return await migrate(self.url, self.data_dir, schemas=self.schemas, target=target)

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
    site, fresh = new_site(), new_site()
    await site.replay_main()
    before = await site.dump()

    done = await site.migrate()
    await fresh.migrate()

    assert done[:4] == [f"{name}: unversioned -> {_head(SERVICES[name])}" for name in SERVICES]
    after, installed = await site.dump(), await fresh.dump()
    assert all(before[name]["rows"] for name in SERVICES)
    for name in SERVICES:
        # nothing lost or changed (tables added since hold nothing)
        kept = {table: after[name]["rows"][table] for table in before[name]["rows"]}
        assert kept == before[name]["rows"], name
        assert not any(rows for t, rows in after[name]["rows"].items() if t not in kept), name
        # the schema is the one a fresh install at the newest revision has
        assert {k: v for k, v in after[name].items() if k != "rows"} == {
            k: v for k, v in installed[name].items() if k != "rows"
        }, name


async def test_main_made_exactly_revision_0001_so_it_is_stamped_there(
    new_site: Callable[[], Site],
) -> None:
    site = new_site()
    await site.replay_main()
    before = await site.dump()

    done = await site.migrate(BASELINE)

    assert done[:4] == [f"{name}: unversioned -> {BASELINE}" for name in SERVICES]
    assert await site.dump() == before


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
    done = await made.migrate(BASELINE)
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


# --- The command, as operators run it: owner and services' URLs from the environment -----------


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(TEST_DATABASE_URL.replace("+asyncpg", ""), timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.postgres
def test_leadflow_migrate_takes_the_owner_url_and_sets_up_the_services_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A database of its own: the command uses the default schema names. Roles belong to the
    # whole server: named for this test, dropped after it.
    tag = uuid.uuid4().hex[:10]
    database, login, group = f"t_{tag}", f"t_{tag}_svc", f"t_{tag}_app"
    owner_url = str(make_url(TEST_DATABASE_URL).set(database=database))
    app_url = make_url(owner_url).set(username=login, password="pw").render_as_string(False)

    async def as_services() -> tuple[int, str]:
        conn = await asyncpg.connect(app_url.replace("+asyncpg", ""), timeout=10)
        try:
            count = await conn.fetchval("SELECT count(*) FROM ledger.postings")
            try:
                await conn.execute("DELETE FROM ledger.postings")
            except asyncpg.PostgresError as exc:
                return count, exc.sqlstate
            return count, "deleted"
        finally:
            await conn.close()

    asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    try:
        monkeypatch.setenv("LEADFLOW_MIGRATE_DATABASE_URL", owner_url)
        monkeypatch.setenv("LEADFLOW_DATABASE_URL", app_url)
        args = parser().parse_args(["migrate", "--data-dir", str(tmp_path), "--app-role", group])

        assert args.run(args) == 0
        first = capsys.readouterr().out
        assert args.run(args) == 0  # again: nothing to create

        assert f"roles: created {group}" in first and f"roles: created {login}" in first
        assert "created" not in capsys.readouterr().out
        assert f"ledger: empty -> {_head(SERVICES['ledger'])}" in first
        assert asyncio.run(as_services()) == (0, "42501")
        assert not list(tmp_path.iterdir())  # PostgreSQL, not SQLite files
    finally:
        asyncio.run(
            _admin(
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{login}"',
                f'DROP ROLE IF EXISTS "{group}"',
            )
        )


@pytest.mark.postgres
def test_leadflow_migrate_refuses_a_services_role_that_could_disable_triggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:10]
    database, login, group = f"t_{tag}", f"t_{tag}_svc", f"t_{tag}_app"
    owner_url = str(make_url(TEST_DATABASE_URL).set(database=database))
    app_url = make_url(owner_url).set(username=login).render_as_string(False)

    asyncio.run(_admin(f'CREATE DATABASE "{database}"', f'CREATE ROLE "{login}" LOGIN SUPERUSER'))
    try:
        monkeypatch.setenv("LEADFLOW_MIGRATE_DATABASE_URL", owner_url)
        monkeypatch.setenv("LEADFLOW_DATABASE_URL", app_url)
        args = parser().parse_args(["migrate", "--data-dir", str(tmp_path), "--app-role", group])

        assert args.run(args) == 1
        assert "is a superuser or owns the ledger's tables" in capsys.readouterr().err
    finally:
        asyncio.run(
            _admin(
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{login}"',
                f'DROP ROLE IF EXISTS "{group}"',
            )
        )


# --- make lint: python -m leadflow.migrate --check ---------------------------------------------


@dataclass(frozen=True)
class _Drifted(Service):
    """The gateway with a column its revisions do not make: a model changed without a revision."""

    @property
    def metadata(self) -> MetaData:
        drifted = MetaData(naming_convention=db.NAMING_CONVENTION)
        for table in super().metadata.sorted_tables:
            table.to_metadata(drifted)
        drifted.tables["pings"].append_column(Column("channel", String(16), nullable=True))
        return drifted


def test_the_lint_check_passes_when_tables_and_revisions_agree(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert migrate_main(["--check"]) == 0
    assert "gateway: tables match revision" in capsys.readouterr().out


def test_the_lint_check_fails_when_a_table_changed_without_a_revision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(SERVICES, "gateway", _Drifted("gateway", "gateway"))

    assert migrate_main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "gateway: its tables and its migrations disagree" in err
    assert "channel" in err
