"""The ledger's storage: posts a lead's events and journal in one transaction, completes queued
deliveries, judges feedback, and computes reports and stats from the journal; insert-only."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import aliased

from leadflow import db
from leadflow.money import from_micros, to_micros
from leadflow.reports import BuyerLine, MarginLine, MarginTotals, VendorLine
from leadflow.wire import DeliveryAttempt, PriceAudit
from ledger_service import journal, returns
from ledger_service.completion import Completion, RecordedEvent, complete
from ledger_service.feedback import (
    APPROVED,
    CONVERSION,
    DENIED,
    RETURN,
    Delivered,
    FeedbackRecord,
    FeedbackRequest,
    History,
    LeadTerms,
    OfferedEvent,
    Sale,
    UnknownFeedback,
    feedback_record,
    judge,
    month_window,
    needs_month_counts,
    offered_to,
    sale_of,
)
from ledger_service.journal import LeadKey, Posting
from ledger_service.ledger import (
    FINAL_OUTCOMES,
    PENDING_OUTCOMES,
    CompletedEvent,
    DeliveryOutcome,
    EventIdTaken,
    Lead,
    LeadRecord,
    RecipientEvent,
    RecordedLead,
    SourceEvent,
    StoredOutcome,
    UnknownEvent,
    UnknownOffer,
)
from ledger_service.tables import (
    Base,
    DeliveryResultRow,
    FeedbackDecisionRow,
    FeedbackRow,
    LeadRow,
    PostingRow,
    RecipientEventRow,
    SourceEventRow,
)

log = logging.getLogger(__name__)


class Verdict(Enum):
    """What posting a lead record did."""

    CREATED = "created"
    # A replay: the lead was posted before, and nothing was written.
    ALREADY_RECORDED = "already recorded"
    # Some of its recipient event ids belong to another lead: nothing was written.
    EVENT_ID_TAKEN = "event id taken"


@dataclass(frozen=True)
class RecordResult:
    lead_id: str
    verdict: Verdict
    # EVENT_ID_TAKEN: the record's recipient event ids that another lead holds.
    taken: tuple[str, ...] = ()


class LedgerStore:
    """Append-only: this class issues INSERTs and SELECTs, never an UPDATE or a DELETE (SPEC 9),
    and the database's triggers refuse them anyway."""

    def __init__(self, engine: AsyncEngine, writer: AsyncEngine | None = None) -> None:
        self._engine = engine
        # On SQLite, transactions that read before they write take the write lock up front
        # (BEGIN IMMEDIATE) on an engine of their own; reads stay on `engine` and never wait.
        self._writer = writer or engine
        self._read_sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time: queueing lead records here hands the lock over at once,
        # where SQLite's busy handler would poll for it with sleeps of up to 100 ms.
        self._record_lock = asyncio.Lock() if writer is not None else None

    @classmethod
    async def open(cls, url: str, schema: str) -> LedgerStore:
        """Connect to `url` and create the ledger's schema and tables if they are missing."""
        store = cls.connect(url, schema)
        try:
            await db.create_schema(store._writer, schema, Base.metadata)
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    def connect(cls, url: str, schema: str) -> LedgerStore:
        """Connect without creating anything (what `leadflow report` does)."""
        engine = db.create_engine(url, schema)
        if engine.dialect.name != "sqlite":
            return cls(engine)
        writer = db.create_engine(url, schema)
        event.listen(writer.sync_engine, "connect", _manual_transactions)
        event.listen(writer.sync_engine, "begin", _begin_immediate)
        return cls(engine, writer)

    async def close(self) -> None:
        await self._engine.dispose()
        if self._writer is not self._engine:
            await self._writer.dispose()

    async def record(self, record: LeadRecord) -> bool:
        """Post the record with its delivery results and journal postings; False when the lead
        was already posted (nothing is written then). Raises EventIdTaken when a recipient event
        id belongs to another lead."""
        [result] = await self.record_many([record])
        if result.verdict is Verdict.EVENT_ID_TAKEN:
            raise EventIdTaken(list(result.taken))
        return result.verdict is Verdict.CREATED

    async def record_many(self, records: Sequence[LeadRecord]) -> list[RecordResult]:
        """Post the records, each with its delivery results and journal postings, in one
        transaction; one result per record, in order. Idempotent by lead id: a lead already
        posted (or earlier in `records`) is ALREADY_RECORDED and nothing of it is written.
        Should the batch conflict, its records are posted one at a time instead."""
        if len(records) > 1:
            try:
                return await self._write(records)
            except IntegrityError:
                # A concurrent post of one of the leads (another replica) or a recipient event id
                # of another lead: correctness first, each record gets a verdict of its own.
                log.info("batch of %d leads conflicts: recorded one at a time", len(records))
        return [await self._record_one(record) for record in records]

    async def _record_one(self, record: LeadRecord) -> RecordResult:
        try:
            [result] = await self._write([record])
        except IntegrityError:
            # _write's check for a posted lead cannot see a concurrent post that has not
            # committed yet: that one, and a taken event id, are told apart after the rollback.
            lead_id = record.lead.id
            if await self._lead_exists(lead_id):
                log.info("lead %s already recorded: replay ignored", lead_id)
                return RecordResult(lead_id, Verdict.ALREADY_RECORDED)
            taken = await self._recorded_event_ids([e.id for e in record.recipient_events])
            if taken:
                return RecordResult(lead_id, Verdict.EVENT_ID_TAKEN, tuple(taken))
            raise
        return result

    async def _write(self, records: Sequence[LeadRecord]) -> list[RecordResult]:
        """One transaction: skips the leads already posted, bulk-inserts the others (one
        executemany per table); raises IntegrityError, writing nothing, on any conflict."""
        now = datetime.now(UTC)
        async with self._record_lock or nullcontext(), self._writer.begin() as conn:
            found = await conn.scalars(
                select(LeadRow.id).where(LeadRow.id.in_({r.lead.id for r in records}))
            )
            recorded = set(found)
            fresh: dict[str, LeadRecord] = {}
            for record in records:
                if record.lead.id not in recorded:
                    fresh.setdefault(record.lead.id, record)
            # In key order: two replicas posting overlapping batches then wait on each other's
            # rows in one order, never in a cycle (a deadlock).
            writes = [fresh[lead_id] for lead_id in sorted(fresh)]
            if writes:
                await _insert_rows(conn, LeadRow, [_lead_values(r, now) for r in writes])
                await _insert_rows(conn, SourceEventRow, [_source_values(r) for r in writes])
                recipients = [values for r in writes for values in _recipient_values(r)]
                recipients.sort(key=lambda values: str(values["id"]))
                await _insert_rows(conn, RecipientEventRow, recipients)
                deliveries = [values for r in writes for values in _realtime_results(r, now)]
                await _insert_rows(conn, DeliveryResultRow, deliveries)
                postings = [
                    _posting_values(p, now)
                    for r in writes
                    for p in (journal.purchase(r), *journal.realtime_sales(r))
                    if p is not None
                ]
                await _insert_rows(conn, PostingRow, postings)
        if fresh:
            # A line about a batch names its leads in JSON logs too (`lead_id` is for one lead).
            log.info(
                "recorded %d leads: %s",
                len(fresh),
                " ".join(fresh),
                extra={"lead_ids": list(fresh)},
            )
        if recorded:
            replays = sorted(recorded)
            log.info(
                "leads already recorded, replays ignored: %s",
                " ".join(replays),
                extra={"lead_ids": replays},
            )
        # The first record of each fresh lead was written; a repeat of it is a replay.
        pending = set(fresh)
        results: list[RecordResult] = []
        for record in records:
            lead_id = record.lead.id
            created = lead_id in pending
            pending.discard(lead_id)
            results.append(
                RecordResult(lead_id, Verdict.CREATED if created else Verdict.ALREADY_RECORDED)
            )
        return results

    async def get(self, lead_id: str) -> RecordedLead | None:
        """The posted lead with its events, recipient events in recorded order; None if unknown."""
        async with self._read_sessions() as session:
            lead = await session.get(LeadRow, lead_id)
            if lead is None:
                return None
            source = await session.get(SourceEventRow, lead_id)
            if source is None:
                raise RuntimeError(f"lead {lead_id} has no source event")
            recipients = await session.scalars(
                select(RecipientEventRow)
                .where(RecipientEventRow.lead_id == lead_id)
                .order_by(RecipientEventRow.position)
            )
            record = LeadRecord(
                lead=Lead(
                    id=lead.id,
                    flow_id=lead.flow_id,
                    source_id=lead.source_id,
                    fields_json=lead.fields_json,
                    submit_time=lead.submit_time,
                ),
                source_event=_source_event(source),
                recipient_events=tuple(_recipient_event(row) for row in recipients),
                currency=lead.currency,
            )
            return RecordedLead(record=record, record_time=lead.record_time)

    async def _lead_exists(self, lead_id: str) -> bool:
        async with self._read_sessions() as session:
            found = await session.scalar(select(LeadRow.id).where(LeadRow.id == lead_id))
            return found is not None

    async def _recorded_event_ids(self, event_ids: list[str]) -> list[str]:
        if not event_ids:
            return []
        async with self._read_sessions() as session:
            found = await session.scalars(
                select(RecipientEventRow.id).where(RecipientEventRow.id.in_(event_ids))
            )
            return sorted(found)

    # --- Lead details ------------------------------------------------------------------------

    async def postings(self, lead_id: str | None = None) -> list[Posting]:
        """Journal postings (of one lead, or all), in effective time order."""
        query = select(PostingRow).order_by(PostingRow.effective_time, PostingRow.id)
        if lead_id is not None:
            query = query.where(PostingRow.lead_id == lead_id)
        async with self._read_sessions() as session:
            return [_posting(row) for row in await session.scalars(query)]

    async def feedback(self, lead_id: str) -> list[FeedbackRecord]:
        """The lead's feedback in arrival order, each with its operator decision if any."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                _feedback_query()
                .where(FeedbackRow.lead_id == lead_id)
                .order_by(FeedbackRow.create_time, FeedbackRow.id)
            )
            return [_feedback_record(row) for row in rows]

    async def delivery_outcomes(self, lead_id: str) -> list[StoredOutcome]:
        """Completions of the lead's queued and unknown recipient events."""
        completed = (
            select(RecipientEventRow.id)
            .where(
                RecipientEventRow.lead_id == lead_id,
                RecipientEventRow.outcome.in_(PENDING_OUTCOMES),
            )
            .scalar_subquery()
        )
        async with self._read_sessions() as session:
            rows = await session.scalars(
                select(DeliveryResultRow)
                .where(
                    DeliveryResultRow.lead_id == lead_id,
                    DeliveryResultRow.recipient_event_id.in_(completed),
                )
                .order_by(DeliveryResultRow.complete_time, DeliveryResultRow.recipient_event_id)
            )
            return [_stored_outcome(row) for row in rows]

    async def trial_balance(self) -> dict[str, int]:
        """Every account's balance in micros (debits positive); the values sum to zero."""
        debits = select(
            PostingRow.debit_account.label("account"), PostingRow.amount_micros.label("amount")
        )
        credits = select(PostingRow.credit_account, -PostingRow.amount_micros)
        legs = union_all(debits, credits).subquery()
        query = select(legs.c.account, func.sum(legs.c.amount)).group_by(legs.c.account)
        async with self._engine.connect() as conn:
            return {account: int(total) for account, total in await conn.execute(query)}

    # --- Queued deliveries -------------------------------------------------------------------

    async def record_delivery_outcome(
        self, outcome: DeliveryOutcome
    ) -> tuple[CompletedEvent, Posting | None]:
        """Complete a queued or unknown recipient event; books the sale on success. Idempotent
        by event id: a repeat writes nothing and returns the first outcome, created=False."""
        now = datetime.now(UTC)
        async with self._writer.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        RecipientEventRow.outcome,
                        RecipientEventRow.buyer_id,
                        RecipientEventRow.sale_price_micros,
                        RecipientEventRow.stage_index,
                        RecipientEventRow.step_index,
                        LeadRow.id,
                        LeadRow.flow_id,
                        LeadRow.source_id,
                        LeadRow.currency,
                    )
                    .join(LeadRow, LeadRow.id == RecipientEventRow.lead_id)
                    .where(RecipientEventRow.id == outcome.recipient_event_id)
                )
            ).first()
            if row is None:
                raise UnknownEvent(outcome.recipient_event_id)
            recorded = RecordedEvent(
                id=outcome.recipient_event_id,
                lead=LeadKey(row.id, row.flow_id, row.source_id, row.currency),
                outcome=row.outcome,
                buyer_id=row.buyer_id,
                sale_price_micros=row.sale_price_micros,
                stage_index=row.stage_index,
                step_index=row.step_index,
            )
            completion = complete(recorded, outcome)
            inserted = await conn.execute(
                db.insert_ignore(DeliveryResultRow, self._engine.dialect)
                .values(**_completion_values(completion, now))
                .returning(DeliveryResultRow.recipient_event_id)
            )
            if inserted.first() is None:
                log.info("outcome of %s already recorded: replay ignored", recorded.lead.lead_id)
                first = await conn.scalar(
                    select(DeliveryResultRow.outcome).where(
                        DeliveryResultRow.recipient_event_id == outcome.recipient_event_id
                    )
                )
                return completion.completed(False, str(first)), None
            if completion.sale is not None:
                await conn.execute(insert(PostingRow), [_posting_values(completion.sale, now)])
        return completion.completed(True, outcome.outcome), completion.sale

    async def unknown_offers(self, limit: int, before_lead_id: str = "") -> list[UnknownOffer]:
        """Recipient events recorded `unknown` without a later outcome, newest lead first."""
        query = (
            select(
                RecipientEventRow.id,
                RecipientEventRow.lead_id,
                LeadRow.flow_id,
                LeadRow.source_id,
                RecipientEventRow.buyer_id,
                RecipientEventRow.stage_index,
                RecipientEventRow.step_index,
                RecipientEventRow.sale_price_micros,
                LeadRow.submit_time,
                RecipientEventRow.reason,
            )
            .join(LeadRow, LeadRow.id == RecipientEventRow.lead_id)
            .outerjoin(
                DeliveryResultRow,
                DeliveryResultRow.recipient_event_id == RecipientEventRow.id,
            )
            .where(
                RecipientEventRow.outcome == "unknown",
                DeliveryResultRow.recipient_event_id.is_(None),
            )
            .order_by(RecipientEventRow.lead_id.desc(), RecipientEventRow.position)
            .limit(limit)
        )
        if before_lead_id:
            query = query.where(RecipientEventRow.lead_id < before_lead_id)
        return [
            UnknownOffer(
                recipient_event_id=event_id,
                lead_id=lead_id,
                flow_id=flow_id,
                source_id=source_id,
                buyer_id=buyer_id,
                stage_index=int(stage_index),
                step_index=int(step_index),
                sale_price=from_micros(int(micros)),
                submit_time=submit_time,
                reason=reason,
            )
            for (
                event_id,
                lead_id,
                flow_id,
                source_id,
                buyer_id,
                stage_index,
                step_index,
                micros,
                submit_time,
                reason,
            ) in await self._all(query)
        ]

    # --- Feedback ----------------------------------------------------------------------------

    async def submit_feedback(
        self, request: FeedbackRequest, now: datetime
    ) -> tuple[FeedbackRecord, bool, list[Posting]]:
        """Judge and record a buyer's feedback; posts an auto-approved return's credit (and
        chargeback). Idempotent by feedback id: a repeat returns the first record, created=False.
        Raises UnknownSale when the buyer was never offered the lead or event."""
        async with self._writer.begin() as conn:
            # One buyer's feedback is judged one at a time, across replicas: the monthly percent
            # counts what the others just took.
            await self._lock(conn, f"ledger-feedback:{request.buyer_id}")
            existing = await _read_feedback(conn, request.feedback_id)
            if existing is not None:
                return existing, False, []
            sale = await _find_sale(conn, request)
            history = await _history(conn, request, sale, now)
            record = feedback_record(request, sale, judge(request, sale, history, now), now)
            await conn.execute(insert(FeedbackRow), [_feedback_values(record)])
            postings: list[Posting] = []
            if returns.credits_now(record):
                postings = await self._post_return(conn, record, now)
        log.info(
            "feedback %s (%s) on lead %s: %s", record.id, record.type, record.lead_id, record.status
        )
        return record, True, postings

    async def decide_return(
        self, feedback_id: str, approve: bool, now: datetime
    ) -> tuple[FeedbackRecord, bool, list[Posting]]:
        """Approve (posting the credit and chargeback) or deny a pending return, once.
        The same decision again returns changed=False; the other raises DecisionRefused."""
        async with self._writer.begin() as conn:
            record = await _read_feedback(conn, feedback_id)
            if record is None:
                raise UnknownFeedback(feedback_id)
            decided = returns.decide(record, approve, now)
            if decided is None:
                return record, False, []
            inserted = await conn.execute(
                db.insert_ignore(FeedbackDecisionRow, self._engine.dialect)
                .values(feedback_id=feedback_id, decision=decided.decision, decide_time=now)
                .returning(FeedbackDecisionRow.feedback_id)
            )
            if inserted.first() is None:  # another replica decided it meanwhile
                current = await _read_feedback(conn, feedback_id)
                assert current is not None
                # No longer pending: the same decision is a repeat, the other one is refused.
                if returns.decide(current, approve, now) is not None:
                    raise AssertionError(f"return {feedback_id} is decided yet still pending")
                return current, False, []
            postings = await self._post_return(conn, decided, now) if approve else []
        log.info("return %s on lead %s %s", feedback_id, decided.lead_id, decided.decision)
        return decided, True, postings

    async def _post_return(
        self, conn: AsyncConnection, record: FeedbackRecord, at: datetime
    ) -> list[Posting]:
        """The buyer's credit and, under return_to_source, the vendor's chargeback (once per
        lead, whichever buyer's return comes first)."""
        lead = (
            await conn.execute(
                select(LeadRow.currency, SourceEventRow.price_paid_micros)
                .join(SourceEventRow, SourceEventRow.lead_id == LeadRow.id)
                .where(LeadRow.id == record.lead_id)
            )
        ).one()
        due = returns.return_postings(record, lead.currency, lead.price_paid_micros, at)
        now = datetime.now(UTC)
        await conn.execute(insert(PostingRow), [_posting_values(due.credit, now)])
        posted = [due.credit]
        if due.chargeback is not None:
            inserted = await conn.execute(
                db.insert_ignore(PostingRow, self._engine.dialect)
                .values(**_posting_values(due.chargeback, now))
                .returning(PostingRow.id)
            )
            if inserted.first() is not None:
                posted.append(due.chargeback)
        return posted

    # --- Reports and stats (from the journal and the delivery results) -----------------------

    async def vendor_report(self, start: datetime, end: datetime) -> list[VendorLine]:
        leads = (
            select(LeadRow.source_id, func.count())
            .where(LeadRow.submit_time >= start, LeadRow.submit_time < end)
            .group_by(LeadRow.source_id)
        )
        money = (
            select(
                PostingRow.source_id,
                PostingRow.kind,
                func.count(),
                func.coalesce(func.sum(PostingRow.amount_micros), 0),
            )
            .where(
                _window(PostingRow.effective_time, start, end),
                PostingRow.kind.in_([journal.PURCHASE, journal.CHARGEBACK]),
            )
            .group_by(PostingRow.source_id, PostingRow.kind)
        )
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        # Two scans of different tables: run side by side, each on a connection of its own.
        lead_rows, money_rows = await asyncio.gather(self._all(leads), self._all(money))
        for source_id, count in lead_rows:
            totals[source_id]["leads"] = int(count)
        for source_id, kind, count, amount in money_rows:
            if kind == journal.PURCHASE:
                totals[source_id]["accepted"] = int(count)
                totals[source_id]["purchase_micros"] = int(amount)
            else:
                totals[source_id]["chargeback_micros"] = int(amount)
        return [VendorLine(source_id, **values) for source_id, values in sorted(totals.items())]

    async def buyer_report(self, start: datetime, end: datetime) -> list[BuyerLine]:
        deliveries = (
            select(
                DeliveryResultRow.buyer_id,
                DeliveryResultRow.outcome,
                func.count(),
                func.coalesce(func.sum(DeliveryResultRow.sale_price_micros), 0),
            )
            .where(_window(DeliveryResultRow.complete_time, start, end))
            .group_by(DeliveryResultRow.buyer_id, DeliveryResultRow.outcome)
        )
        money = (
            select(
                PostingRow.buyer_id,
                PostingRow.kind,
                func.count(),
                func.coalesce(func.sum(PostingRow.amount_micros), 0),
            )
            .where(
                _window(PostingRow.effective_time, start, end),
                PostingRow.kind.in_([journal.SALE, journal.RETURN]),
            )
            .group_by(PostingRow.buyer_id, PostingRow.kind)
        )
        # Offers still unknown, by when their lead arrived: they complete nowhere yet.
        unknown = (
            select(RecipientEventRow.buyer_id, func.count())
            .join(LeadRow, LeadRow.id == RecipientEventRow.lead_id)
            .outerjoin(
                DeliveryResultRow,
                DeliveryResultRow.recipient_event_id == RecipientEventRow.id,
            )
            .where(
                RecipientEventRow.outcome == "unknown",
                DeliveryResultRow.recipient_event_id.is_(None),
                _window(LeadRow.submit_time, start, end),
            )
            .group_by(RecipientEventRow.buyer_id)
        )
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        delivery_rows, money_rows, unknown_rows = await asyncio.gather(
            self._all(deliveries), self._all(money), self._all(unknown)
        )
        for buyer_id, count in unknown_rows:
            totals[buyer_id]["unknown"] = int(count)
        for buyer_id, outcome, count, amount in delivery_rows:
            line = totals[buyer_id]
            line["deliveries"] += int(count)
            if outcome == "success":
                line["sold"] = int(count)
            elif outcome == "failure":
                line["failed"] = int(count)
                line["failed_opportunity_micros"] = int(amount)
            else:
                line["errors"] = int(count)
        for buyer_id, kind, count, amount in money_rows:
            if kind == journal.SALE:
                totals[buyer_id]["sales_micros"] = int(amount)
            else:
                totals[buyer_id]["returns"] = int(count)
                totals[buyer_id]["return_credit_micros"] = int(amount)
        return [BuyerLine(buyer_id, **values) for buyer_id, values in sorted(totals.items())]

    async def margin_report(
        self, start: datetime, end: datetime, group_by: Sequence[str]
    ) -> MarginTotals:
        """Revenue, cost and credits per group. Grouped by buyer, each purchase in the window is
        split evenly (to the cent, remainder to the first sale) between the buyers that bought
        the lead; an unsold lead's purchase goes to the row without a buyer."""
        flow = "flow" in group_by
        source = "source" in group_by
        buyer = "buyer" in group_by
        in_window = _window(PostingRow.effective_time, start, end)
        keys: list[Any] = []
        if flow:
            keys.append(PostingRow.flow_id)
        if source:
            keys.append(PostingRow.source_id)
        if buyer:
            keys.append(PostingRow.buyer_id)
        money = select(
            *keys,
            PostingRow.kind,
            func.count(),
            func.coalesce(func.sum(PostingRow.amount_micros), 0),
        ).where(in_window)
        if buyer:
            money = money.where(PostingRow.kind != journal.PURCHASE)
        money = money.group_by(*keys, PostingRow.kind)
        total_leads = select(func.count()).where(in_window, PostingRow.kind == journal.PURCHASE)

        lines: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))

        def key_of(values: Sequence[Any]) -> tuple[str, str, str]:
            it = iter(values)
            return (
                next(it) if flow else "",
                next(it) if source else "",
                (next(it) or "") if buyer else "",
            )

        queries = [self._all(money), self._all(total_leads)]
        if buyer:
            queries.append(self._all(_allocated_purchases(start, end, flow, source)))
        money_rows, count_rows, *allocated = await asyncio.gather(*queries)
        for row in money_rows:
            *group, kind, count, amount = row
            line = lines[key_of(group)]
            if kind == journal.PURCHASE:
                line["leads"] += int(count)
                line["cost_micros"] += int(amount)
            elif kind == journal.CHARGEBACK:
                line["cost_micros"] -= int(amount)
            elif kind == journal.SALE:
                line["revenue_micros"] += int(amount)
            else:
                line["credit_micros"] += int(amount)
        for row in allocated[0] if allocated else []:
            *group, count, amount = row
            line = lines[key_of(group)]
            line["leads"] += int(count)
            line["cost_micros"] += int(amount)
        leads = int(count_rows[0][0])
        return MarginTotals(
            lines=tuple(
                MarginLine(flow_id=f, source_id=s, buyer_id=b, **values)
                for (f, s, b), values in sorted(lines.items())
            ),
            total_leads=leads,
        )

    async def buyer_stats(
        self, buyer_ids: Sequence[str], start: datetime, end: datetime
    ) -> dict[str, dict[str, int]]:
        """Per buyer: offered, sold, revenue_micros (deliveries completed in the window), returned
        and converted (approved returns and conversions of those sales)."""
        results = DeliveryResultRow
        deliveries = (
            select(
                results.buyer_id,
                results.outcome,
                func.count(),
                func.coalesce(func.sum(results.sale_price_micros), 0),
            )
            .where(_window(results.complete_time, start, end))
            .group_by(results.buyer_id, results.outcome)
        )
        decision = FeedbackDecisionRow
        approved = or_(FeedbackRow.initial_status == APPROVED, decision.decision == APPROVED)
        feedback = (
            select(FeedbackRow.buyer_id, FeedbackRow.type, func.count())
            .join(results, results.recipient_event_id == FeedbackRow.recipient_event_id)
            .outerjoin(decision, decision.feedback_id == FeedbackRow.id)
            .where(
                _window(results.complete_time, start, end),
                results.outcome == "success",
                FeedbackRow.outcome == "success",
                approved,
            )
            .group_by(FeedbackRow.buyer_id, FeedbackRow.type)
        )
        if buyer_ids:
            deliveries = deliveries.where(results.buyer_id.in_(buyer_ids))
            feedback = feedback.where(FeedbackRow.buyer_id.in_(buyer_ids))
        stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        async with self._engine.connect() as conn:
            for buyer_id, outcome, count, amount in await conn.execute(deliveries):
                stats[buyer_id]["offered"] += int(count)
                if outcome == "success":
                    stats[buyer_id]["sold"] = int(count)
                    stats[buyer_id]["revenue_micros"] = int(amount)
            for buyer_id, kind, count in await conn.execute(feedback):
                stats[buyer_id]["returned" if kind == RETURN else "converted"] = int(count)
        return {buyer_id: dict(values) for buyer_id, values in sorted(stats.items())}

    # --- Plumbing ----------------------------------------------------------------------------

    async def _all(self, query: Any) -> list[Any]:
        async with self._engine.connect() as conn:
            return list(await conn.execute(query))

    async def _lock(self, conn: AsyncConnection, key: str) -> None:
        # SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL needs a lock that
        # every replica sees, held until the transaction ends.
        if self._postgres:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would BEGIN (deferred) by itself; we begin instead.
    dbapi_connection.isolation_level = None


def _begin_immediate(conn: SyncConnection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _window(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(column >= start, column < end)


def _allocated_purchases(start: datetime, end: datetime, flow: bool, source: bool) -> Any:
    """Purchases in the window split between their lead's buyers: (keys…, buyer, count, cost).
    One join of the window's purchases to their leads' sales, numbered per lead."""
    purchase = aliased(PostingRow, name="purchase")
    sale = aliased(PostingRow, name="sale")
    split = (
        select(
            purchase.flow_id,
            purchase.source_id,
            sale.buyer_id,
            purchase.amount_micros.label("amount"),
            func.count(sale.id).over(partition_by=purchase.lead_id).label("buyers"),
            func.row_number()
            .over(partition_by=purchase.lead_id, order_by=sale.id)
            .label("position"),
        )
        .select_from(purchase)
        .outerjoin(sale, and_(sale.lead_id == purchase.lead_id, sale.kind == journal.SALE))
        .where(_window(purchase.effective_time, start, end), purchase.kind == journal.PURCHASE)
        .subquery("split")
    )
    amount, buyers = split.c.amount, split.c.buyers
    # Whole cents each; the first sale's buyer also takes what the even split leaves over.
    share = (amount // (literal(10_000) * buyers)) * 10_000
    allocated = case(
        (buyers == 0, amount),
        (split.c.position == 1, amount - share * (buyers - 1)),
        else_=share,
    )
    keys: list[Any] = []
    if flow:
        keys.append(split.c.flow_id)
    if source:
        keys.append(split.c.source_id)
    keys.append(split.c.buyer_id)
    return select(*keys, func.count(), func.coalesce(func.sum(allocated), 0)).group_by(*keys)


def _feedback_query() -> Any:
    return select(
        FeedbackRow, FeedbackDecisionRow.decision, FeedbackDecisionRow.decide_time
    ).outerjoin(FeedbackDecisionRow, FeedbackDecisionRow.feedback_id == FeedbackRow.id)


async def _read_feedback(conn: AsyncConnection, feedback_id: str) -> FeedbackRecord | None:
    row = (await conn.execute(_feedback_query().where(FeedbackRow.id == feedback_id))).first()
    return None if row is None else _feedback_record(row)


def _feedback_record(row: Any) -> FeedbackRecord:
    mapping = row._mapping
    return FeedbackRecord(
        id=mapping["id"],
        lead_id=mapping["lead_id"],
        recipient_event_id=mapping["recipient_event_id"],
        buyer_id=mapping["buyer_id"],
        flow_id=mapping["flow_id"],
        source_id=mapping["source_id"],
        type=mapping["type"],
        reason=mapping["reason"],
        amount=from_micros(mapping["amount_micros"]),
        outcome=mapping["outcome"],
        outcome_reason=mapping["outcome_reason"],
        initial_status=mapping["initial_status"],
        return_to_source=bool(mapping["return_to_source"]),
        sale_time=db.aware(mapping["sale_time"]),
        create_time=db.aware(mapping["create_time"]),
        decision=mapping["decision"],
        decide_time=db.aware(mapping["decide_time"]),
    )


def _feedback_values(record: FeedbackRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "lead_id": record.lead_id,
        "recipient_event_id": record.recipient_event_id,
        "buyer_id": record.buyer_id,
        "flow_id": record.flow_id,
        "source_id": record.source_id,
        "type": record.type,
        "reason": record.reason,
        "amount_micros": to_micros(record.amount),
        "outcome": record.outcome,
        "outcome_reason": record.outcome_reason,
        "initial_status": record.initial_status,
        "return_to_source": record.return_to_source,
        "sale_time": record.sale_time,
        "create_time": record.create_time,
    }


async def _find_sale(conn: AsyncConnection, request: FeedbackRequest) -> Sale:
    """The buyer's recipient event the feedback is about, and whether (and when) it sold."""
    events = select(
        RecipientEventRow.id,
        RecipientEventRow.lead_id,
        RecipientEventRow.buyer_id,
        RecipientEventRow.sale_price_micros,
    )
    if request.recipient_event_id:
        events = events.where(RecipientEventRow.id == request.recipient_event_id)
    else:
        events = events.where(
            RecipientEventRow.lead_id == request.lead_id,
            RecipientEventRow.buyer_id == request.buyer_id,
        ).order_by(RecipientEventRow.position)
    offered = offered_to(
        request,
        (
            OfferedEvent(row.id, row.lead_id, row.buyer_id, from_micros(row.sale_price_micros))
            for row in await conn.execute(events)
        ),
    )
    lead_id = offered[0].lead_id
    sold = (
        await conn.execute(
            select(
                DeliveryResultRow.recipient_event_id,
                DeliveryResultRow.sale_price_micros,
                DeliveryResultRow.complete_time,
            )
            .where(
                DeliveryResultRow.recipient_event_id.in_([row.id for row in offered]),
                DeliveryResultRow.outcome == "success",
            )
            .order_by(DeliveryResultRow.complete_time, DeliveryResultRow.recipient_event_id)
        )
    ).first()
    lead = (
        await conn.execute(
            select(
                LeadRow.flow_id,
                LeadRow.source_id,
                LeadRow.currency,
                SourceEventRow.price_paid_micros,
            )
            .join(SourceEventRow, SourceEventRow.lead_id == LeadRow.id)
            .where(LeadRow.id == lead_id)
        )
    ).one()
    delivered = None
    if sold is not None:
        delivered = Delivered(
            sold.recipient_event_id,
            from_micros(sold.sale_price_micros),
            db.aware(sold.complete_time),
        )
    terms = LeadTerms(
        lead.flow_id, lead.source_id, lead.currency, from_micros(lead.price_paid_micros)
    )
    return sale_of(request.buyer_id, offered, delivered, terms)


async def _history(
    conn: AsyncConnection, request: FeedbackRequest, sale: Sale, now: datetime
) -> History:
    taken = (
        await conn.execute(
            select(FeedbackRow.type).where(
                FeedbackRow.buyer_id == request.buyer_id,
                FeedbackRow.lead_id == sale.lead_id,
                FeedbackRow.outcome == "success",
            )
        )
    ).scalars()
    types = set(taken)
    sales = returns = 0
    if needs_month_counts(request):
        assert request.policy is not None
        start, end = month_window(now, request.policy.time_zone)
        sales = (
            await conn.execute(
                select(func.count()).where(
                    PostingRow.buyer_id == request.buyer_id,
                    PostingRow.kind == journal.SALE,
                    _window(PostingRow.effective_time, start, end),
                )
            )
        ).scalar_one()
        returns = (
            await conn.execute(
                select(func.count())
                .select_from(FeedbackRow)
                .outerjoin(FeedbackDecisionRow, FeedbackDecisionRow.feedback_id == FeedbackRow.id)
                .where(
                    FeedbackRow.buyer_id == request.buyer_id,
                    FeedbackRow.type == RETURN,
                    FeedbackRow.outcome == "success",
                    _window(FeedbackRow.create_time, start, end),
                    or_(
                        FeedbackDecisionRow.decision.is_(None),
                        FeedbackDecisionRow.decision != DENIED,
                    ),
                )
            )
        ).scalar_one()
    return History(
        already_returned=RETURN in types,
        already_converted=CONVERSION in types,
        sales_this_month=int(sales),
        returns_this_month=int(returns),
    )


def _posting_values(posting: Posting, post_time: datetime) -> dict[str, Any]:
    return {
        "id": posting.id,
        "kind": posting.kind,
        "lead_id": posting.lead.lead_id,
        "flow_id": posting.lead.flow_id,
        "source_id": posting.lead.source_id,
        "buyer_id": posting.buyer_id,
        "recipient_event_id": posting.recipient_event_id,
        "feedback_id": posting.feedback_id,
        "debit_account": posting.debit_account,
        "credit_account": posting.credit_account,
        "amount_micros": posting.amount_micros,
        "currency": posting.lead.currency,
        "effective_time": posting.effective_time,
        "post_time": post_time,
    }


def _posting(row: PostingRow) -> Posting:
    return Posting(
        id=row.id,
        kind=row.kind,
        lead=LeadKey(row.lead_id, row.flow_id, row.source_id, row.currency),
        debit_account=row.debit_account,
        credit_account=row.credit_account,
        amount_micros=row.amount_micros,
        effective_time=row.effective_time,
        buyer_id=row.buyer_id,
        recipient_event_id=row.recipient_event_id,
        feedback_id=row.feedback_id,
        post_time=row.post_time,
    )


def _completion_values(completion: Completion, record_time: datetime) -> dict[str, Any]:
    event, outcome = completion.event, completion.outcome
    return {
        "recipient_event_id": event.id,
        "lead_id": event.lead.lead_id,
        "flow_id": event.lead.flow_id,
        "source_id": event.lead.source_id,
        "buyer_id": event.buyer_id,
        "outcome": outcome.outcome,
        "reason": outcome.reason,
        "sale_price_micros": completion.price_micros,
        "complete_time": outcome.complete_time,
        "batch": completion.batch,
        "batch_id": outcome.batch_id,
        "attempts": [attempt.to_json() for attempt in outcome.attempts],
        "record_time": record_time,
    }


def _realtime_results(record: LeadRecord, record_time: datetime) -> list[dict[str, Any]]:
    """A real-time delivery completes when the lead is recorded, at its submission time."""
    lead = record.lead
    return [
        {
            "recipient_event_id": event.id,
            "lead_id": lead.id,
            "flow_id": lead.flow_id,
            "source_id": lead.source_id,
            "buyer_id": event.buyer_id,
            "outcome": event.outcome,
            "reason": event.reason,
            "sale_price_micros": to_micros(event.sale_price),
            "complete_time": lead.submit_time,
            "batch": False,
            "batch_id": "",
            "attempts": [],
            "record_time": record_time,
        }
        for event in record.recipient_events
        if event.outcome in FINAL_OUTCOMES
    ]


def _stored_outcome(row: DeliveryResultRow) -> StoredOutcome:
    price = from_micros(row.sale_price_micros)
    return StoredOutcome(
        outcome=DeliveryOutcome(
            recipient_event_id=row.recipient_event_id,
            outcome=row.outcome,
            reason=row.reason,
            sale_price=price,
            attempts=tuple(DeliveryAttempt.from_json(item) for item in row.attempts),
            complete_time=row.complete_time,
            batch_id=row.batch_id,
        ),
        sale_price=price,
        record_time=row.record_time,
    )


async def _insert_rows(conn: AsyncConnection, table: Any, rows: list[dict[str, Any]]) -> None:
    """One INSERT executed for every row (executemany); nothing when there are no rows."""
    if rows:
        await conn.execute(insert(table), rows)


def _lead_values(record: LeadRecord, record_time: datetime) -> dict[str, Any]:
    lead = record.lead
    return {
        "id": lead.id,
        "flow_id": lead.flow_id,
        "source_id": lead.source_id,
        "fields_json": lead.fields_json,
        "currency": record.currency,
        "submit_time": lead.submit_time,
        "record_time": record_time,
    }


def _source_values(record: LeadRecord) -> dict[str, Any]:
    source = record.source_event
    return {
        "lead_id": record.lead.id,
        "outcome": source.outcome,
        "reason": source.reason,
        "purchase_price_micros": to_micros(source.purchase_price),
        "price_paid_micros": to_micros(source.price_paid),
        "revenue_micros": to_micros(source.revenue),
        "price_audit": _audit_json(source.price_audit),
        "duration_ms": source.duration_ms,
    }


def _recipient_values(record: LeadRecord) -> list[dict[str, Any]]:
    return [
        {
            "id": event.id,
            "lead_id": record.lead.id,
            "position": position,
            "stage_index": event.stage_index,
            "stage_name": event.stage_name,
            "strategy": event.strategy,
            "step_index": event.step_index,
            "buyer_id": event.buyer_id,
            "outcome": event.outcome,
            "reason": event.reason,
            "sale_price_micros": to_micros(event.sale_price),
            "price_audit": _audit_json(event.price_audit),
            "reference": event.reference,
            "attempts": [attempt.to_json() for attempt in event.attempts],
            "duration_ms": event.duration_ms,
        }
        for position, event in enumerate(record.recipient_events)
    ]


def _source_event(row: SourceEventRow) -> SourceEvent:
    return SourceEvent(
        outcome=row.outcome,
        reason=row.reason,
        purchase_price=from_micros(row.purchase_price_micros),
        price_paid=from_micros(row.price_paid_micros),
        price_audit=_audit(row.price_audit),
        revenue=from_micros(row.revenue_micros),
        duration_ms=row.duration_ms,
    )


def _recipient_event(row: RecipientEventRow) -> RecipientEvent:
    return RecipientEvent(
        id=row.id,
        stage_index=row.stage_index,
        stage_name=row.stage_name,
        strategy=row.strategy,
        step_index=row.step_index,
        buyer_id=row.buyer_id,
        outcome=row.outcome,
        reason=row.reason,
        sale_price=from_micros(row.sale_price_micros),
        price_audit=_audit(row.price_audit),
        reference=row.reference,
        attempts=tuple(DeliveryAttempt.from_json(item) for item in row.attempts),
        duration_ms=row.duration_ms,
    )


def _audit_json(audit: PriceAudit) -> dict[str, Any]:
    return {
        "layer": audit.layer,
        "rule_index": audit.rule_index,
        "amount_micros": to_micros(audit.amount),
        "service_status": audit.service_status,
        "service_latency_ms": audit.service_latency_ms,
        "service_error": audit.service_error,
        "fallback_used": audit.fallback_used,
        "note": audit.note,
    }


def _audit(data: dict[str, Any]) -> PriceAudit:
    return PriceAudit(
        layer=str(data["layer"]),
        rule_index=int(data["rule_index"]),
        amount=from_micros(int(data["amount_micros"])),
        service_status=int(data["service_status"]),
        service_latency_ms=int(data["service_latency_ms"]),
        service_error=str(data["service_error"]),
        fallback_used=bool(data["fallback_used"]),
        note=str(data.get("note", "")),
    )
