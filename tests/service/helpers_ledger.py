"""Builders and servers shared by the ledger's test modules: domain records (T0, lead_record,
sold_lead, queued_lead, completion, feedback) for the store, and a running ledger with a full
RecordLeadRequest for the RPCs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from leadflow.common.v1 import lead_pb2
from leadflow.kit import ServiceSettings, stop_server
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from leadflow.money import ZERO
from leadflow.wire import PriceAudit, fields_to_proto, to_proto
from ledger_service.config import Settings
from ledger_service.feedback import RETURN, FeedbackRequest, ReturnPolicy
from ledger_service.ledger import DeliveryOutcome, Lead, LeadRecord, RecipientEvent, SourceEvent
from ledger_service.server import create_server
from ledger_service.store import LedgerStore

if TYPE_CHECKING:
    from conftest import Database


T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)

POLICY = ReturnPolicy(
    window_days=30,
    max_percent=Decimal(100),
    auto_approve=True,
    reasons=("Bad phone", "Duplicate"),
    return_to_source=True,
    time_zone="UTC",
)


def recipient(
    event_id: str, buyer_id: str, outcome: str = "success", price: str = "20.00"
) -> RecipientEvent:
    return RecipientEvent(
        id=event_id,
        stage_index=0,
        stage_name="stage",
        strategy="priority",
        step_index=0,
        buyer_id=buyer_id,
        outcome=outcome,
        reason="" if outcome == "success" else "no",
        sale_price=Decimal(price),
        price_audit=PriceAudit(layer="buyer_rules", amount=Decimal(price)),
        reference="",
        attempts=(),
        duration_ms=5,
    )


def lead_record(
    lead_id: str,
    *,
    flow_id: str = "auto",
    source_id: str = "vendor",
    outcome: str = "success",
    price: str = "10.00",
    recipients: Sequence[RecipientEvent] = (),
    at: datetime = T0,
) -> LeadRecord:
    """A consistent record: price paid and revenue follow the outcomes (RecordLead's rules)."""
    purchase = Decimal(price)
    revenue = sum((r.sale_price for r in recipients if r.outcome == "success"), ZERO)
    return LeadRecord(
        lead=Lead(
            id=lead_id, flow_id=flow_id, source_id=source_id, fields_json="{}", submit_time=at
        ),
        source_event=SourceEvent(
            outcome=outcome,
            reason="" if outcome == "success" else "rejected",
            purchase_price=purchase,
            price_paid=purchase if outcome == "success" else ZERO,
            price_audit=PriceAudit(layer="flow_rules", amount=purchase),
            revenue=revenue,
            duration_ms=10,
        ),
        recipient_events=tuple(recipients),
    )


def sold_lead(
    lead_id: str,
    buyer_id: str = "acme",
    price: str = "10.00",
    sale: str = "20.00",
    at: datetime = T0,
    source_id: str = "vendor",
) -> LeadRecord:
    return lead_record(
        lead_id,
        price=price,
        at=at,
        source_id=source_id,
        recipients=[recipient(f"{lead_id}-1", buyer_id, "success", sale)],
    )


def feedback(
    feedback_id: str,
    lead_id: str,
    buyer_id: str = "acme",
    kind: str = RETURN,
    reason: str = "Bad phone",
    amount: str | None = None,
    policy: ReturnPolicy | None = POLICY,
) -> FeedbackRequest:
    return FeedbackRequest(
        feedback_id=feedback_id,
        buyer_id=buyer_id,
        type=kind,
        lead_id=lead_id,
        reason=reason,
        amount=None if amount is None else Decimal(amount),
        policy=policy,
    )


def queued_lead(lead_id: str = "L1", quoted: str = "15.00") -> LeadRecord:
    return lead_record(lead_id, recipients=[recipient(f"{lead_id}-1", "batcher", "queued", quoted)])


def completion(
    event_id: str = "L1-1",
    outcome: str = "success",
    price: str | None = "16.00",
    at: datetime = T0 + timedelta(days=2),
) -> DeliveryOutcome:
    return DeliveryOutcome(
        recipient_event_id=event_id,
        outcome=outcome,
        reason="",
        sale_price=None if price is None else Decimal(price),
        attempts=(),
        complete_time=at,
        batch_id="B1",
    )


SUBMIT_TIME = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)

# Exact decimal text that a float round trip would lose: the ledger keeps the JSON as sent.
FIELDS = {
    "email": {"kind": "email", "raw": "a@example.com", "normal": "a@example.com", "valid": True},
    "price": {"kind": "number", "raw": "12.50", "normal": "12.50", "valid": True, "number": 12.5},
    "tags": ["a", "b"],
    "extra": {"note": {"kind": "string", "raw": "", "normal": "", "valid": False}},
}


def ledger_settings(database: Database) -> Settings:
    service = ServiceSettings(
        config_path="",
        data_dir="",
        database_url=database.url,
        host="127.0.0.1",
        port=0,
        metrics_port=None,
    )
    return Settings(service=service, schema=database.schema)


@asynccontextmanager
async def running_ledger(database: Database) -> AsyncIterator[Any]:
    """A real ledger server on a free port and a stub talking to it over a real channel."""
    store = await LedgerStore.open(database.url, database.schema)
    try:
        server, port, health = await create_server(ledger_settings(database), store)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield pb_grpc.LedgerServiceStub(channel)
        finally:
            await stop_server(server, health, grace=1)
    finally:
        await store.close()


def money_proto(amount: str, currency: str = "USD") -> Any:
    return to_proto(Decimal(amount), currency)


def _audit(layer: str, amount: str, **extra: Any) -> lead_pb2.PriceAudit:
    return lead_pb2.PriceAudit(layer=layer, amount=money_proto(amount), **extra)


def _recipient(event_id: str, outcome: int, sale_price: str, **extra: Any) -> pb.RecipientEvent:
    return pb.RecipientEvent(
        id=event_id,
        outcome=outcome,
        sale_price=money_proto(sale_price),
        price_audit=_audit("buyer_rules", sale_price, rule_index=0),
        **extra,
    )


def record_request(lead_id: str = "01JLEAD0000000000000000001") -> pb.RecordLeadRequest:
    """A lead with every field of every event set, three buyer steps in a non-sorted id order."""
    lead = lead_pb2.Lead(id=lead_id, flow_id="solar", source_id="acme")
    fields_to_proto(FIELDS, lead.fields)
    lead.submit_time.FromDatetime(SUBMIT_TIME)
    return pb.RecordLeadRequest(
        lead=lead,
        source_event=pb.SourceEvent(
            outcome=lead_pb2.OUTCOME_SUCCESS,
            purchase_price=money_proto("12.50"),
            price_paid=money_proto("12.50"),
            price_audit=_audit(
                "source_service",
                "12.50",
                rule_index=-1,
                service_status=503,
                service_latency_ms=250,
                service_error="upstream unavailable",
                fallback_used=True,
            ),
            revenue=money_proto("10.36"),
            duration_ms=1234,
        ),
        recipient_events=[
            _recipient(
                f"{lead_id}-c",
                lead_pb2.OUTCOME_SUCCESS,
                "7.25",
                stage_index=0,
                stage_name="exclusive",
                strategy="priority",
                step_index=1,
                buyer_id="buyer_one",
                reference="ref-981",
                attempts=[
                    lead_pb2.DeliveryAttempt(
                        number=1,
                        request="POST /leads\n\nemail=a%40example.com&key=****",
                        status_code=0,
                        duration_ms=5000,
                        error="timed out",
                    ),
                    lead_pb2.DeliveryAttempt(
                        number=2,
                        request="POST /leads\n\nemail=a%40example.com&key=****",
                        response='HTTP 200\n\n{"accepted": true, "id": "ref-981"}',
                        status_code=200,
                        duration_ms=180,
                    ),
                ],
                duration_ms=5190,
            ),
            _recipient(
                f"{lead_id}-a",
                lead_pb2.OUTCOME_FAILURE,
                "5.00",
                stage_index=1,
                stage_name="shared",
                strategy="round_robin",
                step_index=0,
                buyer_id="buyer_two",
                reason="Duplicate lead",
                attempts=[
                    lead_pb2.DeliveryAttempt(
                        number=1,
                        request="POST /",
                        response="HTTP 200\n\nduplicate",
                        status_code=200,
                    )
                ],
                duration_ms=90,
            ),
            _recipient(
                f"{lead_id}-b",
                lead_pb2.OUTCOME_SUCCESS,
                "3.11",
                stage_index=1,
                stage_name="shared",
                strategy="round_robin",
                step_index=2,
                buyer_id="buyer_three",
                duration_ms=75,
            ),
        ],
    )


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of a rich error status."""
    fields: list[str] = []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields += [violation.field for violation in bad_request.field_violations]
    return fields
