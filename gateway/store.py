"""gateway storage: idempotency keys, the ledger outbox, asynchronous intakes and pings. The only
module using SQLAlchemy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
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
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import ColumnElement, Executable

from gateway.tables import Base, IdempotencyKey, Intake, LedgerOutbox, Ping, RejectedRecord
from leadflow.db import create_schema, sqlite_pragmas

log = logging.getLogger(__name__)

OUTBOX_TABLE = Table(LedgerOutbox.__tablename__, Base.metadata)
INTAKE_TABLE = Table(Intake.__tablename__, Base.metadata)
REJECTED_TABLE = Table(RejectedRecord.__tablename__, Base.metadata)

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


def _in_transaction(engine: Engine, work: Callable[[Connection], None]) -> None:
    with engine.begin() as conn:
        work(conn)


def _intake_row(row: Intake) -> IntakeRow:
    return IntakeRow(
        row.lead_id,
        row.flow_id,
        row.source_id,
        row.submission,
        row.result,
        row.claimed_time is not None,
    )


@dataclass(frozen=True)
class PingQuote:
    """The price an inbound ping quoted (SPEC 5.2), in micros."""

    ping_id: str
    price_micros: int
    expires_time: datetime


class KeyInProgress(Exception):
    """Another request with the same key is still being processed."""


class GatewayStore:
    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self._engine = engine
        self._schema = schema
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the lock taken polls for it
        # in its busy handler with sleeps of up to 100 ms: queueing this process's transactions
        # here hands the lock over at once (outbox commits, deletes, claims and pings otherwise
        # collide under load and put 50-100 ms tails on submissions).
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # On SQLite the outbox's transactions run whole in one worker thread (_run_write).
        self._sync_engine: Engine | None = None
        if engine.dialect.name == "sqlite":
            self._sync_engine = sa_create_engine(engine.url.set(drivername="sqlite"))
            event.listen(self._sync_engine, "connect", sqlite_pragmas)

    def close(self) -> None:
        """Close what the store opened itself (the engine passed in is its creator's)."""
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A write transaction (queued behind this process's others on SQLite)."""
        async with self._write_lock or nullcontext(), self._sessions.begin() as session:
            yield session

    async def create_schema(self) -> None:
        await create_schema(self._engine, self._schema, Base.metadata)

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
            async with self._writing() as session:
                session.add(
                    IdempotencyKey(source_id=source_id, key=key, created_time=datetime.now(UTC))
                )
            return None
        except IntegrityError:
            pass
        if await self._take_abandoned(source_id, key, abandoned_after):
            return None
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            async with self._sessions() as session:
                row = await session.get(IdempotencyKey, (source_id, key))
            if row is None:  # the first request failed and released it: try to own it again
                return await self.claim(
                    source_id, key, max(0.0, deadline - asyncio.get_running_loop().time())
                )
            if row.body is not None and row.status is not None and row.content_type is not None:
                return StoredResponse(row.status, row.content_type, row.body)
            if asyncio.get_running_loop().time() >= deadline:
                raise KeyInProgress(key)
            await asyncio.sleep(POLL_SECONDS)

    async def _take_abandoned(self, source_id: str, key: str, abandoned_after: timedelta) -> bool:
        """One conditional UPDATE, so of several retries exactly one takes the claim over."""
        now = datetime.now(UTC)
        async with self._writing() as session:
            taken = await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.source_id == source_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.body.is_(None),
                    IdempotencyKey.created_time < now - abandoned_after,
                )
                .values(created_time=now)
                .returning(IdempotencyKey.key)
            )
            return taken.first() is not None

    async def complete(self, source_id: str, key: str, response: StoredResponse) -> None:
        async with self._writing() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.source_id == source_id, IdempotencyKey.key == key)
                .values(
                    status=response.status, content_type=response.content_type, body=response.body
                )
            )

    async def release(self, source_id: str, key: str) -> None:
        """Give a claimed key back when its request could not finish, so a retry can run."""
        async with self._writing() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.source_id == source_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.body.is_(None),
                )
            )

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
            {"key": r.lead_id, "finished_time": now, "result": r.result}
            for r in records
            if r.result is not None
        ]

        if not finished:  # the synchronous submissions': one statement
            await self._run_statement(insert(OUTBOX_TABLE), rows)
            return

        def put(conn: Connection) -> None:
            conn.execute(insert(OUTBOX_TABLE), rows)
            conn.execute(
                update(INTAKE_TABLE)
                .where(INTAKE_TABLE.c.lead_id == bindparam("key"))
                .values(finished_time=bindparam("finished_time"), result=bindparam("result")),
                finished,
            )

        await self._run_write(put)

    async def _run_write(self, work: Callable[[Connection], None]) -> None:
        """A transaction of Core statements, for the outbox's writes. They run once per burst of
        leads on the submission path: no ORM session (its bookkeeping doubled their time) and,
        on SQLite, the whole transaction in one worker thread, where aiosqlite hands BEGIN,
        every statement and COMMIT over to its thread separately (commit p50 3-4 ms under
        load before, p99 at 190 leads/s 28-47 ms before and 18-27 ms after)."""
        if self._sync_engine is None:
            async with self._engine.begin() as conn:
                await conn.run_sync(work)
            return
        assert self._write_lock is not None
        async with self._write_lock:
            await asyncio.to_thread(_in_transaction, self._sync_engine, work)

    async def _run_statement(
        self, statement: Executable, params: list[dict[str, Any]] | None = None
    ) -> None:
        """One write statement, atomic by itself (asyncpg's executemany too). On PostgreSQL it
        runs in autocommit: no BEGIN and COMMIT, two round trips fewer (outbox commit p50 at 200
        leads/s 4.7 -> 3.1 ms, and less CPU for PostgreSQL)."""
        if self._sync_engine is not None:

            def execute(conn: Connection) -> None:
                conn.execute(statement, params)

            await self._run_write(execute)
            return
        async with self._engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(statement, params)

    async def stale_records(self, before: datetime, limit: int) -> list[bytes]:
        """Outbox records committed before `before`, oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(LedgerOutbox.request)
                .where(LedgerOutbox.created_time < before)
                .order_by(LedgerOutbox.created_time)
                .limit(limit)
            )
            return list(rows)

    async def settle_records(self, done: list[str], rejected: list[tuple[str, str]]) -> None:
        """Delete the records the ledger has; set aside the ones it refused, with its reason."""
        errors = dict(rejected)
        drop = delete(OUTBOX_TABLE).where(OUTBOX_TABLE.c.lead_id.in_([*done, *errors]))
        if not errors:
            if done:
                await self._run_statement(drop)
            return

        def settle(conn: Connection) -> None:
            kept = conn.execute(
                select(OUTBOX_TABLE).where(OUTBOX_TABLE.c.lead_id.in_(errors))
            ).all()
            if kept:
                conn.execute(
                    insert(REJECTED_TABLE),
                    [{**row._asdict(), "error": errors[row.lead_id]} for row in kept],
                )
            conn.execute(drop)

        await self._run_write(settle)

    async def rejected_records(self) -> list[tuple[str, str]]:
        """(lead id, the ledger's reason) of every record set aside."""
        async with self._sessions() as session:
            rows = await session.execute(select(RejectedRecord.lead_id, RejectedRecord.error))
            return [(lead_id, error) for lead_id, error in rows]

    async def outbox_size(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(LedgerOutbox)) or 0)

    # --- Asynchronous intake -----------------------------------------------------------------

    async def add_intakes(self, intakes: list[IntakeRow]) -> None:
        now = datetime.now(UTC)
        async with self._writing() as session:
            await session.execute(
                insert(Intake),
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
        taken: ColumnElement[bool] = Intake.claimed_time.is_(None)
        if lapsed_before is not None:
            taken = and_(Intake.claimed_time < lapsed_before, Intake.finished_time.is_(None))
        async with self._writing() as session:
            claimed = await session.execute(
                update(Intake)
                .where(Intake.lead_id == lead_id, taken)
                .values(claimed_time=datetime.now(UTC))
                .returning(Intake.lead_id)
            )
            return claimed.first() is not None

    async def unclaimed_intakes(self, before: datetime, limit: int) -> list[IntakeRow]:
        """Intakes accepted before `before` that no gateway has taken yet, oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Intake)
                .where(Intake.claimed_time.is_(None), Intake.created_time < before)
                .order_by(Intake.created_time)
                .limit(limit)
            )
            return [_intake_row(row) for row in rows]

    async def lapsed_intakes(self, claimed_before: datetime, limit: int) -> list[IntakeRow]:
        """Intakes taken before `claimed_before` and still unfinished: their gateway stopped
        while processing them."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Intake)
                .where(
                    Intake.claimed_time < claimed_before,
                    Intake.finished_time.is_(None),
                )
                .order_by(Intake.created_time)
                .limit(limit)
            )
            return [_intake_row(row) for row in rows]

    async def intake(self, lead_id: str) -> IntakeRow | None:
        async with self._sessions() as session:
            row = await session.get(Intake, lead_id)
            return None if row is None else _intake_row(row)

    async def put_ping(self, flow_id: str, source_id: str, quote: PingQuote) -> None:
        """Keep a ping's quote; pings expired for a day are deleted on the way."""
        now = datetime.now(UTC)
        async with self._writing() as session:
            await session.execute(delete(Ping).where(Ping.expires_time < now - timedelta(days=1)))
            session.add(
                Ping(
                    ping_id=quote.ping_id,
                    flow_id=flow_id,
                    source_id=source_id,
                    price_micros=quote.price_micros,
                    created_time=now,
                    expires_time=quote.expires_time,
                )
            )

    async def return_ping(self, ping_id: str) -> None:
        """Make a used ping usable again (its lead ended in error, unpaid)."""
        async with self._writing() as session:
            await session.execute(
                update(Ping).where(Ping.ping_id == ping_id).values(used_time=None)
            )

    async def take_ping(self, ping_id: str, flow_id: str, source_id: str) -> PingQuote | None:
        """Use a ping once: one conditional UPDATE, so of two submits carrying it only one
        gets its price. None when unknown, expired, used, or for another flow or source."""
        now = datetime.now(UTC)
        async with self._writing() as session:
            row = (
                await session.execute(
                    update(Ping)
                    .where(
                        Ping.ping_id == ping_id,
                        Ping.flow_id == flow_id,
                        Ping.source_id == source_id,
                        Ping.used_time.is_(None),
                        Ping.expires_time > now,
                    )
                    .values(used_time=now)
                    .returning(Ping.price_micros, Ping.expires_time)
                )
            ).first()
        return None if row is None else PingQuote(ping_id, int(row[0]), row[1])
