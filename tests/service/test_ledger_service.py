"""ledger_service through its real server and a real channel, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from leadflow.common.v1 import lead_pb2
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.wire import fields_from_proto
from tests.service.helpers_ledger import (
    FIELDS,
    SUBMIT_TIME,
    bad_request_fields,
    money_proto,
    record_request,
    running_ledger,
)

if TYPE_CHECKING:
    from conftest import Database


@pytest.fixture
async def ledger(database: Database) -> AsyncIterator[Any]:
    async with running_ledger(database) as stub:
        yield stub


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
    assert bad_request_fields(raised.value) == ["lead.id"]


async def test_record_without_source_event_is_invalid_argument(ledger: Any) -> None:
    request = record_request()
    request.ClearField("source_event")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.RecordLead(request, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == ["source_event"]


async def test_revenue_is_the_ledgers_sum_of_sales_whatever_the_sender_says(ledger: Any) -> None:
    request = record_request()
    request.source_event.revenue.CopyFrom(money_proto("99.99"))

    await ledger.RecordLead(request, timeout=10)
    got = await ledger.GetLead(pb.GetLeadRequest(lead_id=request.lead.id), timeout=10)

    assert (got.source_event.revenue.units, got.source_event.revenue.nanos) == (10, 360_000_000)


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
    request.source_event.price_paid.CopyFrom(money_proto("0"))
    request.source_event.revenue.CopyFrom(money_proto("0"))

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
