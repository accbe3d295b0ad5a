"""gateway storage: idempotency keys, the ledger outbox, asynchronous intakes and pings. The only
module using SQLAlchemy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Executable,
    Integer,
    Table,
    bindparam,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from gateway.tables import Base, IdempotencyKey, Intake, LedgerOutbox, Ping, RejectedRecord
from leadflow.db import create_schema, sqlite_pragmas

log = logging.getLogger(__name__)

T = TypeVar("T")

OUTBOX_TABLE = Table(LedgerOutbox.__tablename__, Base.metadata)
INTAKE_TABLE = Table(Intake.__tablename__, Base.metadata)
REJECTED_TABLE = Table(RejectedRecord.__tablename__, Base.metadata)
KEYS_TABLE = Table(IdempotencyKey.__tablename__, Base.metadata)
PINGS_TABLE = Table(Ping.__tablename__, Base.metadata)

POLL_SECONDS = 0.05
# Longer than any submission can take (every call's deadline and the delivery retries).
ABANDONED_CLAIM = timedelta(minutes=10)


@dataclass(frozen=True)
class StoredResponse:
    """A response as an idempotency key keeps it: status and body byte for byte (the headers
    are not kept; a 202's status URL is in its body too)."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxRecord:
    """A lead's RecordLeadRequest, serialized; `result` finishes the lead's asynchronous intake."""

    lead_id: str
    request: bytes
    result: bytes | None = None


@dataclass(frozen=True)
class IntakeRow:
    """An asynchronous submission: `submission` and `result` are JSON."""

    lead_id: str
    flow_id: str
    source_id: str
    submission: bytes
    result: bytes | None = None
    claimed: bool = False


@dataclass(frozen=True)
class PingQuote:
    """The price an inbound ping quoted (SPEC 5.2), in micros."""

    ping_id: str
    price_micros: int
    expires_time: datetime


class KeyInProgress(Exception):
    """Another request with the same key is still being processed."""


# Every statement is built once, on Core tables with bind parameters: built per call (with ORM
# attributes) each paid its construction and SQLAlchemy's cache-key generation and lookup.
# Bind parameters named after a column are reserved in SET clauses, hence the `b_` names.
_KEY = (KEYS_TABLE.c.source_id == bindparam("b_source_id"), KEYS_TABLE.c.key == bindparam("b_key"))
_CLAIM_KEY = insert(KEYS_TABLE)
_READ_KEY = select(KEYS_TABLE.c.status, KEYS_TABLE.c.content_type, KEYS_TABLE.c.body).where(*_KEY)
_TAKE_ABANDONED_KEY = (
    update(KEYS_TABLE)
    .where(*_KEY, KEYS_TABLE.c.body.is_(None), KEYS_TABLE.c.created_time < bindparam("b_before"))
    .values(created_time=bindparam("b_now"))
    .returning(KEYS_TABLE.c.key)
)
_COMPLETE_KEY = (
    update(KEYS_TABLE)
    .where(*_KEY)
    .values(
        status=bindparam("b_status"),
        content_type=bindparam("b_content_type"),
        body=bindparam("b_body"),
    )
)
_RELEASE_KEY = delete(KEYS_TABLE).where(*_KEY, KEYS_TABLE.c.body.is_(None))

_PUT_RECORDS = insert(OUTBOX_TABLE)
_FINISH_INTAKES = (
    update(INTAKE_TABLE)
    .where(INTAKE_TABLE.c.lead_id == bindparam("b_lead_id"))
    .values(finished_time=bindparam("b_finished_time"), result=bindparam("b_result"))
)
_LIMIT = bindparam("b_limit", type_=Integer)
_STALE_RECORDS = (
    select(OUTBOX_TABLE.c.request)
    .where(OUTBOX_TABLE.c.created_time < bindparam("b_before"))
    .order_by(OUTBOX_TABLE.c.created_time)
    .limit(_LIMIT)
)
_SETTLED = OUTBOX_TABLE.c.lead_id.in_(bindparam("b_lead_ids", expanding=True))
_DROP_RECORDS = delete(OUTBOX_TABLE).where(_SETTLED)
_REFUSED_RECORDS = select(OUTBOX_TABLE).where(_SETTLED)
_SET_ASIDE = insert(REJECTED_TABLE)
_REJECTED = select(REJECTED_TABLE.c.lead_id, REJECTED_TABLE.c.error)
_OUTBOX_SIZE = select(func.count()).select_from(OUTBOX_TABLE)

_INTAKE_COLUMNS = (
    INTAKE_TABLE.c.lead_id,
    INTAKE_TABLE.c.flow_id,
    INTAKE_TABLE.c.source_id,
    INTAKE_TABLE.c.submission,
    INTAKE_TABLE.c.result,
    INTAKE_TABLE.c.claimed_time,
)
_ADD_INTAKES = insert(INTAKE_TABLE)
_CLAIM_INTAKE = (
    update(INTAKE_TABLE)
    .where(INTAKE_TABLE.c.lead_id == bindparam("b_lead_id"), INTAKE_TABLE.c.claimed_time.is_(None))
    .values(claimed_time=bindparam("b_now"))
    .returning(INTAKE_TABLE.c.lead_id)
)
_LAPSED = (
    INTAKE_TABLE.c.claimed_time < bindparam("b_before"),
    INTAKE_TABLE.c.finished_time.is_(None),
)
_CLAIM_LAPSED_INTAKE = (
    update(INTAKE_TABLE)
    .where(INTAKE_TABLE.c.lead_id == bindparam("b_lead_id"), *_LAPSED)
    .values(claimed_time=bindparam("b_now"))
    .returning(INTAKE_TABLE.c.lead_id)
)
_UNCLAIMED_INTAKES = (
    select(*_INTAKE_COLUMNS)
    .where(
        INTAKE_TABLE.c.claimed_time.is_(None),
        INTAKE_TABLE.c.created_time < bindparam("b_before"),
    )
    .order_by(INTAKE_TABLE.c.created_time)
    .limit(_LIMIT)
)
_LAPSED_INTAKES = (
    select(*_INTAKE_COLUMNS).where(*_LAPSED).order_by(INTAKE_TABLE.c.created_time).limit(_LIMIT)
)
_INTAKE = select(*_INTAKE_COLUMNS).where(INTAKE_TABLE.c.lead_id == bindparam("b_lead_id"))

_PING = PINGS_TABLE.c.ping_id == bindparam("b_ping_id")
_DROP_OLD_PINGS = delete(PINGS_TABLE).where(PINGS_TABLE.c.expires_time < bindparam("b_before"))
_PUT_PING = insert(PINGS_TABLE)
_RETURN_PING = update(PINGS_TABLE).where(_PING).values(used_time=None)
_TAKE_PING = (
    update(PINGS_TABLE)
    .where(
        _PING,
        PINGS_TABLE.c.flow_id == bindparam("b_flow_id"),
        PINGS_TABLE.c.source_id == bindparam("b_source_id"),
        PINGS_TABLE.c.used_time.is_(None),
        PINGS_TABLE.c.expires_time > bindparam("b_now"),
    )
    .values(used_time=bindparam("b_now"))
    .returning(PINGS_TABLE.c.price_micros, PINGS_TABLE.c.expires_time)
)


def _intake_row(row: Any) -> IntakeRow:
    lead_id, flow_id, source_id, submission, result, claimed_time = row
    return IntakeRow(lead_id, flow_id, source_id, submission, result, claimed_time is not None)


def _rows(conn: Connection, statement: Executable, params: Any = None) -> list[Any]:
    """A statement's rows (SELECT or RETURNING), fetched; none for a statement without any."""
    result = conn.execute(statement, params)
    return list(result.all()) if result.returns_rows else []


class _SqliteThread:
    """On SQLite every statement of the store runs in one thread of its own, on one connection
    kept open: a transaction is one hand-over to that thread and back (aiosqlite hands BEGIN,
    each statement, each fetch and COMMIT over separately), and reuses its connection (a pool
    checkout and return, with its reset, cost ~50 us of a ~120 us outbox commit). Being one
    thread, it also queues this process's writers one after the other: a writer that finds
    SQLite's lock taken would poll for it in SQLite's busy handler, with sleeps of up to 100 ms
    (outbox commits, deletes, claims and pings collided under load, with 50-100 ms tails)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = sa_create_engine(engine.url.set(drivername="sqlite"), poolclass=NullPool)
        event.listen(self._engine, "connect", sqlite_pragmas)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gateway-sqlite")
        self._conn: Connection | None = None

    async def run(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction (committed, or rolled back by an exception)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._transaction, work
        )

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self._conn is None or self._conn.invalidated:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._engine.connect()
        with self._conn.begin():
            return work(self._conn)

    def close(self) -> None:
        """After the store's last statement (the thread finishes what it was given first)."""
        self._thread.submit(self._disconnect).result()
        self._thread.shutdown()
        self._engine.dispose()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class GatewayStore:
    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self._engine = engine
        self._schema = schema
        self._sqlite = _SqliteThread(engine) if engine.dialect.name == "sqlite" else None

    def close(self) -> None:
        """Close what the store opened itself (the engine passed in is its creator's)."""
        if self._sqlite is not None:
            self._sqlite.close()

    async def create_schema(self) -> None:
        await create_schema(self._engine, self._schema, Base.metadata)

    async def _transaction(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction: a burst of leads' records, or statements that must hold
        together. Core statements, no ORM session (its bookkeeping doubled the outbox commit's
        time)."""
        if self._sqlite is not None:
            return await self._sqlite.run(work)
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    async def _statement(self, statement: Executable, params: Any = None) -> list[Any]:
        """One statement, atomic by itself (a list of parameters too); its rows, if any. On
        PostgreSQL it runs in autocommit: no BEGIN and COMMIT, two round trips fewer (outbox
        commit p50 at 200 leads/s 4.7 -> 3.1 ms, and less CPU for PostgreSQL)."""
        if self._sqlite is not None:
            return await self._sqlite.run(lambda conn: _rows(conn, statement, params))
        async with self._engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            result = await autocommit.execute(statement, params)
            return list(result.all()) if result.returns_rows else []

    # --- Idempotency keys --------------------------------------------------------------------

    async def claim(
        self,
        source_id: str,
        key: str,
        wait_s: float = 30.0,
        abandoned_after: timedelta = ABANDONED_CLAIM,
    ) -> StoredResponse | None:
        """None when this request owns the key and must process the lead; otherwise the first
        response (waiting while a concurrent first request is still running). A claim older than
        `abandoned_after` without a response was left by a gateway that died mid-request: it is
        taken over, or the vendor could never submit that lead again."""
        try:
            await self._statement(
                _CLAIM_KEY, {"source_id": source_id, "key": key, "created_time": datetime.now(UTC)}
            )
            return None
        except IntegrityError:
            pass
        if await self._take_abandoned(source_id, key, abandoned_after):
            return None
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            rows = await self._statement(_READ_KEY, {"b_source_id": source_id, "b_key": key})
            if not rows:  # the first request failed and released it: try to own it again
                return await self.claim(
                    source_id, key, max(0.0, deadline - asyncio.get_running_loop().time())
                )
            status, content_type, body = rows[0]
            if body is not None and status is not None and content_type is not None:
                return StoredResponse(status, content_type, body)
            if asyncio.get_running_loop().time() >= deadline:
                raise KeyInProgress(key)
            await asyncio.sleep(POLL_SECONDS)

    async def _take_abandoned(self, source_id: str, key: str, abandoned_after: timedelta) -> bool:
        """One conditional UPDATE, so of several retries exactly one takes the claim over."""
        now = datetime.now(UTC)
        taken = await self._statement(
            _TAKE_ABANDONED_KEY,
            {
                "b_source_id": source_id,
                "b_key": key,
                "b_before": now - abandoned_after,
                "b_now": now,
            },
        )
        return bool(taken)

    async def complete(self, source_id: str, key: str, response: StoredResponse) -> None:
        await self._statement(
            _COMPLETE_KEY,
            {
                "b_source_id": source_id,
                "b_key": key,
                "b_status": response.status,
                "b_content_type": response.content_type,
                "b_body": response.body,
            },
        )

    async def release(self, source_id: str, key: str) -> None:
        """Give a claimed key back when its request could not finish, so a retry can run."""
        await self._statement(_RELEASE_KEY, {"b_source_id": source_id, "b_key": key})

    # --- The ledger outbox -------------------------------------------------------------------

    async def put_records(self, records: list[OutboxRecord]) -> None:
        """Commit lead records to the outbox, and finish the asynchronous intakes among them in
        the same transaction: a lead's result is never visible without its record."""
        try:
            await self._put_records(records)
        except IntegrityError:
            # A lead recorded already (an intake recorded as interrupted by another gateway
            # while this one was still on it): the first record stands, the others still go in.
            for record in records:
                try:
                    await self._put_records([record])
                except IntegrityError:
                    log.warning(
                        "lead %s was recorded already; this record is dropped",
                        record.lead_id,
                        extra={"lead_id": record.lead_id},
                    )

    async def _put_records(self, records: list[OutboxRecord]) -> None:
        now = datetime.now(UTC)
        rows = [{"lead_id": r.lead_id, "created_time": now, "request": r.request} for r in records]
        finished = [
            {"b_lead_id": r.lead_id, "b_finished_time": now, "b_result": r.result}
            for r in records
            if r.result is not None
        ]
        if not finished:  # the synchronous submissions': one statement
            await self._statement(_PUT_RECORDS, rows)
            return

        def put(conn: Connection) -> None:
            conn.execute(_PUT_RECORDS, rows)
            conn.execute(_FINISH_INTAKES, finished)

        await self._transaction(put)

    async def stale_records(self, before: datetime, limit: int) -> list[bytes]:
        """Outbox records committed before `before`, oldest first."""
        rows = await self._statement(_STALE_RECORDS, {"b_before": before, "b_limit": limit})
        return [request for (request,) in rows]

    async def settle_records(self, done: list[str], rejected: list[tuple[str, str]]) -> None:
        """Delete the records the ledger has; set aside the ones it refused, with its reason."""
        errors = dict(rejected)
        settled = {"b_lead_ids": [*done, *errors]}
        if not errors:
            if done:
                await self._statement(_DROP_RECORDS, settled)
            return

        def settle(conn: Connection) -> None:
            kept = conn.execute(_REFUSED_RECORDS, {"b_lead_ids": list(errors)}).all()
            if kept:
                conn.execute(
                    _SET_ASIDE, [{**row._asdict(), "error": errors[row.lead_id]} for row in kept]
                )
            conn.execute(_DROP_RECORDS, settled)

        await self._transaction(settle)

    async def rejected_records(self) -> list[tuple[str, str]]:
        """(lead id, the ledger's reason) of every record set aside."""
        return [(lead_id, error) for lead_id, error in await self._statement(_REJECTED)]

    async def outbox_size(self) -> int:
        [(count,)] = await self._statement(_OUTBOX_SIZE)
        return int(count or 0)

    # --- Asynchronous intake -----------------------------------------------------------------

    async def add_intakes(self, intakes: list[IntakeRow]) -> None:
        now = datetime.now(UTC)
        await self._statement(
            _ADD_INTAKES,
            [
                {
                    "lead_id": i.lead_id,
                    "flow_id": i.flow_id,
                    "source_id": i.source_id,
                    "submission": i.submission,
                    "created_time": now,
                }
                for i in intakes
            ],
        )

    async def claim_intake(self, lead_id: str, lapsed_before: datetime | None = None) -> bool:
        """Take an intake: an unclaimed one to process it, or with `lapsed_before` one claimed
        before then and unfinished, to record it as interrupted. One conditional UPDATE, so of
        several gateways exactly one takes it."""
        params: dict[str, Any] = {"b_lead_id": lead_id, "b_now": datetime.now(UTC)}
        if lapsed_before is None:
            return bool(await self._statement(_CLAIM_INTAKE, params))
        params["b_before"] = lapsed_before
        return bool(await self._statement(_CLAIM_LAPSED_INTAKE, params))

    async def unclaimed_intakes(self, before: datetime, limit: int) -> list[IntakeRow]:
        """Intakes accepted before `before` that no gateway has taken yet, oldest first."""
        rows = await self._statement(_UNCLAIMED_INTAKES, {"b_before": before, "b_limit": limit})
        return [_intake_row(row) for row in rows]

    async def lapsed_intakes(self, claimed_before: datetime, limit: int) -> list[IntakeRow]:
        """Intakes taken before `claimed_before` and still unfinished: their gateway stopped
        while processing them."""
        rows = await self._statement(
            _LAPSED_INTAKES, {"b_before": claimed_before, "b_limit": limit}
        )
        return [_intake_row(row) for row in rows]

    async def intake(self, lead_id: str) -> IntakeRow | None:
        rows = await self._statement(_INTAKE, {"b_lead_id": lead_id})
        return _intake_row(rows[0]) if rows else None

    # --- Inbound pings -----------------------------------------------------------------------

    async def put_ping(self, flow_id: str, source_id: str, quote: PingQuote) -> None:
        """Keep a ping's quote; pings expired for a day are deleted on the way."""
        now = datetime.now(UTC)
        ping = {
            "ping_id": quote.ping_id,
            "flow_id": flow_id,
            "source_id": source_id,
            "price_micros": quote.price_micros,
            "created_time": now,
            "expires_time": quote.expires_time,
        }

        def put(conn: Connection) -> None:
            conn.execute(_DROP_OLD_PINGS, {"b_before": now - timedelta(days=1)})
            conn.execute(_PUT_PING, ping)

        await self._transaction(put)

    async def return_ping(self, ping_id: str) -> None:
        """Make a used ping usable again (its lead ended in error, unpaid)."""
        await self._statement(_RETURN_PING, {"b_ping_id": ping_id})

    async def take_ping(self, ping_id: str, flow_id: str, source_id: str) -> PingQuote | None:
        """Use a ping once: one conditional UPDATE, so of two submits carrying it only one
        gets its price. None when unknown, expired, used, or for another flow or source."""
        rows = await self._statement(
            _TAKE_PING,
            {
                "b_ping_id": ping_id,
                "b_flow_id": flow_id,
                "b_source_id": source_id,
                "b_now": datetime.now(UTC),
            },
        )
        if not rows:
            return None
        price_micros, expires_time = rows[0]
        return PingQuote(ping_id, int(price_micros), expires_time)
