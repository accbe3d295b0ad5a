"""`leadflow migrate` on the embedded storage: every stateful service's tables, idempotently."""

from pathlib import Path

import aiosqlite

from leadflow.migrate import migrate


async def tables(path: Path) -> set[str]:
    async with aiosqlite.connect(path) as conn:
        rows = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


async def test_migrate_creates_each_service_database_and_can_run_again(tmp_path: Path) -> None:
    await migrate(None, tmp_path)
    await migrate(None, tmp_path)  # a second run changes nothing and does not fail
    assert {"idempotency_keys", "ledger_outbox"} <= await tables(tmp_path / "gateway.db")
    assert {"leads", "source_events", "recipient_events"} <= await tables(tmp_path / "ledger.db")
