"""The ledger's storage: posts a lead's events in one transaction, reads them back; insert-only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from leadflow import db
from leadflow.money import from_micros, to_micros
from leadflow.wire import DeliveryAttempt, PriceAudit
from ledger_service.ledger import (
    EventIdTaken,
    Lead,
    LeadRecord,
    RecipientEvent,
    RecordedLead,
    SourceEvent,
)
from ledger_service.tables import Base, LeadRow, RecipientEventRow, SourceEventRow

log = logging.getLogger(__name__)


class LedgerStore:
    """Append-only: this class issues INSERTs and SELECTs, never an UPDATE or a DELETE (SPEC 9)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str, schema: str) -> LedgerStore:
        """Connect to `url` and create the ledger's schema and tables if they are missing."""
        engine = db.create_engine(url, schema)
        try:
            await db.create_schema(engine, schema, Base.metadata)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self._engine.dispose()

    async def record(self, record: LeadRecord) -> bool:
        """Post the record; False when the lead was already posted (nothing is written then)."""
        lead_id = record.lead.id
        try:
            async with self._sessions.begin() as session:
                session.add(_lead_row(record, datetime.now(UTC)))
                # The lead's row goes first, alone: a replay, even a concurrent one, fails on its
                # primary key before anything else is written (PostgreSQL makes the second writer
                # wait for the first to commit, SQLite serialises writers).
                await session.flush()
                session.add(_source_row(record))
                session.add_all(_recipient_rows(record))
        except IntegrityError:
            # Told apart after the rollback rather than checked before the insert, so two
            # concurrent posts of one lead cannot both pass a check and both write.
            if await self._lead_exists(lead_id):
                log.info("lead %s already recorded: replay ignored", lead_id)
                return False
            taken = await self._recorded_event_ids([e.id for e in record.recipient_events])
            if taken:
                raise EventIdTaken(taken) from None
            raise
        log.info("recorded lead %s with %d recipient events", lead_id, len(record.recipient_events))
        return True

    async def get(self, lead_id: str) -> RecordedLead | None:
        """The posted lead with its events, recipient events in recorded order; None if unknown."""
        async with self._sessions() as session:
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
        async with self._sessions() as session:
            found = await session.scalar(select(LeadRow.id).where(LeadRow.id == lead_id))
            return found is not None

    async def _recorded_event_ids(self, event_ids: list[str]) -> list[str]:
        if not event_ids:
            return []
        async with self._sessions() as session:
            found = await session.scalars(
                select(RecipientEventRow.id).where(RecipientEventRow.id.in_(event_ids))
            )
            return sorted(found)


def _lead_row(record: LeadRecord, record_time: datetime) -> LeadRow:
    lead = record.lead
    return LeadRow(
        id=lead.id,
        flow_id=lead.flow_id,
        source_id=lead.source_id,
        fields_json=lead.fields_json,
        currency=record.currency,
        submit_time=lead.submit_time,
        record_time=record_time,
    )


def _source_row(record: LeadRecord) -> SourceEventRow:
    source = record.source_event
    return SourceEventRow(
        lead_id=record.lead.id,
        outcome=source.outcome,
        reason=source.reason,
        purchase_price_micros=to_micros(source.purchase_price),
        price_paid_micros=to_micros(source.price_paid),
        revenue_micros=to_micros(source.revenue),
        price_audit=_audit_json(source.price_audit),
        duration_ms=source.duration_ms,
    )


def _recipient_rows(record: LeadRecord) -> list[RecipientEventRow]:
    return [
        RecipientEventRow(
            id=event.id,
            lead_id=record.lead.id,
            position=position,
            stage_index=event.stage_index,
            stage_name=event.stage_name,
            strategy=event.strategy,
            step_index=event.step_index,
            buyer_id=event.buyer_id,
            outcome=event.outcome,
            reason=event.reason,
            sale_price_micros=to_micros(event.sale_price),
            price_audit=_audit_json(event.price_audit),
            reference=event.reference,
            attempts=[attempt.to_json() for attempt in event.attempts],
            duration_ms=event.duration_ms,
        )
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
