"""routing's statements compiled once per dialect (routing_service.store._Sql): parameters laid
out by name, constants filled in, expanding IN lists per length."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from sqlalchemy import bindparam, select, tuple_
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import pysqlite

from routing_service.store import COUNTERS, _Sql, _Statements


def test_parameters_are_laid_out_by_name_with_the_constants_filled_in() -> None:
    take = _Statements(pysqlite.dialect()).take
    params = {"key": "k", "window": "w", "window_end": "e", "micros": 7, "max_leads": 3}
    text, args = take.bind({**params, "max_micros": None, "extra": 1})
    assert text.count("?") == len(args)
    # cap_key, window_start, window_end, used_leads=0, used_micros=0, held_leads=1, micros,
    # held_leads + 1, max_leads IS NULL OR used + held + 1 <= max_leads, max_micros IS NULL OR …
    assert args == ["k", "w", "e", 0, 0, 1, 7, 1, 3, 1, 3, None, None]


def test_postgresql_numbers_the_parameters_once_each() -> None:
    claim = _Statements(asyncpg.dialect()).claim_duplicate
    text, args = claim.bind(
        {"flow_id": "f", "digest": "d", "lead_id": "l", "expires_time": 2, "now": 1}
    )
    assert [f"${n}" in text for n in range(1, len(args) + 1)] == [True] * len(args)
    assert f"${len(args) + 1}" not in text
    # lead_id is inserted and compared: one parameter ($3) in both places.
    assert args == ["f", "d", "l", False, 2, False, 1]
    assert text.count("$3::") == 2


def test_an_expanding_list_of_tuples_is_compiled_per_length_and_flattened() -> None:
    c = COUNTERS.c
    statement = select(c.cap_key).where(
        tuple_(c.cap_key, c.held_leads).in_(bindparam("pairs", expanding=True)),
        c.used_leads == bindparam("used"),
    )
    sql = _Sql(statement, pysqlite.dialect())
    two = sql.bind({"pairs": [("a", 1), ("b", 2)], "used": 0})
    three = sql.bind({"pairs": [("a", 1), ("b", 2), ("c", 3)], "used": 5})
    assert two[1] == ["a", 1, "b", 2, 0]
    assert three[1] == ["a", 1, "b", 2, "c", 3, 5]
    assert three[0].count("?") == 7
    assert sql.bind({"pairs": [("x", 9), ("y", 8)], "used": 1}) == (two[0], ["x", 9, "y", 8, 1])


def test_statements_run_on_the_driver_as_compiled() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE cap_counters (cap_key TEXT, window_start TEXT, window_end TEXT,"
        " used_leads INT, used_micros INT, held_leads INT, held_micros INT,"
        " PRIMARY KEY (cap_key, window_start))"
    )
    sql = _Statements(pysqlite.dialect())
    window = sql_time(datetime(2026, 3, 1, 6, tzinfo=UTC))
    params = {"key": "k", "window": window, "window_end": window, "micros": 5}
    one_lead = {**params, "max_leads": 1, "max_micros": None}
    assert conn.execute(*sql.take.bind(one_lead)).fetchall() == [("k",)]
    assert conn.execute(*sql.take.bind(one_lead)).fetchall() == []  # full: one lead at most
    no_limit = {**params, "max_leads": None, "max_micros": None}
    assert conn.execute(*sql.take.bind(no_limit)).fetchall() == [("k",)]
    ten_micros = {**params, "max_leads": None, "max_micros": 10}
    assert conn.execute(*sql.take.bind(ten_micros)).fetchall() == []  # 10 held: no room for 5
    usage = conn.execute(*sql.usage.bind({"pairs": [("k", window), ("other", window)]}))
    assert usage.fetchall() == [("k", window, 2, 10)]


def sql_time(value: datetime) -> str:
    processor = COUNTERS.c.window_start.type.dialect_impl(pysqlite.dialect()).bind_processor(
        pysqlite.dialect()
    )
    assert processor is not None
    return str(processor(value))
