"""routing storage: cap reservations, duplicate keys, rotation cursors and stage sales.

The only module using SQLAlchemy. Correctness with several replicas on one database rests on
single statements the database applies atomically, never on locks in this process:

- a cap reservation is `INSERT INTO cap_counters … ON CONFLICT DO UPDATE SET held = held + 1
  WHERE used + held + 1 <= max` (PostgreSQL re-evaluates the condition on the row's latest
  version after waiting for a concurrent writer's lock; SQLite has one writer at a time). A
  lead's claims are taken in one transaction, sorted by key so that two transactions never wait
  on each other in a cycle; if one is full, all roll back.
- a duplicate key is an `INSERT … ON CONFLICT DO UPDATE … WHERE <the holder lapsed>`: of two
  identical leads, the second waits on the first's uncommitted row and then finds it taken.
- the round-robin cursor moves in one `UPDATE … SET last_step = CASE …` that picks the next
  eligible step from the current value.

Every write transaction starts with a write statement, so SQLite takes its write lock up front
(waiting on busy_timeout) instead of failing to upgrade a read snapshot.

Cost (issue 14): a lead of a flow with caps and a duplicate check runs about a dozen statements
here, so each must be cheap. The statements of a lead's transactions are built once on Core
tables (the schema's one home) and compiled once per dialect into SQL text (`_Sql`); they run
on the driver's own connection with plain parameters (datetimes converted once by the column
type's own processor, rows read back as the driver gives them): no SQLAlchemy execution context,
cache key or result processing per statement. Each transaction runs as one synchronous function
over `_Tx`: on SQLite whole in one worker thread on a pysqlite connection, on PostgreSQL in one
greenlet on the asyncpg connection. SQLite's write transactions of this process also queue on an
asyncio lock: a writer that finds SQLite's lock taken polls for it in its busy handler with
sleeps of up to 100 ms. SQLAlchemy's per-statement SQL spans do not see these statements: a
lead's admission and settlement have one span each instead.

On PostgreSQL every round trip counts twice, in CPU (a socket write and a wake-up on both sides)
and in how long the hot rows (a buyer's daily counter, a stage's sales row) stay locked: a
reservation's holds and its counter takes are each sent together (`_Tx.rows_many`, pipelined), the
duplicate key rides in the statement of the usage read (admission) or of the holds' deletion
(settlement), and the hot rows are locked last, just before the commit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    TupleType,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    null,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import await_only, greenlet_spawn

from leadflow import db, tracing
from routing_service.caps import CapRule, Claim
from routing_service.tables import Base

log = logging.getLogger(__name__)

LEAD_SCOPE = "lead"
# The expiry of a hold kept for an offer whose fate is unknown: it stays until it is resolved.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)
# Sales rows older than this are deleted: weighted shares read today's, priority ties the last.
SALES_KEPT_DAYS = 35

T = TypeVar("T")

COUNTERS: Table = Base.metadata.tables["cap_counters"]
HOLDS: Table = Base.metadata.tables["cap_holds"]
DUPLICATES: Table = Base.metadata.tables["duplicate_keys"]
CURSORS: Table = Base.metadata.tables["rotation_cursors"]
SALES: Table = Base.metadata.tables["stage_sales"]


def step_scope(stage_index: int, step_index: int) -> str:
    return f"step:{stage_index}:{step_index}"


@dataclass(frozen=True)
class DuplicateClaim:
    flow_id: str
    digest: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """Why admission or a reservation failed: `duplicates` or `caps`, with the reason."""

    check: str
    reason: str
    rule: CapRule | None = None


@dataclass(frozen=True)
class SaleRecord:
    flow_id: str
    stage_index: int
    step_index: int
    buyer_id: str
    day: str


@dataclass(frozen=True)
class HeldStep:
    """A step reserved with the lead's admission: its scope, and the refusal if a cap was full."""

    scope: str
    refusal: Refusal | None


# Given the first stage's full cap windows, the step the lead is offered first and the claims
# to reserve for it (its scope and claims), or None: decided inside admission's transaction.
FirstOffer = Callable[[set[tuple[str, datetime]]], tuple[str, Sequence[Claim]] | None]


class _Refused(Exception):
    def __init__(self, refusal: Refusal, untaken: Sequence[Claim] = ()) -> None:
        self.refusal = refusal
        # The cap claims held but not counted: the one that did not fit and any after it.
        self.untaken = untaken


def _ordered(claims: Sequence[Claim]) -> list[Claim]:
    # One global lock order for every transaction: no deadlocks between replicas.
    return sorted(claims, key=lambda c: (c.rule.key, c.window))


class _Slot:
    """Where a call's parameter goes in a compiled statement: `params[name]`, or one element
    of an expanding IN list (`params[name][index]`, `[index][part]` for a tuple)."""

    __slots__ = ("index", "name", "part")

    def __init__(self, name: str, index: int = -1, part: int = -1) -> None:
        self.name, self.index, self.part = name, index, part

    def take(self, params: Mapping[str, Any]) -> Any:
        value = params[self.name]
        if self.index >= 0:
            value = value[self.index]
            if self.part >= 0:
                value = value[self.part]
        return value


class _Sql:
    """A statement compiled once for one dialect into its SQL text and the place of each
    parameter (a statement with an expanding IN list once per list length). `bind` lays out a
    call's parameters for the driver; constants of the statement are filled in."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        self._compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        binds = self._compiled.bind_names
        self._required = [(name, bind) for bind, name in binds.items() if bind.required]
        self._expanding = [name for name, bind in self._required if bind.expanding]
        self._layouts: dict[tuple[int, ...], tuple[str, list[Any]]] = {}

    def _layout(self, lengths: tuple[int, ...]) -> tuple[str, list[Any]]:
        found = self._layouts.get(lengths)
        if found is not None:
            return found
        size = dict(zip(self._expanding, lengths, strict=True))
        markers: dict[str, Any] = {}
        for name, bind in self._required:
            if not bind.expanding:
                markers[name] = _Slot(name)
            elif isinstance(bind.type, TupleType):
                parts = len(bind.type.types)
                markers[name] = [
                    tuple(_Slot(name, i, j) for j in range(parts)) for i in range(size[name])
                ]
            else:
                markers[name] = [_Slot(name, i) for i in range(size[name])]
        compiled = self._compiled
        params = compiled.construct_params(markers)
        if self._expanding:
            state = compiled.construct_expanded_state(params)
            layout = (state.statement, list(state.positional_parameters))
        else:
            layout = (compiled.string, [params[name] for name in compiled.positiontup])
        self._layouts[lengths] = layout
        return layout

    def bind(self, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        text, slots = self._layout(tuple(len(params[name]) for name in self._expanding))
        return text, [s.take(params) if type(s) is _Slot else s for s in slots]


class _Tx(Protocol):
    """The statements of one transaction, on the driver's connection."""

    def rows(self, sql: _Sql, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]: ...

    def run(self, sql: _Sql, params: Mapping[str, Any]) -> None: ...

    def rows_many(self, sql: _Sql, params: Sequence[Mapping[str, Any]]) -> Sequence[Sequence[Any]]:
        """`sql` once per parameter set, in order: the rows of all."""
        ...

    def run_many(self, sql: _Sql, params: Sequence[Mapping[str, Any]]) -> None:
        """`sql` once per parameter set, in order."""
        ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._cursor = conn.cursor()

    def rows(self, sql: _Sql, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return self._cursor.execute(*sql.bind(params)).fetchall()

    def run(self, sql: _Sql, params: Mapping[str, Any]) -> None:
        self._cursor.execute(*sql.bind(params))

    def rows_many(self, sql: _Sql, params: Sequence[Mapping[str, Any]]) -> Sequence[Sequence[Any]]:
        return [row for one in params for row in self.rows(sql, one)]

    def run_many(self, sql: _Sql, params: Sequence[Mapping[str, Any]]) -> None:
        for one in params:
            self.run(sql, one)


class _AsyncpgTx:
    """Runs inside `greenlet_spawn`: each statement awaits the asyncpg connection directly.
    A statement run for several parameter sets is sent in one pipelined round trip."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def rows(self, sql: _Sql, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        text, args = sql.bind(params)
        rows: Sequence[Sequence[Any]] = await_only(self._conn.fetch(text, *args))
        return rows

    def run(self, sql: _Sql, params: Mapping[str, Any]) -> None:
        text, args = sql.bind(params)
        await_only(self._conn.execute(text, *args))

    def rows_many(self, sql: _Sql, params: Sequence[Mapping[str, Any]]) -> Sequence[Sequence[Any]]:
        if len(params) <= 1:
            return self.rows(sql, params[0]) if params else []
        bound = [sql.bind(one) for one in params]
        rows: Sequence[Sequence[Any]] = await_only(
            self._conn.fetchmany(bound[0][0], [args for _, args in bound])
        )
        return rows

    def run_many(self, sql: _Sql, params: Sequence[Mapping[str, Any]]) -> None:
        if len(params) <= 1:
            if params:
                self.run(sql, params[0])
            return
        bound = [sql.bind(one) for one in params]
        await_only(self._conn.executemany(bound[0][0], [args for _, args in bound]))


class _Statements:
    """The statements of a lead's transactions, built once and compiled for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        postgres = dialect.name == "postgresql"
        insert = postgresql.insert if postgres else sqlite.insert
        counter, hold, dup, sale = COUNTERS.c, HOLDS.c, DUPLICATES.c, SALES.c
        self._insert = insert

        def sql(statement: Executable) -> _Sql:
            return _Sql(statement, dialect)

        self.hold = sql(
            insert(HOLDS)
            .values(
                lead_id=bindparam("lead_id"),
                scope=bindparam("scope"),
                cap_key=bindparam("cap_key"),
                window_start=bindparam("window_start"),
                micros=bindparam("micros"),
                expires_time=bindparam("expires_time"),
            )
            .on_conflict_do_nothing(index_elements=["lead_id", "scope", "cap_key"])
            .returning(hold.cap_key)
        )
        returned = (hold.scope, hold.cap_key, hold.window_start, hold.micros)
        self.drop_holds = sql(
            delete(HOLDS).where(hold.lead_id == bindparam("lead_id")).returning(*returned)
        )
        self.drop_scoped_holds = sql(
            delete(HOLDS)
            .where(
                hold.lead_id == bindparam("lead_id"),
                hold.scope.in_(bindparam("scopes", expanding=True)),
            )
            .returning(*returned)
        )
        self.drop_holds_except = sql(
            delete(HOLDS)
            .where(
                hold.lead_id == bindparam("lead_id"),
                hold.scope.not_in(bindparam("keep", expanding=True)),
            )
            .returning(*returned)
        )
        self.drop_hold = sql(
            delete(HOLDS).where(
                hold.lead_id == bindparam("lead_id"),
                hold.scope == bindparam("scope"),
                hold.cap_key == bindparam("key"),
                hold.window_start == bindparam("window"),
            )
        )
        self.keep_holds = sql(
            update(HOLDS)
            .where(
                hold.lead_id == bindparam("held_lead"),
                hold.scope.in_(bindparam("held_scopes", expanding=True)),
            )
            .values(expires_time=bindparam("until"))
        )
        self.move = sql(
            update(COUNTERS)
            .where(counter.cap_key == bindparam("key"), counter.window_start == bindparam("window"))
            .values(
                held_leads=counter.held_leads
                - bindparam("give_leads", type_=counter.held_leads.type),
                held_micros=counter.held_micros
                - bindparam("give_micros", type_=counter.held_micros.type),
                used_leads=counter.used_leads
                + bindparam("add_leads", type_=counter.used_leads.type),
                used_micros=counter.used_micros
                + bindparam("add_micros", type_=counter.used_micros.type),
            )
        )
        self.ensure_counter = sql(
            insert(COUNTERS)
            .values(
                cap_key=bindparam("key"),
                window_start=bindparam("window"),
                window_end=bindparam("window_end"),
                used_leads=0,
                used_micros=0,
                held_leads=0,
                held_micros=0,
            )
            .on_conflict_do_nothing(index_elements=["cap_key", "window_start"])
        )
        usage = select(
            counter.cap_key,
            counter.window_start,
            counter.used_leads + counter.held_leads,
            counter.used_micros + counter.held_micros,
        ).where(
            tuple_(counter.cap_key, counter.window_start).in_(bindparam("pairs", expanding=True))
        )
        self.usage = sql(usage)
        self.expired = sql(
            select(hold.cap_key, hold.window_start, func.count(), func.sum(hold.micros))
            .where(
                tuple_(hold.cap_key, hold.window_start).in_(bindparam("pairs", expanding=True)),
                hold.expires_time < bindparam("now", type_=hold.expires_time.type),
            )
            .group_by(hold.cap_key, hold.window_start)
        )
        lapsed = (
            select(hold.lead_id, hold.scope, hold.cap_key)
            .where(
                hold.cap_key == bindparam("key"),
                hold.window_start == bindparam("window"),
                hold.expires_time < bindparam("now", type_=hold.expires_time.type),
            )
            .with_for_update(skip_locked=True)
        )
        self.sweep = sql(
            delete(HOLDS)
            .where(tuple_(hold.lead_id, hold.scope, hold.cap_key).in_(lapsed))
            .returning(hold.micros)
        )

        # Create the window's counter holding this claim, or add the claim to it if it fits:
        # one statement, so the check and the increment are one atomic step. Returns a row
        # when taken. A limit passed as NULL does not apply: one statement for every kind of
        # cap, so that a lead's claims can be sent together (`_Tx.rows_many`).
        take = insert(COUNTERS)
        max_leads = bindparam("max_leads", type_=counter.used_leads.type)
        max_micros = bindparam("max_micros", type_=counter.used_micros.type)
        self.take = sql(
            take.values(
                cap_key=bindparam("key"),
                window_start=bindparam("window"),
                window_end=bindparam("window_end"),
                used_leads=0,
                used_micros=0,
                held_leads=1,
                held_micros=bindparam("micros"),
            )
            .on_conflict_do_update(
                index_elements=["cap_key", "window_start"],
                set_={
                    "held_leads": counter.held_leads + 1,
                    "held_micros": counter.held_micros + take.excluded.held_micros,
                },
                where=and_(
                    max_leads.is_(None)
                    | (counter.used_leads + counter.held_leads + 1 <= max_leads),
                    max_micros.is_(None)
                    | (
                        counter.used_micros + counter.held_micros + take.excluded.held_micros
                        <= max_micros
                    ),
                ),
            )
            .returning(counter.cap_key)
        )

        claim = insert(DUPLICATES)
        claim_duplicate = (
            claim.values(
                flow_id=bindparam("flow_id"),
                digest=bindparam("digest"),
                lead_id=bindparam("lead_id"),
                committed=False,
                expires_time=bindparam("expires_time"),
            )
            .on_conflict_do_update(
                index_elements=["flow_id", "digest"],
                set_={
                    "lead_id": claim.excluded.lead_id,
                    "committed": False,
                    "expires_time": claim.excluded.expires_time,
                },
                # Taken over only when the earlier lead's key has lapsed (or it is this lead).
                where=(dup.expires_time < bindparam("now", type_=dup.expires_time.type))
                | (dup.lead_id == bindparam("lead_id")),
            )
            .returning(dup.lead_id)
        )
        self.claim_duplicate = sql(claim_duplicate)
        # PostgreSQL: the duplicate key claimed in a CTE of the usage read that follows it in
        # admission (`usage`'s rows, then one row of NULLs and the number of keys claimed, 0 or
        # 1): one round trip less. The read takes no lock; the key is the only row locked.
        self.claim_and_usage: _Sql | None = None
        if postgres:
            claimed = claim_duplicate.cte("claimed")
            self.claim_and_usage = sql(
                union_all(
                    usage,
                    select(null(), null(), func.count(), null()).select_from(claimed),
                )
            )
        held_by = and_(
            dup.flow_id == bindparam("dup_flow"),
            dup.digest == bindparam("dup_digest"),
            dup.lead_id == bindparam("dup_lead"),
        )
        self.commit_duplicate = sql(
            update(DUPLICATES)
            .where(held_by)
            .values(committed=True, expires_time=bindparam("until", type_=dup.expires_time.type))
        )
        self.drop_duplicate = sql(delete(DUPLICATES).where(held_by))
        # PostgreSQL: a lead's duplicate key committed (True) or dropped (False) by the statement
        # that deletes its holds, in a CTE: one round trip less in settlement. Nothing else
        # locks both a lead's key and its holds, so their order in the statement cannot matter.
        # (SQLite has no INSERT, UPDATE or DELETE in a WITH clause.)
        self.settle_key: dict[bool, _Sql] = {}
        if postgres:
            drop_all = (
                delete(HOLDS).where(hold.lead_id == bindparam("lead_id")).returning(*returned)
            )
            keep_key = (
                update(DUPLICATES)
                .where(held_by)
                .values(
                    committed=True, expires_time=bindparam("until", type_=dup.expires_time.type)
                )
            )
            drop_key = delete(DUPLICATES).where(held_by)
            self.settle_key[True] = sql(drop_all.add_cte(keep_key.cte("kept_key")))
            self.settle_key[False] = sql(drop_all.add_cte(drop_key.cte("dropped_key")))

        count = insert(SALES)
        self.count_sale = sql(
            count.values(
                flow_id=bindparam("flow_id"),
                stage_index=bindparam("stage_index"),
                buyer_id=bindparam("buyer_id"),
                day=bindparam("day"),
                sales=1,
                last_sold_time=bindparam("when"),
            ).on_conflict_do_update(
                index_elements=["flow_id", "stage_index", "buyer_id", "day"],
                set_={"sales": sale.sales + 1, "last_sold_time": count.excluded.last_sold_time},
            )
        )
        self.counter = select(
            counter.used_leads, counter.used_micros, counter.held_leads, counter.held_micros
        ).where(counter.cap_key == bindparam("key"), counter.window_start == bindparam("window"))
        self.sales_on = select(sale.buyer_id, sale.sales).where(
            sale.flow_id == bindparam("flow_id"),
            sale.stage_index == bindparam("stage_index"),
            sale.day == bindparam("day"),
        )
        self.last_sales = (
            select(sale.buyer_id, func.max(sale.last_sold_time))
            .where(
                sale.flow_id == bindparam("flow_id"), sale.stage_index == bindparam("stage_index")
            )
            .group_by(sale.buyer_id)
        )


def _fits_empty(claim: Claim) -> bool:
    max_leads, max_micros = claim.limit
    if max_leads is not None and max_leads < 1:
        return False
    return max_micros is None or claim.micros <= max_micros


def _transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return work(conn)


def _reading(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return work(conn)


def _sqlite_run(engine: Engine, work: Callable[[_Tx], T], commit: bool) -> T:
    """`work` on a pooled pysqlite connection: committed (`commit`) or rolled back."""
    conn = engine.raw_connection()
    try:
        driver = conn.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        result = work(_SqliteTx(driver))
        if commit:
            conn.commit()
        return result
    finally:
        conn.close()  # rolls back what is not committed


class RoutingStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._sql = _Statements(engine.dialect)
        # A datetime parameter as the driver takes it (SQLite: text in SQLAlchemy's format).
        self._time: Callable[[datetime], Any] = HOLDS.c.expires_time.type.dialect_impl(
            engine.dialect
        ).bind_processor(engine.dialect) or (lambda value: value)
        # SQLite: transactions run whole in a worker thread on a pysqlite engine of the same
        # file, and this process's writers queue here rather than in SQLite's busy handler.
        self._sync: Engine | None = None
        self._write_lock: asyncio.Lock | None = None
        if engine.dialect.name == "sqlite":
            # A connection per worker thread at most (to_thread's pool): none opened and closed
            # again per transaction, as a smaller pool's overflow would.
            self._sync = create_engine(engine.url.set(drivername="sqlite"), pool_size=32)
            event.listen(self._sync, "connect", db.sqlite_pragmas)
            self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, schema: str) -> RoutingStore:
        """Connect to `url` and create routing's schema and tables if they are missing."""
        return cls(await db.open_engine(url, schema, Base.metadata))

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        await self._engine.dispose()

    async def _run(
        self, work: Callable[[_Tx], T], write: bool = True, one_statement: bool = False
    ) -> T:
        """`work` on the driver's connection: in one write transaction (`write`; an exception
        rolls it back), or reading only. Reads, and writes of one statement (atomic by
        themselves), run in autocommit on PostgreSQL: no BEGIN and COMMIT round trips."""
        if self._sync is not None:
            run = partial(_sqlite_run, self._sync, work, write)
            loop = asyncio.get_running_loop()
            if not write:
                return await loop.run_in_executor(None, run)
            assert self._write_lock is not None
            async with self._write_lock:
                return await loop.run_in_executor(None, run)
        async with self._engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            tx = _AsyncpgTx(raw)
            if not write or one_statement:
                return await greenlet_spawn(work, tx)
            async with raw.transaction():
                return await greenlet_spawn(work, tx)

    async def _write(self, work: Callable[[Connection], T]) -> T:
        """`work` in one write transaction on SQLAlchemy's connection (what a lead's path does
        not run); an exception rolls it back."""
        if self._sync is not None:
            assert self._write_lock is not None
            async with self._write_lock:
                return await asyncio.to_thread(_transaction, self._sync, work)
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    async def _read(self, work: Callable[[Connection], T]) -> T:
        """`work` reading only. On PostgreSQL in autocommit: no BEGIN and ROLLBACK round trips."""
        if self._sync is not None:
            return await asyncio.to_thread(_reading, self._sync, work)
        async with self._engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await autocommit.run_sync(work)

    # --- caps ---------------------------------------------------------------------------------

    def _take_params(self, claim: Claim, window: Any) -> dict[str, Any]:
        max_leads, max_micros = claim.limit
        return {
            "key": claim.rule.key,
            "window": window,
            "window_end": self._time(claim.rule.window_end(claim.window)),
            "micros": claim.micros,
            "max_leads": max_leads,
            "max_micros": max_micros,
        }

    def _take(self, tx: _Tx, claim: Claim, window: Any) -> bool:
        """Count one more lead (and its money) as held on the claim's window; False when full."""
        if not _fits_empty(claim):
            return False
        return bool(tx.rows(self._sql.take, self._take_params(claim, window)))

    def _sweep(self, tx: _Tx, key: str, window: Any, now: Any) -> int:
        """Give back what expired holds on one window kept (their gateway never settled).
        `window` and `now` as the driver takes them.

        A hold its late gateway is settling right now is locked by that settlement and skipped
        (PostgreSQL SKIP LOCKED): the settlement gives it back, and waiting for it here while
        holding the counter's row lock could deadlock with it.
        """
        rows = tx.rows(self._sql.sweep, {"key": key, "window": window, "now": now})
        if rows:
            tx.run(
                self._sql.move,
                {
                    "key": key,
                    "window": window,
                    "give_leads": len(rows),
                    "give_micros": sum(int(r[0]) for r in rows),
                    "add_leads": 0,
                    "add_micros": 0,
                },
            )
            log.info("released %d expired reservations on cap %s", len(rows), key)
        return len(rows)

    def _reserve_in(
        self,
        tx: _Tx,
        lead_id: str,
        scope: str,
        claims: Sequence[Claim],
        expires: Any,
        now: Any,
    ) -> None:
        """Hold every claim, then count them into their windows, in the global key order; a
        full window is swept of lapsed holds and tried again. `expires` and `now` as the driver
        takes them.

        The holds are sent together, then the counters (PostgreSQL: one round trip each, so
        the hot counter rows stay locked for one round trip and the commit). A claim after a
        full one is taken too, which changes nothing: a refusal rolls back, or `_try_reserve`
        gives back what the scope took."""
        # One claim per cap: a second one's hold would conflict with the first's, never taken.
        ordered: list[Claim] = []
        for claim in _ordered(claims):
            if not ordered or ordered[-1].rule.key != claim.rule.key:
                ordered.append(claim)
        windows = [self._time(claim.window) for claim in ordered]
        held = tx.rows_many(
            self._sql.hold,
            [
                {
                    "lead_id": lead_id,
                    "scope": scope,
                    "cap_key": claim.rule.key,
                    "window_start": window,
                    "micros": claim.micros,
                    "expires_time": expires,
                }
                for claim, window in zip(ordered, windows, strict=True)
            ],
        )
        # A claim whose hold was there already (a retried request) is held: nothing to count.
        inserted = {row[0] for row in held}
        pending = [
            (claim, window)
            for claim, window in zip(ordered, windows, strict=True)
            if claim.rule.key in inserted
        ]
        fitting = [(claim, window) for claim, window in pending if _fits_empty(claim)]
        taken = {
            row[0]
            for row in tx.rows_many(
                self._sql.take, [self._take_params(claim, window) for claim, window in fitting]
            )
        }
        for n, (claim, window) in enumerate(pending):
            if claim.rule.key in taken:
                continue
            if self._sweep(tx, claim.rule.key, window, now) and self._take(tx, claim, window):
                continue
            untaken = [claim] + [c for c, _ in pending[n + 1 :] if c.rule.key not in taken]
            raise _Refused(Refusal("caps", claim.rule.reason, claim.rule), untaken)

    def _try_reserve(
        self,
        tx: _Tx,
        lead_id: str,
        scope: str,
        claims: Sequence[Claim],
        expires: Any,
        now: Any,
    ) -> Refusal | None:
        """`_reserve_in` inside a larger transaction that must not fail with it: a refusal
        undoes this scope's holds (the claims taken are given back; the hold rows of those
        not taken, never counted, are deleted) and is returned."""
        try:
            self._reserve_in(tx, lead_id, scope, claims, expires, now)
        except _Refused as refused:
            assert refused.untaken
            tx.run_many(
                self._sql.drop_hold,
                [
                    {
                        "lead_id": lead_id,
                        "scope": scope,
                        "key": failed.rule.key,
                        "window": self._time(failed.window),
                    }
                    for failed in refused.untaken
                ],
            )
            self._settle_holds(tx, lead_id, [scope], [])
            return refused.refusal
        return None

    async def reserve(
        self, lead_id: str, scope: str, claims: Sequence[Claim], ttl: timedelta
    ) -> Refusal | None:
        """Hold one unit (and its money) on every claimed window, all or none."""
        if not claims:
            return None
        now = datetime.now(UTC)
        expires, at = self._time(now + ttl), self._time(now)

        def work(tx: _Tx) -> None:
            self._reserve_in(tx, lead_id, scope, claims, expires, at)

        try:
            await self._run(work)
        except _Refused as refused:
            return refused.refusal
        return None

    def _settle_holds(
        self,
        tx: _Tx,
        lead_id: str,
        scopes: Collection[str] | None,
        commit: Collection[str],
        final: Sequence[Claim] = (),
        keep: Collection[str] = (),
        held: Sequence[Sequence[Any]] | None = None,
    ) -> tuple[int, int]:
        """Delete a lead's holds (in `scopes`, or all but those in `keep`) and give their amounts
        back; those whose scope is in `commit` are counted as used instead. Returns (committed,
        released). `held`: the lead's holds, deleted already (`_Statements.settle_key`).

        `final` gives committed amounts known only now (a sale price after delivery); a final
        claim whose hold has gone (lapsed and swept) is still counted: the sale happened.
        Counters are updated in the one global key order, like reservations.
        """
        if held is None and scopes is not None:
            held = tx.rows(
                self._sql.drop_scoped_holds, {"lead_id": lead_id, "scopes": list(scopes)}
            )
        elif held is None and keep:
            held = tx.rows(self._sql.drop_holds_except, {"lead_id": lead_id, "keep": list(keep)})
        elif held is None:
            held = tx.rows(self._sql.drop_holds, {"lead_id": lead_id})
        # Windows as the driver hands them back and takes them (SQLite: text), compared so too.
        finals = [((c.rule.key, self._time(c.window)), c) for c in final]
        amounts = {pair: c.micros for pair, c in finals}
        # Per window: [held leads, held micros] to give back, [used leads, used micros] to add.
        deltas: dict[tuple[str, Any], list[int]] = {}
        committed = released = 0
        for scope, key, window, micros in held:
            delta = deltas.setdefault((key, window), [0, 0, 0, 0])
            delta[0] += 1
            delta[1] += int(micros)
            if scope in commit:
                delta[2] += 1
                delta[3] += amounts.get((key, window), int(micros))
                committed += 1
            else:
                released += 1
        lapsed = [(pair, c) for pair, c in finals if pair not in deltas]
        for pair, claim in lapsed:
            deltas[pair] = [0, 0, 1, claim.micros]
            committed += 1
        for (key, window), claim in sorted(lapsed, key=lambda lapse: lapse[0]):
            tx.run(
                self._sql.ensure_counter,
                {
                    "key": key,
                    "window": window,
                    "window_end": self._time(claim.rule.window_end(claim.window)),
                },
            )
        if deltas:
            tx.run_many(
                self._sql.move,
                [
                    {
                        "key": key,
                        "window": window,
                        "give_leads": held_leads,
                        "give_micros": held_micros,
                        "add_leads": used_leads,
                        "add_micros": used_micros,
                    }
                    for (key, window), (held_leads, held_micros, used_leads, used_micros) in sorted(
                        deltas.items()
                    )
                ],
            )
        return committed, released

    async def settle(
        self, lead_id: str, scope: str, commit: bool, final: Sequence[Claim] = ()
    ) -> int:
        """Commit (with the `final` amounts) or release one scope's holds."""

        def work(tx: _Tx) -> tuple[int, int]:
            return self._settle_holds(
                tx, lead_id, [scope], [scope] if commit else [], final if commit else ()
            )

        committed, released = await self._run(work)
        return committed + released

    async def usage(self, claims: Sequence[Claim]) -> set[tuple[str, datetime]]:
        """The claimed windows that cannot take this lead now (read only: reserving decides).

        Holds past their expiry are not counted, so an abandoned reservation never keeps a
        step out of the ranking; the next reservation on that window sweeps it.
        """
        if not claims:
            return set()
        now = self._time(datetime.now(UTC))
        return await self._run(lambda tx: self._full(tx, claims, now), write=False)

    def _full(
        self,
        tx: _Tx,
        claims: Sequence[Claim],
        now: Any,
        duplicate: dict[str, Any] | None = None,
    ) -> set[tuple[str, datetime]]:
        """The claims' full windows. With `duplicate` (the parameters of the duplicate key's
        claim, PostgreSQL) the key is claimed in the same statement (`claim_and_usage`)."""
        if not claims:
            return set()
        # Counters are keyed by the window as the driver hands it back (SQLite: text).
        windows = {(c.rule.key, c.window): (c.rule.key, self._time(c.window)) for c in claims}
        pairs = list(set(windows.values()))
        if duplicate is not None:
            assert self._sql.claim_and_usage is not None
            rows = tx.rows(self._sql.claim_and_usage, {**duplicate, "pairs": pairs})
            # The claim's row is the one without a cap key: how many keys it claimed.
            if not any(row[0] is None and row[2] for row in rows):
                raise _Refused(Refusal("duplicates", duplicate["reason"]))
            rows = [row for row in rows if row[0] is not None]
        else:
            rows = tx.rows(self._sql.usage, {"pairs": pairs})
        counters = {(key, window): (int(leads), int(micros)) for key, window, leads, micros in rows}
        full = [c for c in claims if not _fits(c, counters.get(windows[(c.rule.key, c.window)]))]
        if not full:
            return set()
        expired = {
            (key, window): (int(n), int(micros or 0))
            for key, window, n, micros in tx.rows(
                self._sql.expired,
                {"pairs": list({windows[(c.rule.key, c.window)] for c in full}), "now": now},
            )
        }
        live = {
            pair: (leads - expired.get(pair, (0, 0))[0], micros - expired.get(pair, (0, 0))[1])
            for pair, (leads, micros) in counters.items()
        }
        return {
            (c.rule.key, c.window)
            for c in full
            if not _fits(c, live.get(windows[(c.rule.key, c.window)]))
        }

    async def counter(self, key: str, window: datetime) -> tuple[int, int, int, int] | None:
        """(used leads, used micros, held leads, held micros) of one window: for tests and ops."""

        def work(conn: Connection) -> Any:
            return conn.execute(self._sql.counter, {"key": key, "window": window}).first()

        row = await self._read(work)
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    # --- admission ----------------------------------------------------------------------------

    async def admit(
        self,
        lead_id: str,
        duplicate: DuplicateClaim | None,
        claims: Sequence[Claim],
        ttl: timedelta,
    ) -> Refusal | None:
        """Claim the duplicate key, then reserve the flow and source caps: all or nothing."""
        refusal, _, _ = await self.admit_and_probe(lead_id, duplicate, claims, ttl)
        return refusal

    async def admit_and_probe(
        self,
        lead_id: str,
        duplicate: DuplicateClaim | None,
        claims: Sequence[Claim],
        ttl: timedelta,
        probe: Sequence[Claim] = (),
        first_offer: FirstOffer | None = None,
    ) -> tuple[Refusal | None, set[tuple[str, datetime]], HeldStep | None]:
        """`admit`, and in the same transaction, for an admitted lead, `usage(probe)` (the first
        stage's step caps) and the reservation of the step `first_offer` picks from that usage
        (the step the lead is offered first, when it is known without another round trip):
        one transaction where there were three."""
        if duplicate is None and not claims and first_offer is None:
            return None, await self.usage(probe), None
        moment = datetime.now(UTC)
        now, expires = self._time(moment), self._time(moment + ttl)

        key = None
        if duplicate is not None:
            key = {
                "flow_id": duplicate.flow_id,
                "digest": duplicate.digest,
                "lead_id": lead_id,
                "expires_time": expires,
                "now": now,
                "reason": duplicate.reason,
            }
        # PostgreSQL: the key claimed with the usage read when no cap is reserved between them.
        with_usage = bool(key and probe and not claims and self._sql.claim_and_usage)

        def work(tx: _Tx) -> tuple[set[tuple[str, datetime]], HeldStep | None]:
            if key is not None and not with_usage:
                self._claim_duplicate(tx, key)
            self._reserve_in(tx, lead_id, LEAD_SCOPE, claims, expires, now)
            full = self._full(tx, probe, now, key if with_usage else None)
            picked = first_offer(full) if first_offer is not None else None
            if picked is None:
                return full, None
            scope, step_claims = picked
            refusal = self._try_reserve(tx, lead_id, scope, step_claims, expires, now)
            return full, HeldStep(scope, refusal)

        try:
            # Without caps to reserve the writes are one statement; the probe only reads.
            one = not claims and first_offer is None
            # One span per transaction: its statements bypass SQLAlchemy's per-statement spans.
            with tracing.span("routing admission", lead_id):
                full, held = await self._run(work, one_statement=one)
        except _Refused as refused:
            return refused.refusal, set(), None
        return None, full, held

    def _claim_duplicate(self, tx: _Tx, key: dict[str, Any]) -> None:
        if not tx.rows(self._sql.claim_duplicate, key):
            raise _Refused(Refusal("duplicates", key["reason"]))

    # --- the end of a lead --------------------------------------------------------------------

    async def settle_lead(
        self,
        lead_id: str,
        accepted: bool,
        duplicate: DuplicateClaim | None,
        duplicate_until: datetime | None,
        sales: Sequence[SaleRecord],
        sold_time: datetime,
        unknown: Collection[str] = (),
        final: Sequence[Claim] = (),
    ) -> tuple[int, int]:
        """Commit (accepted) or release the lead's admission; commit the holds of sold steps
        (at the `final` amounts: the sale prices after delivery), keep those of the `unknown`
        step scopes held until they are resolved, and release every other; count its sales."""
        commit = {step_scope(sale.stage_index, sale.step_index) for sale in sales}
        if accepted:
            commit.add(LEAD_SCOPE)
        sold_at = self._time(sold_time)

        def work(tx: _Tx) -> tuple[int, int]:
            # The duplicate key before any counter, as in admission, then the counters, then the
            # sales rows: one lock order.
            held = None
            if duplicate is not None:
                key = {
                    "dup_flow": duplicate.flow_id,
                    "dup_digest": duplicate.digest,
                    "dup_lead": lead_id,
                }
                keep_key = accepted and duplicate_until is not None
                if duplicate_until is not None:
                    key["until"] = self._time(duplicate_until)
                if self._sql.settle_key and not unknown:
                    held = tx.rows(self._sql.settle_key[keep_key], {**key, "lead_id": lead_id})
                elif keep_key:
                    tx.run(self._sql.commit_duplicate, key)
                else:
                    tx.run(self._sql.drop_duplicate, key)
            if unknown:
                # SPEC 8.1: an offer whose fate is unknown keeps its holds, never lapsing, until
                # ResolveStep commits or releases them (a hold already resolved is not here).
                tx.run(
                    self._sql.keep_holds,
                    {
                        "held_lead": lead_id,
                        "held_scopes": list(unknown),
                        "until": self._time(NEVER),
                    },
                )
            settled = self._settle_holds(tx, lead_id, None, commit, final, unknown, held)
            # The sales last: a stage's sales row is as hot as its buyer's cap counter, and is
            # then locked only for this statement and the commit.
            if sales:
                tx.run_many(
                    self._sql.count_sale,
                    [
                        {
                            "flow_id": sale.flow_id,
                            "stage_index": sale.stage_index,
                            "buyer_id": sale.buyer_id,
                            "day": sale.day,
                            "when": sold_at,
                        }
                        for sale in sorted(
                            sales, key=lambda s: (s.flow_id, s.stage_index, s.buyer_id)
                        )
                    ],
                )
            return settled

        with tracing.span("routing settlement", lead_id):
            return await self._run(work)

    # --- strategies' state --------------------------------------------------------------------

    async def rotate(self, flow_id: str, stage_index: int, eligible: Sequence[int]) -> int:
        """Move a round-robin cursor to the next eligible step after it and return that step."""
        ordered = sorted(set(eligible))
        cursor = CURSORS.c

        def work(conn: Connection) -> Any:
            conn.execute(
                self._sql._insert(CURSORS)
                .values(flow_id=flow_id, stage_index=stage_index, last_step=-1)
                .on_conflict_do_nothing(index_elements=["flow_id", "stage_index"])
            )
            return conn.execute(
                update(CURSORS)
                .where(cursor.flow_id == flow_id, cursor.stage_index == stage_index)
                .values(
                    last_step=case(*[(cursor.last_step < i, i) for i in ordered], else_=ordered[0])
                )
                .returning(cursor.last_step)
            ).first()

        row = await self._write(work)
        assert row is not None
        return int(row[0])

    async def sales_on(self, flow_id: str, stage_index: int, day: str) -> dict[str, int]:
        def work(conn: Connection) -> dict[str, int]:
            rows = conn.execute(
                self._sql.sales_on, {"flow_id": flow_id, "stage_index": stage_index, "day": day}
            )
            return {buyer: int(sales) for buyer, sales in rows}

        return await self._read(work)

    async def last_sales(self, flow_id: str, stage_index: int) -> dict[str, datetime]:
        def work(conn: Connection) -> dict[str, datetime]:
            rows = conn.execute(
                self._sql.last_sales, {"flow_id": flow_id, "stage_index": stage_index}
            )
            return {buyer: db_time(when) for buyer, when in rows if when is not None}

        return await self._read(work)

    # --- housekeeping -------------------------------------------------------------------------

    async def purge(self, now: datetime) -> None:
        """Delete what no decision reads any more: lapsed holds (giving back what they held),
        ended windows, lapsed duplicate keys and old sales."""
        hold = HOLDS.c

        def find(conn: Connection) -> list[Any]:
            return list(
                conn.execute(
                    select(hold.cap_key, hold.window_start)
                    .where(hold.expires_time < now)
                    .distinct()
                ).all()
            )

        at = self._time(now)
        for key, window in sorted(await self._read(find)):
            await self._run(partial(self._sweep, key=key, window=self._time(window), now=at))
        day_ago = now - timedelta(days=1)
        oldest = (now - timedelta(days=SALES_KEPT_DAYS)).date().isoformat()

        def drop(conn: Connection) -> None:
            conn.execute(delete(COUNTERS).where(COUNTERS.c.window_end < day_ago))
            conn.execute(delete(DUPLICATES).where(DUPLICATES.c.expires_time < now))
            conn.execute(delete(SALES).where(SALES.c.day < oldest))

        await self._write(drop)


def db_time(value: datetime | str) -> datetime:
    """An aggregate's datetime: SQLite hands back text (func.max loses the column type)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fits(claim: Claim, usage: tuple[int, int] | None) -> bool:
    """Whether the claim fits on its window's usage (leads, micros; None: an empty window)."""
    leads, micros = usage or (0, 0)
    max_leads, max_micros = claim.limit
    if max_leads is not None and leads + 1 > max_leads:
        return False
    return max_micros is None or micros + claim.micros <= max_micros
