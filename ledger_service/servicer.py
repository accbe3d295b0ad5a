"""LedgerService over gRPC: proto <-> domain translation and status codes only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from google.type import money_pb2
from grpc_status import rpc_status

from leadflow.common.v1 import lead_pb2
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from leadflow.money import from_proto, to_proto
from leadflow.wire import OUTCOMES, DeliveryAttempt, PriceAudit, outcome_to_proto
from ledger_service.ledger import (
    DEFAULT_CURRENCY,
    EventIdTaken,
    InvalidRecord,
    Lead,
    LeadRecord,
    RecipientEvent,
    RecordedLead,
    SourceEvent,
    check_id,
    check_record,
)
from ledger_service.store import LedgerStore

log = logging.getLogger(__name__)

# Strict, unlike wire.outcome_from_proto: an unset outcome is a caller's bug, not an "error".
_OUTCOME_NAMES = {outcome_to_proto(name): name for name in OUTCOMES}


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    """RecordLead and GetLead over a LedgerStore."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    async def RecordLead(
        self,
        request: pb.RecordLeadRequest,
        context: grpc.aio.ServicerContext[pb.RecordLeadRequest, pb.RecordLeadResponse],
    ) -> pb.RecordLeadResponse:
        try:
            record = _record_from_proto(request)
            check_record(record)
        except InvalidRecord as exc:
            await _abort_invalid(context, exc)
        try:
            created = await self._store.record(record)
        except EventIdTaken as exc:
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        return pb.RecordLeadResponse(created=created)

    async def GetLead(
        self,
        request: pb.GetLeadRequest,
        context: grpc.aio.ServicerContext[pb.GetLeadRequest, pb.GetLeadResponse],
    ) -> pb.GetLeadResponse:
        try:
            check_id("lead_id", request.lead_id)
        except InvalidRecord as exc:
            await _abort_invalid(context, exc)
        recorded = await self._store.get(request.lead_id)
        if recorded is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no lead {request.lead_id}")
        return _recorded_to_proto(recorded)


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("abort returned")  # it raises; this tells the type checker so


async def _abort_invalid(
    context: grpc.aio.ServicerContext[Any, Any], exc: InvalidRecord
) -> NoReturn:
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming the field, for clients that read it."""
    log.info("refused: %s", exc)
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=exc.field, description=exc.description
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc))
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


class _Money:
    """Reads amounts off the wire and remembers their currencies: a lead has one currency."""

    def __init__(self) -> None:
        self.currencies: set[str] = set()

    def read(self, field: str, money: money_pb2.Money) -> Decimal:
        units, nanos = money.units, money.nanos
        if abs(nanos) >= 1_000_000_000 or (units > 0 and nanos < 0) or (units < 0 and nanos > 0):
            raise InvalidRecord(field, "malformed google.type.Money: nanos out of range or sign")
        if money.currency_code:
            self.currencies.add(money.currency_code)
        return from_proto(money)

    def audit(self, field: str, audit: lead_pb2.PriceAudit) -> PriceAudit:
        self.read(f"{field}.amount", audit.amount)
        return PriceAudit.from_proto(audit)

    def currency(self) -> str:
        if len(self.currencies) > 1:
            raise InvalidRecord(
                "currency_code", f"one currency per lead, got {sorted(self.currencies)}"
            )
        return next(iter(self.currencies), DEFAULT_CURRENCY)


def _record_from_proto(request: pb.RecordLeadRequest) -> LeadRecord:
    if not request.HasField("lead"):
        raise InvalidRecord("lead", "required")
    if not request.HasField("source_event"):
        raise InvalidRecord("source_event", "required")
    money = _Money()
    lead = _lead_from_proto(request.lead)
    source = request.source_event
    source_event = SourceEvent(
        outcome=_outcome("source_event.outcome", source.outcome),
        reason=source.reason,
        purchase_price=money.read("source_event.purchase_price", source.purchase_price),
        price_paid=money.read("source_event.price_paid", source.price_paid),
        price_audit=money.audit("source_event.price_audit", source.price_audit),
        revenue=money.read("source_event.revenue", source.revenue),
        duration_ms=source.duration_ms,
    )
    recipients = tuple(
        _recipient_from_proto(f"recipient_events[{index}]", event, money)
        for index, event in enumerate(request.recipient_events)
    )
    return LeadRecord(
        lead=lead,
        source_event=source_event,
        recipient_events=recipients,
        currency=money.currency(),
    )


def _lead_from_proto(lead: lead_pb2.Lead) -> Lead:
    if not lead.HasField("submit_time"):
        raise InvalidRecord("lead.submit_time", "required")
    try:
        fields_json = lead.fields_json.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord("lead.fields_json", "not UTF-8") from None
    return Lead(
        id=lead.id,
        flow_id=lead.flow_id,
        source_id=lead.source_id,
        # Empty means no fields, as wire.LeadData reads it.
        fields_json=fields_json or "{}",
        submit_time=_time("lead.submit_time", lead.submit_time),
    )


def _recipient_from_proto(path: str, event: pb.RecipientEvent, money: _Money) -> RecipientEvent:
    return RecipientEvent(
        id=event.id,
        stage_index=event.stage_index,
        stage_name=event.stage_name,
        strategy=event.strategy,
        step_index=event.step_index,
        buyer_id=event.buyer_id,
        outcome=_outcome(f"{path}.outcome", event.outcome),
        reason=event.reason,
        sale_price=money.read(f"{path}.sale_price", event.sale_price),
        price_audit=money.audit(f"{path}.price_audit", event.price_audit),
        reference=event.reference,
        attempts=tuple(DeliveryAttempt.from_proto(attempt) for attempt in event.attempts),
        duration_ms=event.duration_ms,
    )


def _outcome(field: str, value: lead_pb2.Outcome.ValueType) -> str:
    name = _OUTCOME_NAMES.get(value)
    if name is None:
        raise InvalidRecord(field, "required")
    return name


def _time(field: str, timestamp: timestamp_pb2.Timestamp) -> datetime:
    try:
        return timestamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRecord(field, "out of range") from None


def _recorded_to_proto(recorded: RecordedLead) -> pb.GetLeadResponse:
    record = recorded.record
    currency = record.currency
    lead = lead_pb2.Lead(
        id=record.lead.id,
        flow_id=record.lead.flow_id,
        source_id=record.lead.source_id,
        fields_json=record.lead.fields_json.encode("utf-8"),
    )
    lead.submit_time.FromDatetime(record.lead.submit_time)
    source = record.source_event
    response = pb.GetLeadResponse(
        lead=lead,
        source_event=pb.SourceEvent(
            outcome=outcome_to_proto(source.outcome),
            reason=source.reason,
            purchase_price=to_proto(source.purchase_price, currency),
            price_paid=to_proto(source.price_paid, currency),
            price_audit=_audit_to_proto(source.price_audit, currency),
            revenue=to_proto(source.revenue, currency),
            duration_ms=source.duration_ms,
        ),
        recipient_events=[
            _recipient_to_proto(event, currency) for event in record.recipient_events
        ],
    )
    response.record_time.FromDatetime(recorded.record_time)
    return response


def _recipient_to_proto(event: RecipientEvent, currency: str) -> pb.RecipientEvent:
    return pb.RecipientEvent(
        id=event.id,
        stage_index=event.stage_index,
        stage_name=event.stage_name,
        strategy=event.strategy,
        step_index=event.step_index,
        buyer_id=event.buyer_id,
        outcome=outcome_to_proto(event.outcome),
        reason=event.reason,
        sale_price=to_proto(event.sale_price, currency),
        price_audit=_audit_to_proto(event.price_audit, currency),
        reference=event.reference,
        attempts=[attempt.to_proto() for attempt in event.attempts],
        duration_ms=event.duration_ms,
    )


def _audit_to_proto(audit: PriceAudit, currency: str) -> lead_pb2.PriceAudit:
    message = audit.to_proto()
    message.amount.currency_code = currency
    return message
