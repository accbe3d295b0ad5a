"""ledger_service through its real server and a real channel, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from leadflow.common.v1 import lead_pb2
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from leadflow.wire import fields_from_proto, fields_to_proto, to_proto
from ledger_service.config import Settings
from ledger_service.server import Deps, create_server
from ledger_service.store import LedgerStore

if TYPE_CHECKING:
    from conftest import Database

SUBMIT_TIME = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
# Exact decimal text that a float round trip would lose: the ledger keeps the JSON as sent.
FIELDS = {
    "email": {"kind": "email", "raw": "a@example.com", "normal": "a@example.com", "valid": True},
    "price": {"kind": "number", "raw": "12.50", "normal": "12.50", "valid": True, "number": 12.5},
    "tags": ["a", "b"],
    "extra": {"note": {"kind": "string", "raw": "", "normal": "", "valid": False}},
}


@asynccontextmanager
async def running_ledger(database: Database) -> AsyncIterator[Any]:
    """A real ledger server on a free port and a stub talking to it over a real channel."""
    store = await LedgerStore.open(database.url, database.schema)
    try:
        running = await create_server(Settings(host="127.0.0.1", grpc_port=0), Deps(store))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                yield pb_grpc.LedgerServiceStub(channel)
        finally:
            await running.stop(1)
    finally:
        await store.close()


@pytest.fixture
async def ledger(database: Database) -> AsyncIterator[Any]:
    async with running_ledger(database) as stub:
        yield stub


def _money(amount: str, currency: str = "USD") -> Any:
    return to_proto(Decimal(amount), currency)


def _audit(layer: str, amount: str, **extra: Any) -> lead_pb2.PriceAudit:
    return lead_pb2.PriceAudit(layer=layer, amount=_money(amount), **extra)


def _recipient(event_id: str, outcome: int, sale_price: str, **extra: Any) -> pb.RecipientEvent:
    return pb.RecipientEvent(
        id=event_id,
        outcome=outcome,
        sale_price=_money(sale_price),
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
            purchase_price=_money("12.50"),
            price_paid=_money("12.50"),
            price_audit=_audit(
                "source_service",
                "12.50",
                rule_index=-1,
                service_status=503,
                service_latency_ms=250,
                service_error="upstream unavailable",
                fallback_used=True,
            ),
            revenue=_money("10.36"),
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


def _bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of a rich error status."""
    fields: list[str] = []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields += [violation.field for violation in bad_request.field_violations]
    return fields


async def test_recorded_lead_round_trips_every_field(ledger: Any) -> None:
    request = record_request()

    recorded = await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert recorded.created
    assert got.lead == request.lead
    assert fields_from_proto(got.lead.fields) == FIELDS
    assert got.lead.submit_time.ToDatetime(tzinfo=UTC) == SUBMIT_TIME
    assert got.source_event == request.source_event
    assert list(got.recipient_events) == list(request.recipient_events)
    assert got.source_event.revenue.units == 10 and got.source_event.revenue.nanos == 360_000_000
    record_time = got.record_time.ToDatetime(tzinfo=UTC)
    assert abs((datetime.now(UTC) - record_time).total_seconds()) < 60


async def test_recipient_events_come_back_in_recorded_order(ledger: Any) -> None:
    request = record_request()

    await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert [event.id for event in got.recipient_events] == [
        f"{request.lead.id}-c",
        f"{request.lead.id}-a",
        f"{request.lead.id}-b",
    ]


async def test_replayed_record_returns_created_false_and_adds_no_events(ledger: Any) -> None:
    request = record_request()
    await ledger.RecordLead(request, timeout=10)

    replay = await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert not replay.created
    assert len(got.recipient_events) == 3
    assert got.source_event == request.source_event


async def test_replay_with_different_content_keeps_the_first_record(ledger: Any) -> None:
    first = record_request()
    await ledger.RecordLead(first, timeout=10)
    second = record_request()
    del second.recipient_events[1:]
    second.source_event.revenue.CopyFrom(_money("7.25"))

    replay = await ledger.RecordLead(second, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=first.lead.id), timeout=10)

    assert not replay.created
    assert list(got.recipient_events) == list(first.recipient_events)


async def test_concurrent_identical_records_create_exactly_one(ledger: Any) -> None:
    request = record_request()

    results = await asyncio.gather(*(ledger.RecordLead(request, timeout=30) for _ in range(10)))
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert sorted(result.created for result in results) == [False] * 9 + [True]
    assert len(got.recipient_events) == 3


async def test_concurrent_different_leads_are_all_recorded(ledger: Any) -> None:
    requests = [record_request(f"01JLEAD00000000000000000{n:02d}") for n in range(10)]

    results = await asyncio.gather(*(ledger.RecordLead(r, timeout=30) for r in requests))

    assert all(result.created for result in results)
    for request in requests:
        got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)
        assert len(got.recipient_events) == 3


async def test_unknown_lead_is_not_found(ledger: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.GetLead(pb.GetLeadRequest(lead_id="01JNOSUCHLEAD"), timeout=10)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_with_empty_lead_id_is_invalid_argument(ledger: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.GetLead(pb.GetLeadRequest(lead_id=""), timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_record_with_empty_lead_id_is_invalid_argument_naming_the_field(ledger: Any) -> None:
    request = record_request()
    request.lead.id = ""

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.RecordLead(request, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(raised.value) == ["lead.id"]


async def test_record_without_source_event_is_invalid_argument(ledger: Any) -> None:
    request = record_request()
    request.ClearField("source_event")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.RecordLead(request, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(raised.value) == ["source_event"]


async def test_revenue_disagreeing_with_sales_is_refused_and_nothing_recorded(ledger: Any) -> None:
    request = record_request()
    request.source_event.revenue.CopyFrom(_money("10.35"))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.RecordLead(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(refused.value) == ["source_event.revenue"]
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_recipient_event_id_of_another_lead_is_already_exists(ledger: Any) -> None:
    first = record_request("01JLEAD0000000000000000001")
    await ledger.RecordLead(first, timeout=10)
    second = record_request("01JLEAD0000000000000000002")
    second.recipient_events[2].id = first.recipient_events[0].id

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.RecordLead(second, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ledger.GetLead(pb.GetLeadRequest(lead_id=second.lead.id), timeout=10)

    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lead_without_recipients_records_its_source_event(ledger: Any) -> None:
    request = record_request()
    del request.recipient_events[:]
    request.source_event.outcome = lead_pb2.OUTCOME_FAILURE
    request.source_event.reason = "Outside hours of operation"
    request.source_event.price_paid.CopyFrom(_money("0"))
    request.source_event.revenue.CopyFrom(_money("0"))

    recorded = await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert recorded.created
    assert got.source_event == request.source_event
    assert len(got.recipient_events) == 0


async def test_lead_currency_is_kept(ledger: Any) -> None:
    request = record_request()
    for money in (
        request.source_event.purchase_price,
        request.source_event.price_paid,
        request.source_event.revenue,
        request.source_event.price_audit.amount,
    ):
        money.currency_code = "EUR"
    for event in request.recipient_events:
        event.sale_price.currency_code = "EUR"
        event.price_audit.amount.currency_code = "EUR"

    await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert got.source_event == request.source_event
    assert list(got.recipient_events) == list(request.recipient_events)


async def test_attempt_text_with_control_characters_round_trips(ledger: Any) -> None:
    request = record_request()
    attempt = request.recipient_events[0].attempts[1]
    attempt.response = "HTTP 200\n\n\x00\x01binary\u2028junk \U0001f600"

    await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert got.recipient_events[0].attempts[1].response == attempt.response


async def test_recorded_lead_survives_a_server_restart(database: Database) -> None:
    request = record_request()
    async with running_ledger(database) as first:
        await first.RecordLead(request, timeout=10)

    async with running_ledger(database) as second:
        got = await second.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)
        replay = await second.RecordLead(request, timeout=10)

    assert got.lead == request.lead
    assert got.source_event == request.source_event
    assert list(got.recipient_events) == list(request.recipient_events)
    assert not replay.created
