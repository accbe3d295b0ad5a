"""Storage helpers shared by every store: aware datetimes and insert-ignore on both engines."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.dialects import postgresql

from leadflow.db import aware, insert_ignore


def test_a_naive_value_is_read_as_utc() -> None:
    assert aware(datetime(2026, 3, 1, 12, 0)) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_an_aware_value_is_converted_to_utc() -> None:
    paris = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    converted = aware(paris)
    assert converted == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert converted.tzinfo is UTC


def test_sqlite_aggregate_text_is_read_as_utc() -> None:
    assert aware("2026-03-01 12:00:00.250000") == datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def test_none_stays_none() -> None:
    assert aware(None) is None


_ROWS = Table("rows", MetaData(), Column("key", String, primary_key=True), Column("n", Integer))


def test_insert_ignore_keeps_the_first_row_on_sqlite() -> None:
    engine = create_engine("sqlite://")
    _ROWS.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert_ignore(_ROWS, conn.dialect).values(key="a", n=1))
        second = conn.execute(insert_ignore(_ROWS, conn.dialect).values(key="a", n=2))
        assert second.rowcount == 0
        assert conn.execute(select(_ROWS.c.n)).scalars().all() == [1]


def test_insert_ignore_names_the_conflict_target_on_postgresql() -> None:
    statement = insert_ignore(_ROWS, "postgresql", ["key"]).values(key="a", n=1)
    sql = str(statement.compile(dialect=postgresql.dialect()))
    assert sql.endswith("ON CONFLICT (key) DO NOTHING")


def test_insert_ignore_refuses_an_unknown_database() -> None:
    with pytest.raises(ValueError, match="mysql"):
        insert_ignore(_ROWS, "mysql")
