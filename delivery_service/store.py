"""The delivery service's storage: the durable batch queue. The only module using SQLAlchemy.

Every claim is one conditional statement, so replicas sharing a PostgreSQL database never take
the same thing twice: leads are moved into a batch by an UPDATE whose subquery skips rows other
transactions hold (`FOR UPDATE SKIP LOCKED`) and whose own WHERE re-checks `state = 'pending'`;
schedules are claimed by bumping a version; a dead replica's batch by taking its expired lease.
SQLite has one writer at a time, which gives the same guarantees in the embedded setup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delivery_service.attempts import ANSWER_GRACE, ANSWERED, SENT, Answer, HttpAttempt, SentAttempt
from delivery_service.batches import Backoff, Batch, OutcomeReport, ScheduleState
from delivery_service.files import QueuedLead
from delivery_service.tables import (
    Base,
    BatchRow,
    BuyerScheduleRow,
    HttpAttemptRow,
    OutcomeReportRow,
    QueuedLeadRow,
)
from leadflow import db
from leadflow.common.v1 import lead_pb2
from leadflow.money import from_micros, to_micros
from leadflow.wire import DeliveryAttempt, LeadData

log = logging.getLogger(__name__)

# A file carries at most this many leads; the rest wait for the next one (sent right after).
MAX_BATCH_LEADS = 50_000


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


# An answer to its attempt's row (the delivery path's second write; built once).
_UPDATE_ANSWER = (
    update(HttpAttemptRow)
    .where(HttpAttemptRow.event_id == bindparam("b_event_id"))
    .values(
        state=ANSWERED,
        answer_time=bindparam("b_answer_time"),
        next_try_time=bindparam("b_next_try_time"),
        outcome=bindparam("b_outcome"),
        reason=bindparam("b_reason"),
        price_micros=bindparam("b_price_micros"),
        attempts=bindparam("b_attempts"),
    )
)

# One statement for any number of rows: an IN list is compiled anew for each length.
_DELETE_ATTEMPT = delete(HttpAttemptRow).where(HttpAttemptRow.event_id == bindparam("b_event_id"))


def _sent_row(item: SentAttempt) -> dict[str, object]:
    return {
        "event_id": item.event_id,
        "buyer_id": item.buyer_id,
        "lead_id": item.lead_id,
        "request": item.request,
        "state": SENT,
        "send_time": item.send_time,
        "next_try_time": item.orphan_time,
        "outcome": "",
        "reason": "",
        "attempts": [],
        "tries": 0,
        "last_error": "",
    }


def _answer_row(answer: Answer) -> dict[str, object]:
    return {
        "b_event_id": answer.event_id,
        "b_answer_time": answer.answer_time,
        "b_next_try_time": answer.answer_time + ANSWER_GRACE,
        "b_outcome": answer.outcome,
        "b_reason": answer.reason,
        "b_price_micros": None if answer.price is None else to_micros(answer.price),
        "b_attempts": [attempt.to_json() for attempt in answer.attempts],
    }


def _in_transaction(engine: Engine, work: Callable[[Connection], None]) -> None:
    with engine.begin() as conn:
        work(conn)


class DeliveryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Built once: the delivery path writes it for every lead.
        self._insert_sent = db.insert_ignore(HttpAttemptRow, engine.dialect, ["event_id"])
        # SQLite: the attempt log's transactions run whole in one worker thread on a pysqlite
        # engine of the same file, where aiosqlite hands BEGIN, every statement, its cursor's
        # close and COMMIT over to its thread and back separately (as routing's and the
        # gateway's stores do). Those writes are serialized by the attempt log's group commit.
        self._sync: Engine | None = None
        if engine.dialect.name == "sqlite":
            self._sync = create_engine(engine.url.set(drivername="sqlite"))
            event.listen(self._sync, "connect", db.sqlite_pragmas)

    @classmethod
    async def open(cls, url: str, schema: str) -> DeliveryStore:
        """Connect to `url` and create the delivery schema and tables if they are missing."""
        return cls(await db.open_engine(url, schema, Base.metadata))

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        await self._engine.dispose()

    # --- the queue -------------------------------------------------------------------------

    async def queue(self, lead: QueuedLead, now: datetime) -> bool:
        """Queue a lead; False when its recipient event is already queued (a retried call)."""
        row = QueuedLeadRow(
            event_id=lead.event_id,
            buyer_id=lead.buyer_id,
            lead_id=lead.lead.id,
            lead_proto=lead.lead.to_proto().SerializeToString(),
            sale_price_micros=to_micros(lead.sale_price),
            purchase_price_micros=(
                None if lead.purchase_price is None else to_micros(lead.purchase_price)
            ),
            queued_time=now,
            seq=time.time_ns() // 1000,
        )
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    async def pending_counts(self) -> dict[str, int]:
        """Leads not yet in a delivered file (waiting, or in a file being sent), by buyer."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(QueuedLeadRow.buyer_id, func.count())
                .where(QueuedLeadRow.state.in_(("pending", "sending")))
                .group_by(QueuedLeadRow.buyer_id)
            )
            return {buyer_id: int(count) for buyer_id, count in rows}

    async def batch_leads(self, batch_id: str) -> list[QueuedLead]:
        """The leads a batch carries, in queue order."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(QueuedLeadRow)
                .where(QueuedLeadRow.batch_id == batch_id)
                .order_by(QueuedLeadRow.seq, QueuedLeadRow.event_id)
            )
            return [_queued(row) for row in rows]

    async def close_pending(
        self, buyer_id: str, reason: str, now: datetime, batch_id: str
    ) -> list[str]:
        """End a buyer's pending leads as `error` (the buyer no longer takes batches)."""
        async with self._sessions.begin() as session:
            rows = list(
                await session.scalars(
                    select(QueuedLeadRow)
                    .where(QueuedLeadRow.buyer_id == buyer_id, QueuedLeadRow.state == "pending")
                    .with_for_update(skip_locked=True)
                )
            )
            closed = []
            for row in rows:
                done = await session.execute(
                    update(QueuedLeadRow)
                    .where(QueuedLeadRow.event_id == row.event_id, QueuedLeadRow.state == "pending")
                    .values(state="closed", complete_time=now)
                )
                if _rowcount(done):
                    closed.append(row.event_id)
                    session.add(_report(row, batch_id, "error", reason, 0, [], now))
            return closed

    # --- schedules -------------------------------------------------------------------------

    async def schedules(self) -> dict[str, ScheduleState]:
        async with self._sessions() as session:
            rows = await session.scalars(select(BuyerScheduleRow))
            return {row.buyer_id: _schedule(row) for row in rows}

    async def set_schedule(
        self, buyer_id: str, schedule: str, time_zone: str, next_run_time: datetime | None
    ) -> None:
        """Create a buyer's schedule row, or point it at a changed schedule or zone."""
        try:
            async with self._sessions.begin() as session:
                row = await session.get(BuyerScheduleRow, buyer_id)
                if row is None:
                    session.add(
                        BuyerScheduleRow(
                            buyer_id=buyer_id,
                            schedule=schedule,
                            time_zone=time_zone,
                            next_run_time=next_run_time,
                        )
                    )
                elif (row.schedule, row.time_zone) != (schedule, time_zone):
                    await session.execute(
                        update(BuyerScheduleRow)
                        .where(BuyerScheduleRow.buyer_id == buyer_id)
                        .values(
                            schedule=schedule,
                            time_zone=time_zone,
                            next_run_time=next_run_time,
                            version=BuyerScheduleRow.version + 1,
                        )
                    )
        except IntegrityError:
            pass  # another replica created it at the same moment

    async def claim_run(
        self, state: ScheduleState, next_run_time: datetime | None, *, retry: bool
    ) -> bool:
        """Take a due cron run (or a due retry) for this replica: one replica wins each."""
        values: dict[str, object] = {"version": BuyerScheduleRow.version + 1}
        if retry:
            values["retry_time"] = None
        else:
            values["next_run_time"] = next_run_time
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(BuyerScheduleRow)
                .where(
                    BuyerScheduleRow.buyer_id == state.buyer_id,
                    BuyerScheduleRow.version == state.version,
                )
                .values(**values)
            )
            return _rowcount(result) == 1

    # --- batches ---------------------------------------------------------------------------

    async def open_batch(
        self,
        *,
        batch_id: str,
        buyer_id: str,
        kind: str,
        owner: str,
        lease_until: datetime,
        now: datetime,
        name_for: Callable[[Sequence[QueuedLead]], str],
        request_id: str | None = None,
        limit: int = MAX_BATCH_LEADS,
    ) -> tuple[Batch, list[QueuedLead]] | None:
        """Move up to `limit` pending leads into a new batch this replica leases.

        None when there is nothing pending. With a request id already used, the batch made then
        (its leads empty: it is not sent again).
        """
        if request_id:
            found = await self.batch_by_request(request_id)
            if found is not None:
                return found, []
        try:
            async with self._sessions.begin() as session:
                chosen = (
                    select(QueuedLeadRow.event_id)
                    .where(QueuedLeadRow.buyer_id == buyer_id, QueuedLeadRow.state == "pending")
                    .order_by(QueuedLeadRow.seq, QueuedLeadRow.event_id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                await session.execute(
                    update(QueuedLeadRow)
                    .where(
                        QueuedLeadRow.event_id.in_(chosen.scalar_subquery()),
                        QueuedLeadRow.state == "pending",
                    )
                    .values(state="sending", batch_id=batch_id)
                    .execution_options(synchronize_session=False)
                )
                leads = await self._leads_of(session, batch_id)
                if not leads:
                    return None
                row = BatchRow(
                    id=batch_id,
                    buyer_id=buyer_id,
                    kind=kind,
                    status="sending",
                    create_time=now,
                    lead_count=len(leads),
                    file_name=name_for(leads),
                    lease_owner=owner,
                    lease_until=lease_until,
                    request_id=request_id or None,
                    tries=1,
                )
                session.add(row)
            return _batch(row, [lead.event_id for lead in leads]), leads
        except IntegrityError:
            if request_id:
                found = await self.batch_by_request(request_id)
                if found is not None:
                    return found, []
            raise

    async def open_resend(
        self,
        *,
        batch_id: str,
        original: Batch,
        owner: str,
        lease_until: datetime,
        now: datetime,
        file_name: str,
        request_id: str | None,
    ) -> tuple[Batch, bool]:
        """A new batch copying a delivered one; (batch, False) when the request id was used."""
        if request_id:
            found = await self.batch_by_request(request_id)
            if found is not None:
                return found, False
        row = BatchRow(
            id=batch_id,
            buyer_id=original.buyer_id,
            kind="resend",
            status="sending",
            create_time=now,
            lead_count=original.lead_count,
            file_name=file_name,
            lease_owner=owner,
            lease_until=lease_until,
            request_id=request_id or None,
            resend_of=original.id,
            tries=1,
        )
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            if request_id:
                found = await self.batch_by_request(request_id)
                if found is not None:
                    return found, False
            raise
        return _batch(row, list(original.event_ids)), True

    async def set_remote_name(self, batch_id: str, owner: str, name: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.lease_owner == owner)
                .values(remote_name=name)
            )

    async def renew_lease(self, batch_id: str, owner: str, until: datetime) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(BatchRow)
                .where(
                    BatchRow.id == batch_id,
                    BatchRow.lease_owner == owner,
                    BatchRow.status == "sending",
                )
                .values(lease_until=until)
            )
            return _rowcount(result) == 1

    async def expired_batches(self, now: datetime, limit: int = 20) -> list[Batch]:
        """Batches whose replica stopped renewing its lease (it died while sending)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(BatchRow)
                .where(BatchRow.status == "sending", BatchRow.lease_until < now)
                .order_by(BatchRow.create_time)
                .limit(limit)
            )
            return [_batch(row) for row in rows]

    async def take_over(
        self, batch: Batch, owner: str, now: datetime, lease_until: datetime
    ) -> Batch | None:
        """Take an expired lease; None when another replica took it first."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(BatchRow)
                .where(
                    BatchRow.id == batch.id,
                    BatchRow.status == "sending",
                    BatchRow.lease_until < now,
                    BatchRow.tries == batch.tries,
                )
                .values(lease_owner=owner, lease_until=lease_until, tries=BatchRow.tries + 1)
            )
            if _rowcount(result) != 1:
                return None
        return await self.get_batch(batch.id)

    async def complete_batch(
        self,
        batch: Batch,
        owner: str,
        attempt: DeliveryAttempt,
        *,
        size: int,
        remote_name: str,
        now: datetime,
    ) -> bool:
        """Record a delivered file: its leads become `delivered` and their outcomes are queued
        for the ledger, in one transaction. False when this replica no longer held the lease."""
        async with self._sessions.begin() as session:
            row = await self._leased(session, batch.id, owner)
            if row is None:
                return False
            attempts = [*row.attempts, attempt.to_json()]
            await session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch.id)
                .values(
                    status="delivered",
                    complete_time=now,
                    size_bytes=size,
                    remote_name=remote_name,
                    attempts=attempts,
                    reason="",
                )
            )
            if row.kind == "resend":
                return True
            leads = list(
                await session.scalars(
                    select(QueuedLeadRow).where(
                        QueuedLeadRow.batch_id == batch.id, QueuedLeadRow.state == "sending"
                    )
                )
            )
            await session.execute(
                update(QueuedLeadRow)
                .where(QueuedLeadRow.batch_id == batch.id, QueuedLeadRow.state == "sending")
                .values(state="delivered", complete_time=now)
            )
            for lead in leads:
                session.add(
                    _report(lead, batch.id, "success", "", lead.sale_price_micros, attempts, now)
                )
            await session.execute(
                update(BuyerScheduleRow)
                .where(BuyerScheduleRow.buyer_id == batch.buyer_id)
                .values(failures=0, retry_time=None, version=BuyerScheduleRow.version + 1)
            )
            return True

    async def fail_batch(
        self,
        batch: Batch,
        owner: str,
        attempt: DeliveryAttempt,
        *,
        reason: str,
        size: int,
        now: datetime,
        backoff: Backoff,
    ) -> datetime | None:
        """Record a failed file: its leads go back to the queue (they roll into the next file)
        and the buyer's next try is backed off. The retry time, or None without the lease."""
        async with self._sessions.begin() as session:
            row = await self._leased(session, batch.id, owner)
            if row is None:
                return None
            await session.execute(
                update(BatchRow)
                .where(BatchRow.id == batch.id)
                .values(
                    status="failed",
                    complete_time=now,
                    size_bytes=size,
                    attempts=[*row.attempts, attempt.to_json()],
                    reason=reason,
                )
            )
            if row.kind == "resend":
                return now
            await session.execute(
                update(QueuedLeadRow)
                .where(QueuedLeadRow.batch_id == batch.id, QueuedLeadRow.state == "sending")
                .values(state="pending", batch_id=None)
            )
            schedule = await session.get(BuyerScheduleRow, batch.buyer_id)
            failures = (schedule.failures if schedule is not None else 0) + 1
            retry_time = now + backoff.delay(failures)
            await session.execute(
                update(BuyerScheduleRow)
                .where(BuyerScheduleRow.buyer_id == batch.buyer_id)
                .values(
                    failures=failures, retry_time=retry_time, version=BuyerScheduleRow.version + 1
                )
            )
            return retry_time

    async def get_batch(self, batch_id: str, *, with_events: bool = False) -> Batch | None:
        async with self._sessions() as session:
            row = await session.get(BatchRow, batch_id)
            if row is None:
                return None
            events = await self._event_ids(session, row) if with_events else []
            return _batch(row, events)

    async def batch_by_request(self, request_id: str) -> Batch | None:
        async with self._sessions() as session:
            row = await session.scalar(select(BatchRow).where(BatchRow.request_id == request_id))
            if row is None:
                return None
            return _batch(row, await self._event_ids(session, row))

    async def list_batches(
        self, buyer_id: str | None, limit: int, before: str | None = None
    ) -> list[Batch]:
        """Newest first; `before` is the id of the last batch of the previous page."""
        query = select(BatchRow).order_by(BatchRow.create_time.desc(), BatchRow.id.desc())
        if buyer_id:
            query = query.where(BatchRow.buyer_id == buyer_id)
        if before:
            query = query.where(BatchRow.id < before)
        async with self._sessions() as session:
            rows = await session.scalars(query.limit(limit))
            return [_batch(row) for row in rows]

    async def _leased(self, session: AsyncSession, batch_id: str, owner: str) -> BatchRow | None:
        return await session.scalar(
            select(BatchRow)
            .where(
                BatchRow.id == batch_id,
                BatchRow.status == "sending",
                BatchRow.lease_owner == owner,
            )
            .with_for_update()
        )

    async def _leads_of(self, session: AsyncSession, batch_id: str) -> list[QueuedLead]:
        rows = await session.scalars(
            select(QueuedLeadRow)
            .where(QueuedLeadRow.batch_id == batch_id)
            .order_by(QueuedLeadRow.seq, QueuedLeadRow.event_id)
        )
        return [_queued(row) for row in rows]

    async def _event_ids(self, session: AsyncSession, row: BatchRow) -> list[str]:
        source = row.resend_of if row.kind == "resend" and row.resend_of else row.id
        ids = await session.scalars(
            select(QueuedLeadRow.event_id)
            .where(QueuedLeadRow.batch_id == source)
            .order_by(QueuedLeadRow.seq, QueuedLeadRow.event_id)
        )
        return list(ids)

    # --- HTTP attempts (SPEC 8.1) ------------------------------------------------------------

    async def record_sent(self, sent: Sequence[SentAttempt]) -> None:
        """Before their requests leave; a retried DeliverLead's row is already there."""
        await self.write_attempts(sent, (), ())

    async def record_answers(self, answers: Sequence[Answer]) -> None:
        """The buyers' answers, before they are returned; looked at by recovery after a grace."""
        await self.write_attempts((), answers, ())

    async def forget_attempts(self, event_ids: Sequence[str]) -> None:
        """Deliveries whose caller has their answer, or that recovery settled."""
        await self.write_attempts((), (), event_ids)

    async def write_attempts(
        self, sent: Sequence[SentAttempt], answers: Sequence[Answer], forgotten: Sequence[str]
    ) -> None:
        """The delivery path's three writes in one transaction (one commit): new attempts, then
        answers, then rows no longer needed. An attempt's answer and its deletion come after
        its own write has returned, so never before it in the same call."""
        insert_sent = self._insert_sent

        def work(conn: Connection) -> None:
            if sent:
                conn.execute(insert_sent, [_sent_row(item) for item in sent])
            if answers:
                conn.execute(_UPDATE_ANSWER, [_answer_row(answer) for answer in answers])
            if forgotten:
                conn.execute(_DELETE_ATTEMPT, [{"b_event_id": id_} for id_ in forgotten])

        if self._sync is not None:
            await asyncio.to_thread(_in_transaction, self._sync, work)
            return
        # PostgreSQL: the transaction's statements in one greenlet. One statement (a lone
        # delivery's write, say) is atomic by itself, asyncpg's executemany too: it runs in
        # autocommit, without the BEGIN and COMMIT round trips.
        if sum(1 for kind in (sent, answers, forgotten) if kind) == 1:
            async with self._engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.run_sync(work)
            return
        async with self._engine.begin() as conn:
            await conn.run_sync(work)

    async def due_attempts(
        self, now: datetime, hold_until: datetime, limit: int
    ) -> list[HttpAttempt]:
        """Attempts recovery should look at, held back from other replicas until `hold_until`."""
        async with self._sessions.begin() as session:
            rows = list(
                await session.scalars(
                    select(HttpAttemptRow)
                    .where(HttpAttemptRow.next_try_time <= now)
                    .order_by(HttpAttemptRow.next_try_time, HttpAttemptRow.event_id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            if rows:
                await session.execute(
                    update(HttpAttemptRow)
                    .where(HttpAttemptRow.event_id.in_([row.event_id for row in rows]))
                    .values(next_try_time=hold_until)
                )
            return [_attempt(row) for row in rows]

    async def attempt_failed(self, event_id: str, error: str, next_try_time: datetime) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(HttpAttemptRow)
                .where(HttpAttemptRow.event_id == event_id)
                .values(
                    tries=HttpAttemptRow.tries + 1,
                    last_error=error[:500],
                    next_try_time=next_try_time,
                )
            )

    async def open_attempts(self) -> int:
        """Deliveries not known to be settled (for tests and the gauge)."""
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(HttpAttemptRow)) or 0)

    # --- outcomes for the ledger ------------------------------------------------------------

    async def due_reports(
        self, now: datetime, hold_until: datetime, limit: int
    ) -> list[OutcomeReport]:
        """Outcomes the ledger has not taken yet, held back from other replicas until
        `hold_until` while this one reports them."""
        async with self._sessions.begin() as session:
            rows = list(
                await session.scalars(
                    select(OutcomeReportRow)
                    .where(
                        OutcomeReportRow.reported_time.is_(None),
                        OutcomeReportRow.next_try_time <= now,
                    )
                    .order_by(OutcomeReportRow.complete_time, OutcomeReportRow.event_id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            if rows:
                await session.execute(
                    update(OutcomeReportRow)
                    .where(OutcomeReportRow.event_id.in_([row.event_id for row in rows]))
                    .values(next_try_time=hold_until)
                )
            return [_outcome(row) for row in rows]

    async def reported(self, event_id: str, now: datetime) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutcomeReportRow)
                .where(OutcomeReportRow.event_id == event_id)
                .values(reported_time=now)
            )

    async def report_failed(self, event_id: str, error: str, next_try_time: datetime) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutcomeReportRow)
                .where(OutcomeReportRow.event_id == event_id)
                .values(
                    tries=OutcomeReportRow.tries + 1,
                    last_error=error[:500],
                    next_try_time=next_try_time,
                )
            )

    async def unreported(self, limit: int = 100) -> list[OutcomeReport]:
        """Outcomes the ledger has not taken yet, oldest first (a read: nothing is held)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(OutcomeReportRow)
                .where(OutcomeReportRow.reported_time.is_(None))
                .order_by(OutcomeReportRow.complete_time, OutcomeReportRow.event_id)
                .limit(limit)
            )
            return [_outcome(row) for row in rows]

    async def unreported_count(self) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).where(OutcomeReportRow.reported_time.is_(None))
            )
            return int(count or 0)


def _queued(row: QueuedLeadRow) -> QueuedLead:
    message = lead_pb2.Lead()
    message.ParseFromString(row.lead_proto)
    return QueuedLead(
        event_id=row.event_id,
        buyer_id=row.buyer_id,
        lead=LeadData.from_proto(message),
        sale_price=from_micros(row.sale_price_micros),
        purchase_price=(
            None if row.purchase_price_micros is None else from_micros(row.purchase_price_micros)
        ),
    )


def _report(
    lead: QueuedLeadRow,
    batch_id: str,
    outcome: str,
    reason: str,
    sale_price_micros: int,
    attempts: list[dict[str, object]],
    now: datetime,
) -> OutcomeReportRow:
    return OutcomeReportRow(
        event_id=lead.event_id,
        buyer_id=lead.buyer_id,
        batch_id=batch_id,
        outcome=outcome,
        reason=reason,
        sale_price_micros=sale_price_micros,
        attempts=attempts,
        complete_time=now,
        next_try_time=now,
    )


def _schedule(row: BuyerScheduleRow) -> ScheduleState:
    return ScheduleState(
        buyer_id=row.buyer_id,
        schedule=row.schedule,
        time_zone=row.time_zone,
        next_run_time=row.next_run_time,
        retry_time=row.retry_time,
        failures=row.failures,
        version=row.version,
    )


def _batch(row: BatchRow, event_ids: Sequence[str] = ()) -> Batch:
    return Batch(
        id=row.id,
        buyer_id=row.buyer_id,
        kind=row.kind,
        status=row.status,
        create_time=row.create_time,
        lead_count=row.lead_count,
        file_name=row.file_name,
        remote_name=row.remote_name,
        size_bytes=row.size_bytes,
        tries=row.tries,
        complete_time=row.complete_time,
        reason=row.reason,
        resend_of=row.resend_of,
        attempts=tuple(DeliveryAttempt.from_json(item) for item in row.attempts),
        event_ids=tuple(event_ids),
    )


def _outcome(row: OutcomeReportRow) -> OutcomeReport:
    return OutcomeReport(
        event_id=row.event_id,
        buyer_id=row.buyer_id,
        batch_id=row.batch_id,
        outcome=row.outcome,
        reason=row.reason,
        sale_price=from_micros(row.sale_price_micros),
        complete_time=row.complete_time,
        attempts=tuple(DeliveryAttempt.from_json(item) for item in row.attempts),
        tries=row.tries,
    )


def _attempt(row: HttpAttemptRow) -> HttpAttempt:
    answer = None
    if row.state == ANSWERED and row.answer_time is not None:
        answer = Answer(
            event_id=row.event_id,
            outcome=row.outcome,
            reason=row.reason,
            price=None if row.price_micros is None else from_micros(row.price_micros),
            attempts=tuple(DeliveryAttempt.from_json(item) for item in row.attempts),
            answer_time=row.answer_time,
        )
    return HttpAttempt(
        event_id=row.event_id,
        buyer_id=row.buyer_id,
        lead_id=row.lead_id,
        request=row.request,
        state=row.state,
        send_time=row.send_time,
        answer=answer,
        tries=row.tries,
    )
