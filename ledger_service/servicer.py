"""LedgerService over gRPC: proto <-> domain translation and status codes only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
import orjson
from google.protobuf import timestamp_pb2
from google.type import money_pb2

from leadflow import kit, reports
from leadflow.common.v1 import lead_pb2
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from leadflow.money import from_micros
from leadflow.wire import (
    OUTCOMES,
    DeliveryAttempt,
    PriceAudit,
    fields_to_proto,
    from_proto,
    lead_fields,
    outcome_to_proto,
    to_proto,
)
from ledger_service import journal, metrics
from ledger_service.feedback import (
    CONVERSION,
    HUNDRED,
    RETURN,
    FeedbackRecord,
    FeedbackRequest,
    ReturnPolicy,
)
from ledger_service.journal import Posting
from ledger_service.ledger import (
    DEFAULT_CURRENCY,
    DeliveryOutcome,
    EventIdTaken,
    InvalidRecord,
    Lead,
    LeadRecord,
    RecipientEvent,
    RecordedLead,
    SourceEvent,
    StoredOutcome,
    check_id,
    check_outcome,
    check_record,
    check_text,
    expected_revenue,
)
from ledger_service.store import LedgerStore, Verdict

log = logging.getLogger(__name__)

# Strict, unlike wire.outcome_from_proto: an unset outcome is a caller's bug, not an "error".
_OUTCOME_NAMES = {outcome_to_proto(name): name for name in OUTCOMES}
_FEEDBACK_TYPES = {pb.FEEDBACK_TYPE_RETURN: RETURN, pb.FEEDBACK_TYPE_CONVERSION: CONVERSION}
_FEEDBACK_TYPE_PROTO = {name: value for value, name in _FEEDBACK_TYPES.items()}
_STATUS_PROTO = {
    "approved": pb.FEEDBACK_STATUS_APPROVED,
    "pending": pb.FEEDBACK_STATUS_PENDING,
    "denied": pb.FEEDBACK_STATUS_DENIED,
}
# Buyers' text is kept, bounded, as the gateway keeps buyers' reasons.
MAX_REASON = 500
# Report currency: one account, one currency (the leads' own currency is on every posting).
REPORT_CURRENCY = DEFAULT_CURRENCY
# RecordLeads posts its records in one transaction: bounded, so that one call holds SQLite's
# write lock (or PostgreSQL's row locks) briefly, and a conflict's one-at-a-time retry stays short.
MAX_RECORDS = 500
DEFAULT_UNKNOWN_PAGE = 50
MAX_UNKNOWN_PAGE = 500


# Every RPC answers domain errors by leadflow.kit's mapping; a recipient event id recorded for
# another lead is the ledger's own conflict.
_status_errors = kit.grpc_errors({EventIdTaken: grpc.StatusCode.ALREADY_EXISTS})


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    """The ledger's RPCs over a LedgerStore."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    @_status_errors
    async def RecordLead(
        self,
        request: pb.RecordLeadRequest,
        context: grpc.aio.ServicerContext[pb.RecordLeadRequest, pb.RecordLeadResponse],
    ) -> pb.RecordLeadResponse:
        record = _record_from_proto(request)
        check_record(record)
        created = await self._store.record(record)
        if created:
            _observe_record(record)
        return pb.RecordLeadResponse(created=created)

    @_status_errors
    async def RecordLeads(
        self,
        request: pb.RecordLeadsRequest,
        context: grpc.aio.ServicerContext[pb.RecordLeadsRequest, pb.RecordLeadsResponse],
    ) -> pb.RecordLeadsResponse:
        if len(request.records) > MAX_RECORDS:
            raise InvalidRecord(
                "records", f"at most {MAX_RECORDS} per call, got {len(request.records)}"
            )
        # An invalid record is answered on its own; the batch's other records are still posted.
        results = [pb.RecordResult(lead_id=item.lead.id) for item in request.records]
        valid: list[tuple[pb.RecordResult, LeadRecord]] = []
        for result, item in zip(results, request.records, strict=True):
            try:
                record = _record_from_proto(item)
                check_record(record)
            except InvalidRecord as exc:
                log.info("refused lead %r: %s", item.lead.id, exc, extra={"lead_id": item.lead.id})
                result.status = pb.RECORD_STATUS_REJECTED
                result.error = str(exc)
                continue
            valid.append((result, record))
        recorded = await self._store.record_many([record for _, record in valid])
        for (result, record), outcome in zip(valid, recorded, strict=True):
            if outcome.verdict is Verdict.CREATED:
                result.status = pb.RECORD_STATUS_CREATED
                _observe_record(record)
            elif outcome.verdict is Verdict.ALREADY_RECORDED:
                result.status = pb.RECORD_STATUS_ALREADY_RECORDED
            else:
                result.status = pb.RECORD_STATUS_REJECTED
                result.error = str(EventIdTaken(list(outcome.taken)))
        return pb.RecordLeadsResponse(results=results)

    @_status_errors
    async def GetLead(
        self,
        request: pb.GetLeadRequest,
        context: grpc.aio.ServicerContext[pb.GetLeadRequest, pb.GetLeadResponse],
    ) -> pb.GetLeadResponse:
        check_id("lead_id", request.lead_id)
        recorded = await self._store.get(request.lead_id)
        if recorded is None:
            raise LookupError(f"no lead {request.lead_id}")
        response = _recorded_to_proto(recorded)
        currency = recorded.record.currency
        response.postings.extend(
            _posting_to_proto(p) for p in await self._store.postings(request.lead_id)
        )
        response.feedback.extend(
            _feedback_to_proto(f, currency) for f in await self._store.feedback(request.lead_id)
        )
        response.delivery_outcomes.extend(
            _outcome_to_proto(o, currency)
            for o in await self._store.delivery_outcomes(request.lead_id)
        )
        return response

    @_status_errors
    async def RecordDeliveryOutcome(
        self,
        request: pb.RecordDeliveryOutcomeRequest,
        context: grpc.aio.ServicerContext[
            pb.RecordDeliveryOutcomeRequest, pb.RecordDeliveryOutcomeResponse
        ],
    ) -> pb.RecordDeliveryOutcomeResponse:
        outcome = _outcome_from_proto(request)
        check_outcome(outcome)
        completed, posting = await self._store.record_delivery_outcome(outcome)
        if posting is not None:
            metrics.observe_postings([posting])
        return pb.RecordDeliveryOutcomeResponse(
            created=completed.created,
            outcome=outcome_to_proto(completed.outcome),
            lead_id=completed.lead_id,
            stage_index=completed.stage_index,
            step_index=completed.step_index,
            buyer_id=completed.buyer_id,
        )

    @_status_errors
    async def ListUnknownOffers(
        self,
        request: pb.ListUnknownOffersRequest,
        context: grpc.aio.ServicerContext[
            pb.ListUnknownOffersRequest, pb.ListUnknownOffersResponse
        ],
    ) -> pb.ListUnknownOffersResponse:
        if request.limit < 0 or request.limit > MAX_UNKNOWN_PAGE:
            raise InvalidRecord("limit", f"must be between 1 and {MAX_UNKNOWN_PAGE}")
        offers = await self._store.unknown_offers(
            request.limit or DEFAULT_UNKNOWN_PAGE, request.before_lead_id
        )
        response = pb.ListUnknownOffersResponse()
        for offer in offers:
            item = response.offers.add(
                recipient_event_id=offer.recipient_event_id,
                lead_id=offer.lead_id,
                flow_id=offer.flow_id,
                source_id=offer.source_id,
                buyer_id=offer.buyer_id,
                stage_index=offer.stage_index,
                step_index=offer.step_index,
                sale_price=to_proto(offer.sale_price, REPORT_CURRENCY),
                reason=offer.reason,
            )
            item.submit_time.FromDatetime(offer.submit_time)
        return response

    @_status_errors
    async def GetBuyerStats(
        self,
        request: pb.GetBuyerStatsRequest,
        context: grpc.aio.ServicerContext[pb.GetBuyerStatsRequest, pb.GetBuyerStatsResponse],
    ) -> pb.GetBuyerStatsResponse:
        start, end = _window(request.start_time, request.end_time, request)
        for index, buyer_id in enumerate(request.buyer_ids):
            check_id(f"buyer_ids[{index}]", buyer_id)
        stats = await self._store.buyer_stats(list(request.buyer_ids), start, end)
        return pb.GetBuyerStatsResponse(
            stats=[
                pb.BuyerStats(
                    buyer_id=buyer_id,
                    offered=values.get("offered", 0),
                    sold=values.get("sold", 0),
                    returned=values.get("returned", 0),
                    converted=values.get("converted", 0),
                    revenue=to_proto(from_micros(values.get("revenue_micros", 0)), REPORT_CURRENCY),
                )
                for buyer_id, values in stats.items()
            ]
        )

    @_status_errors
    async def SubmitFeedback(
        self,
        request: pb.SubmitFeedbackRequest,
        context: grpc.aio.ServicerContext[pb.SubmitFeedbackRequest, pb.SubmitFeedbackResponse],
    ) -> pb.SubmitFeedbackResponse:
        feedback = _feedback_from_proto(request)
        record, created, postings = await self._store.submit_feedback(feedback, datetime.now(UTC))
        metrics.observe_postings(postings)
        return pb.SubmitFeedbackResponse(
            feedback=_feedback_to_proto(record, REPORT_CURRENCY), created=created
        )

    @_status_errors
    async def DecideReturn(
        self,
        request: pb.DecideReturnRequest,
        context: grpc.aio.ServicerContext[pb.DecideReturnRequest, pb.DecideReturnResponse],
    ) -> pb.DecideReturnResponse:
        check_id("feedback_id", request.feedback_id)
        record, changed, postings = await self._store.decide_return(
            request.feedback_id, request.approve, datetime.now(UTC)
        )
        metrics.observe_postings(postings)
        return pb.DecideReturnResponse(
            feedback=_feedback_to_proto(record, REPORT_CURRENCY), changed=changed
        )

    @_status_errors
    async def GetVendorReport(
        self,
        request: pb.GetVendorReportRequest,
        context: grpc.aio.ServicerContext[pb.GetVendorReportRequest, pb.GetVendorReportResponse],
    ) -> pb.GetVendorReportResponse:
        start, end = _window(request.start_time, request.end_time)
        lines = await self._store.vendor_report(start, end)
        return reports.vendor_response(lines, REPORT_CURRENCY)

    @_status_errors
    async def GetBuyerReport(
        self,
        request: pb.GetBuyerReportRequest,
        context: grpc.aio.ServicerContext[pb.GetBuyerReportRequest, pb.GetBuyerReportResponse],
    ) -> pb.GetBuyerReportResponse:
        start, end = _window(request.start_time, request.end_time)
        lines = await self._store.buyer_report(start, end)
        return reports.buyer_response(lines, REPORT_CURRENCY)

    @_status_errors
    async def GetMarginReport(
        self,
        request: pb.GetMarginReportRequest,
        context: grpc.aio.ServicerContext[pb.GetMarginReportRequest, pb.GetMarginReportResponse],
    ) -> pb.GetMarginReportResponse:
        start, end = _window(request.start_time, request.end_time)
        try:
            groups = reports.groups_from_proto(request.group_by)
        except reports.ReportError as exc:
            raise InvalidRecord("group_by", str(exc)) from None
        totals = await self._store.margin_report(start, end, groups)
        return reports.margin_response(totals, REPORT_CURRENCY)


def _observe_record(record: LeadRecord) -> None:
    """Count the money of a lead this call posted (never a replay's)."""
    metrics.observe_postings(
        p for p in (journal.purchase(record), *journal.realtime_sales(record)) if p
    )


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
    recipients = tuple(
        _recipient_from_proto(f"recipient_events[{index}]", event, money)
        for index, event in enumerate(request.recipient_events)
    )
    source_event = SourceEvent(
        outcome=_outcome("source_event.outcome", source.outcome),
        reason=source.reason,
        purchase_price=money.read("source_event.purchase_price", source.purchase_price),
        price_paid=money.read("source_event.price_paid", source.price_paid),
        price_audit=money.audit("source_event.price_audit", source.price_audit),
        # The ledger's to compute (one home): what the sender put here is not read.
        revenue=expected_revenue(recipients),
        duration_ms=source.duration_ms,
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
        # Stored as the JSON the lead's fields read as (reports and GET /leads/{id} show it).
        fields_json = orjson.dumps(lead_fields(lead), default=str).decode()
    except (TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise InvalidRecord("lead.fields", str(exc)) from None
    return Lead(
        id=lead.id,
        flow_id=lead.flow_id,
        source_id=lead.source_id,
        fields_json=fields_json,
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
        id=record.lead.id, flow_id=record.lead.flow_id, source_id=record.lead.source_id
    )
    lead.submit_time.FromDatetime(record.lead.submit_time)
    fields_to_proto(orjson.loads(record.lead.fields_json), lead.fields)
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


def _window(
    start: timestamp_pb2.Timestamp,
    end: timestamp_pb2.Timestamp,
    request: pb.GetBuyerStatsRequest | None = None,
) -> tuple[datetime, datetime]:
    """[start_time, end_time), both required and in order (stats default the end to now)."""
    if not start.seconds and not start.nanos:
        raise InvalidRecord("start_time", "required")
    begin = _time("start_time", start)
    if request is not None and not request.HasField("end_time"):
        finish = datetime.now(UTC)
    elif not end.seconds and not end.nanos:
        raise InvalidRecord("end_time", "required")
    else:
        finish = _time("end_time", end)
    if finish <= begin:
        raise InvalidRecord("end_time", "must be after start_time")
    return begin, finish


def _outcome_from_proto(request: pb.RecordDeliveryOutcomeRequest) -> DeliveryOutcome:
    money = _Money()
    complete_time = (
        _time("complete_time", request.complete_time)
        if request.HasField("complete_time")
        else datetime.now(UTC)
    )
    return DeliveryOutcome(
        recipient_event_id=request.recipient_event_id,
        outcome=_outcome("outcome", request.outcome),
        reason=request.reason,
        sale_price=(
            money.read("sale_price", request.sale_price) if request.HasField("sale_price") else None
        ),
        attempts=tuple(DeliveryAttempt.from_proto(attempt) for attempt in request.attempts),
        complete_time=complete_time,
        batch_id=request.batch_id,
    )


def _feedback_from_proto(request: pb.SubmitFeedbackRequest) -> FeedbackRequest:
    check_id("feedback_id", request.feedback_id)
    check_id("buyer_id", request.buyer_id)
    if not request.lead_id and not request.recipient_event_id:
        raise InvalidRecord("lead_id", "lead_id or recipient_event_id is required")
    if request.lead_id:
        check_id("lead_id", request.lead_id)
    if request.recipient_event_id:
        check_id("recipient_event_id", request.recipient_event_id)
    kind = _FEEDBACK_TYPES.get(request.type)
    if kind is None:
        raise InvalidRecord("type", "must be FEEDBACK_TYPE_RETURN or FEEDBACK_TYPE_CONVERSION")
    check_text("reason", request.reason)
    if len(request.reason) > MAX_REASON:
        raise InvalidRecord("reason", f"at most {MAX_REASON} characters")
    amount = None
    if request.HasField("amount"):
        amount = _Money().read("amount", request.amount)
        if amount < 0:
            raise InvalidRecord("amount", "must not be negative")
    policy = None
    if request.HasField("return_policy"):
        policy = _policy_from_proto(request.return_policy)
    return FeedbackRequest(
        feedback_id=request.feedback_id,
        buyer_id=request.buyer_id,
        type=kind,
        lead_id=request.lead_id,
        recipient_event_id=request.recipient_event_id,
        reason=request.reason,
        amount=amount,
        policy=policy,
    )


def _policy_from_proto(policy: pb.ReturnPolicy) -> ReturnPolicy:
    try:
        max_percent = Decimal(policy.max_percent or "100")
    except InvalidOperation:
        raise InvalidRecord("return_policy.max_percent", "not a decimal number") from None
    if not max_percent.is_finite() or not 0 <= max_percent <= HUNDRED:
        raise InvalidRecord("return_policy.max_percent", "must be 0 to 100")
    zone = policy.time_zone or "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: name too long
        raise InvalidRecord("return_policy.time_zone", f"unknown time zone {zone!r}") from None
    for index, reason in enumerate(policy.reasons):
        check_text(f"return_policy.reasons[{index}]", reason)
    return ReturnPolicy(
        window_days=policy.window_days,
        max_percent=max_percent,
        auto_approve=policy.auto_approve,
        reasons=tuple(policy.reasons),
        return_to_source=policy.return_to_source,
        time_zone=zone,
    )


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _posting_to_proto(posting: Posting) -> pb.Posting:
    return pb.Posting(
        id=posting.id,
        kind=posting.kind,
        debit_account=posting.debit_account,
        credit_account=posting.credit_account,
        amount=to_proto(from_micros(posting.amount_micros), posting.lead.currency),
        effective_time=_timestamp(posting.effective_time),
        post_time=_timestamp(posting.post_time),
        buyer_id=posting.buyer_id,
        recipient_event_id=posting.recipient_event_id,
        feedback_id=posting.feedback_id,
    )


def _feedback_to_proto(record: FeedbackRecord, currency: str) -> pb.Feedback:
    return pb.Feedback(
        id=record.id,
        lead_id=record.lead_id,
        recipient_event_id=record.recipient_event_id,
        buyer_id=record.buyer_id,
        type=_FEEDBACK_TYPE_PROTO[record.type],
        reason=record.reason,
        amount=to_proto(record.amount, currency),
        outcome=outcome_to_proto(record.outcome),
        outcome_reason=record.outcome_reason,
        status=_STATUS_PROTO[record.status],
        create_time=_timestamp(record.create_time),
        decide_time=_timestamp(record.decide_time),
        sale_time=_timestamp(record.sale_time),
    )


def _outcome_to_proto(stored: StoredOutcome, currency: str) -> pb.DeliveryOutcome:
    outcome = stored.outcome
    return pb.DeliveryOutcome(
        recipient_event_id=outcome.recipient_event_id,
        outcome=outcome_to_proto(outcome.outcome),
        reason=outcome.reason,
        sale_price=to_proto(stored.sale_price, currency),
        attempts=[attempt.to_proto() for attempt in outcome.attempts],
        complete_time=_timestamp(outcome.complete_time),
        batch_id=outcome.batch_id,
        record_time=_timestamp(stored.record_time),
    )
