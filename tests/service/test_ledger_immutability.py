"""The database itself refuses to change or remove a posted ledger row (SPEC 9), on SQLite and on
PostgreSQL, whoever connects: not only the ledger's code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from leadflow import db
from ledger_service.feedback import ReturnPolicy
from ledger_service.store import LedgerStore
from tests.service.test_ledger_journal import T0, completion, feedback, queued_lead, sold_lead

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
