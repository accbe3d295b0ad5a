"""The database itself refuses to change or remove a posted ledger row (SPEC 9), on SQLite and on
PostgreSQL, whoever connects: not only the ledger's code; and on PostgreSQL the services' role
cannot switch that protection off (SPEC 10)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from delivery_service.store import DeliveryStore
from gateway.tables import Base as GatewayBase
from leadflow import db
from leadflow.migrate import SERVICES, MigrationError, migrate
from ledger_service.feedback import ReturnPolicy
from ledger_service.store import LedgerStore
from ledger_service.tables import Base as LedgerBase
from routing_service.store import RoutingStore
from tests.conftest import TEST_DATABASE_URL
from tests.service.helpers_ledger import T0, completion, feedback, queued_lead, sold_lead

if TYPE_CHECKING:
    from conftest import Database

# Every table, with a column to try changing and a WHERE that matches a posted row.
TABLES = {
    "leads": ("flow_id = 'changed'", "id = 'L1'"),
    "source_events": ("price_paid_micros = 0", "lead_id = 'L1'"),
    "recipient_events": ("sale_price_micros = 0", "lead_id = 'L1'"),
    "delivery_results": ("sale_price_micros = 0", "lead_id = 'L2'"),
    "postings": ("amount_micros = 1", "lead_id = 'L1'"),
    "feedback": ("initial_status = 'approved'", "id = 'F1'"),
    "feedback_decisions": ("decision = 'denied'", "feedback_id = 'F1'"),
}


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    """A ledger with a row in every table, and a plain connection to its database."""
    store = await LedgerStore.open(database.url, database.schema)
    try:
        await store.record(sold_lead("L1"))
        await store.record(queued_lead("L2"))
        await store.record_delivery_outcome(completion("L2-1"))
        await store.submit_feedback(
            feedback("F1", "L1", policy=ReturnPolicy(auto_approve=False, return_to_source=True)),
            T0,
        )
        await store.decide_return("F1", True, T0 + timedelta(hours=1))
    finally:
        await store.close()
    raw = db.create_engine(database.url, database.schema)
    try:
        yield raw
    finally:
        await raw.dispose()


async def _count(engine: AsyncEngine, table: str, where: str) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"))).scalar_one()
        )


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_update_of_a_posted_row_fails_in_the_database(
    engine: AsyncEngine, table: str
) -> None:
    change, where = TABLES[table]
    before = await _count(engine, table, where)

    with pytest.raises(IntegrityError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {table} SET {change} WHERE {where}"))

    assert before >= 1
    assert await _count(engine, table, where) == before


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_delete_of_a_posted_row_fails_in_the_database(
    engine: AsyncEngine, table: str
) -> None:
    _, where = TABLES[table]
    before = await _count(engine, table, where)

    with pytest.raises(IntegrityError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text(f"DELETE FROM {table} WHERE {where}"))

    assert await _count(engine, table, where) == before


# TRUNCATE is PostgreSQL's (it skips row triggers); SQLite has none, its DELETE is refused above.
@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_truncate_of_the_journal_fails_on_postgresql(database: Database) -> None:
    store = await LedgerStore.open(database.url, database.schema)
    await store.record(sold_lead("L1"))
    await store.close()
    raw = db.create_engine(database.url, database.schema)
    try:
        with pytest.raises(IntegrityError, match="append-only"):
            async with raw.begin() as conn:
                await conn.execute(text("TRUNCATE postings, feedback_decisions"))
    finally:
        await raw.dispose()


async def test_reopening_an_existing_ledger_keeps_its_triggers(database: Database) -> None:
    for _ in range(2):  # the second open runs the idempotent DDL again over existing tables
        store = await LedgerStore.open(database.url, database.schema)
        await store.close()
    store = await LedgerStore.open(database.url, database.schema)
    await store.record(sold_lead("L1"))
    await store.close()
    raw = db.create_engine(database.url, database.schema)
    try:
        with pytest.raises(IntegrityError, match="append-only"):
            async with raw.begin() as conn:
                await conn.execute(text("DELETE FROM postings"))
    finally:
        await raw.dispose()


# --- The services' PostgreSQL role (SPEC 10) ----------------------------------------------------
# The triggers above stop a plain UPDATE, but the tables' owner (or a superuser) could switch them
# off first. `leadflow migrate` runs as the owner and gives the services' role SELECT and INSERT on
# ledger tables and nothing more, so these bypasses are refused to whoever holds its credentials.


@dataclass(frozen=True)
class Roles:
    """A suite migrated by the owner, and the URL the services connect with."""

    app_url: str
    schemas: dict[str, str]
    login: str
    group: str


def _pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def roles(tmp_path: Path) -> AsyncIterator[Roles]:
    """Every service's schema migrated by the owner (the test server's superuser), and a login
    role for the services that `leadflow migrate` creates and makes a member of its group role.
    Roles belong to the whole server: named for this test, dropped after it."""
    tag = uuid.uuid4().hex[:10]
    login, group = f"t_{tag}_svc", f"t_{tag}_app"
    schemas = {name: f"t_{tag}_{name}" for name in SERVICES}
    # A quote in the password: migrate writes it into CREATE ROLE as a literal.
    app_url = make_url(TEST_DATABASE_URL).set(username=login, password="s3cret'pw")
    app_url = app_url.render_as_string(hide_password=False)
    try:
        await migrate(TEST_DATABASE_URL, tmp_path, app_url=app_url, app_role=group, schemas=schemas)
        yield Roles(app_url, schemas, login, group)
    finally:
        admin = await asyncpg.connect(_pg(TEST_DATABASE_URL), timeout=10)
        try:
            for schema in schemas.values():
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            for role in (login, group):
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


@pytest.fixture
async def app_engine(roles: Roles) -> AsyncIterator[AsyncEngine]:
    """The ledger as the services run it (their role, no DDL), with a row in every table, and a
    plain connection with the services' credentials."""
    store = await LedgerStore.open(roles.app_url, roles.schemas["ledger"])
    try:
        await store.record(sold_lead("L1"))
        await store.record(queued_lead("L2"))
        await store.record_delivery_outcome(completion("L2-1"))
        await store.submit_feedback(
            feedback("F1", "L1", policy=ReturnPolicy(auto_approve=False, return_to_source=True)),
            T0,
        )
        await store.decide_return("F1", True, T0 + timedelta(hours=1))
        assert len(await store.postings("L1")) >= 2  # reads work too
    finally:
        await store.close()
    raw = db.create_engine(roles.app_url, roles.schemas["ledger"])
    try:
        yield raw
    finally:
        await raw.dispose()


async def _refused(engine: AsyncEngine, statement: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    return caught.value


def _sqlstate(error: DBAPIError) -> str:
    return str(getattr(error.orig, "sqlstate", ""))


# Each is refused by the role's privileges (42501), before any trigger is consulted: UPDATE,
# DELETE and TRUNCATE are not granted, ALTER TABLE and DROP TRIGGER need the table's owner,
# replacing the trigger function its owner, replica mode a superuser.
BYPASSES = {
    "update": "UPDATE {table} SET {change} WHERE {where}",
    "delete": "DELETE FROM {table} WHERE {where}",
    "truncate": "TRUNCATE {table}",
    "disable_trigger": "ALTER TABLE {table} DISABLE TRIGGER ALL",
    "drop_trigger": "DROP TRIGGER append_only ON {table}",
    "replace_trigger_function": (
        "CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    ),
    "replica_role_local": "SET LOCAL session_replication_role = replica",
    "replica_role": "SET session_replication_role = replica",
}


@pytest.mark.postgres
@pytest.mark.parametrize("bypass", sorted(BYPASSES))
async def test_the_services_role_cannot_change_or_unprotect_any_ledger_table(
    app_engine: AsyncEngine, bypass: str
) -> None:
    for table, (change, where) in sorted(TABLES.items()):
        before = await _count(app_engine, table, where)

        error = await _refused(
            app_engine, BYPASSES[bypass].format(table=table, change=change, where=where)
        )

        assert _sqlstate(error) == "42501", (table, error)  # insufficient_privilege
        assert before >= 1
        assert await _count(app_engine, table, where) == before


@pytest.mark.postgres
async def test_replica_mode_then_update_is_refused_to_the_services_role(
    app_engine: AsyncEngine,
) -> None:
    # The bypass in one transaction: replica mode skips triggers, then the UPDATE.
    before = await _count(app_engine, "postings", "amount_micros = 1")
    with pytest.raises(DBAPIError):
        async with app_engine.begin() as conn:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            await conn.execute(text("UPDATE postings SET amount_micros = 1"))
    assert await _count(app_engine, "postings", "amount_micros = 1") == before


@pytest.mark.postgres
async def test_the_services_role_may_not_create_tables_in_its_schemas(roles: Roles) -> None:
    engine = db.create_engine(roles.app_url, roles.schemas["ledger"])
    try:
        error = await _refused(engine, "CREATE TABLE sneaky (id int)")
    finally:
        await engine.dispose()
    assert _sqlstate(error) == "42501"


@pytest.mark.postgres
async def test_the_services_role_runs_every_store_without_ddl_and_changes_mutable_tables(
    roles: Roles,
) -> None:
    # Opening a store on a migrated schema reads the version and nothing else: with a role that
    # may not run DDL, every service starts.
    for store in [
        await RoutingStore.open(roles.app_url, roles.schemas["routing"]),
        await DeliveryStore.open(roles.app_url, roles.schemas["delivery"]),
    ]:
        await store.close()
    gateway = db.create_engine(roles.app_url, roles.schemas["gateway"])
    try:
        await db.create_schema(gateway, roles.schemas["gateway"], GatewayBase.metadata)
        async with gateway.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO ledger_outbox (lead_id, created_time, request) "
                    "VALUES ('L1', now(), 'x')"
                )
            )
            await conn.execute(text("UPDATE ledger_outbox SET request = 'y'"))
            await conn.execute(text("DELETE FROM ledger_outbox"))
    finally:
        await gateway.dispose()


@pytest.mark.postgres
async def test_a_service_on_an_unmigrated_schema_asks_for_leadflow_migrate(
    roles: Roles,
) -> None:
    with pytest.raises(MigrationError, match="run `leadflow migrate` as the schema owner"):
        await LedgerStore.open(roles.app_url, f"{roles.schemas['ledger']}_new")


@pytest.mark.postgres
async def test_migrating_again_keeps_the_roles_and_grants(roles: Roles, tmp_path: Path) -> None:
    done = await migrate(
        TEST_DATABASE_URL,
        tmp_path,
        app_url=roles.app_url,
        app_role=roles.group,
        schemas=roles.schemas,
    )
    assert not [line for line in done if "created" in line]
    engine = db.create_engine(roles.app_url, roles.schemas["ledger"])
    try:
        error = await _refused(engine, "DELETE FROM postings")
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM postings")) == 0
    finally:
        await engine.dispose()
    assert _sqlstate(error) == "42501"


async def test_every_ledger_table_at_the_newest_revision_has_its_triggers(
    database: Database,
) -> None:
    # A revision that adds a ledger table, or recreates one (SQLite's batch mode copies a table
    # to alter it, and the copy has no triggers), must make its triggers again: checked here for
    # whatever the revisions make, not only the tables above.
    store = await LedgerStore.open(database.url, database.schema)
    await store.close()
    engine = db.create_engine(database.url, database.schema)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                rows = await conn.execute(
                    text(
                        "SELECT c.relname, t.tgname FROM pg_trigger t "
                        "JOIN pg_class c ON c.oid = t.tgrelid "
                        "WHERE c.relnamespace = current_schema()::regnamespace "
                        "AND NOT t.tgisinternal"
                    )
                )
                names = ("append_only", "append_only_truncate")
            else:
                rows = await conn.execute(
                    text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")
                )
                names = ("{table}_no_update", "{table}_no_delete")
            found = {tuple(row) for row in rows}
    finally:
        await engine.dispose()
    expected = {
        (table.name, name.format(table=table.name))
        for table in LedgerBase.metadata.sorted_tables
        for name in names
    }
    assert expected <= found
