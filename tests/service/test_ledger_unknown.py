"""Offers whose fate is unknown (SPEC 8.1) in the ledger, through its real server (SQLite and
PostgreSQL): recorded as such, listed until resolved, resolved once by a new row, counted in the
buyer report's `unknown` column and never as revenue until resolved as a sale."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from leadflow.common.v1 import lead_pb2
from leadflow.kit import ServiceSettings, stop_server
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from leadflow.wire import from_proto
from ledger_service.config import Settings
from ledger_service.server import create_server
from ledger_service.store import LedgerStore
from tests.service.helpers_ledger import T0, lead_record, queued_lead, recipient, sold_lead

if TYPE_CHECKING:
    from conftest import Database


@pytest.fixture
async def ledger(database: Database) -> AsyncIterator[Any]:
    store = await LedgerStore.open(database.url, database.schema)
    await store.record(sold_lead("S1", buyer_id="acme"))
    await store.record(queued_lead("Q1"))
    # Two leads whose offer to Acme was cut off; U2's second stage never ran (exclusive).
    await store.record(lead_record("U1", recipients=[recipient("U1-1", "acme", "unknown")]))
    await store.record(
        lead_record("U2", recipients=[recipient("U2-1", "acme", "unknown", price="25.00")])
    )
    service = ServiceSettings("", "", database.url, "127.0.0.1", 0, None)
    server, port, health = await create_server(Settings(service, database.schema), store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.LedgerServiceStub(channel)
    finally:
        await stop_server(server, health, grace=1)
        await store.close()


def resolution(
    event_id: str, outcome: lead_pb2.Outcome.ValueType
) -> pb.RecordDeliveryOutcomeRequest:
    request = pb.RecordDeliveryOutcomeRequest(recipient_event_id=event_id, outcome=outcome)
    request.complete_time.FromDatetime(T0 + timedelta(hours=1))
    return request


async def unknown_ids(ledger: Any) -> list[str]:
    reply = await ledger.ListUnknownOffers(pb.ListUnknownOffersRequest(), timeout=10)
    return [offer.recipient_event_id for offer in reply.offers]


async def buyer_row(ledger: Any) -> pb.BuyerReportRow:
    request = pb.GetBuyerReportRequest()
    request.start_time.FromDatetime(T0 - timedelta(days=1))
    request.end_time.FromDatetime(T0 + timedelta(days=1))
    reply = await ledger.GetBuyerReport(request, timeout=10)
    [acme] = [row for row in reply.rows if row.buyer_id == "acme"]
    return acme


async def test_unknown_offers_are_listed_newest_lead_first_until_resolved(ledger: Any) -> None:
    assert await unknown_ids(ledger) == ["U2-1", "U1-1"]

    await ledger.RecordDeliveryOutcome(resolution("U2-1", lead_pb2.OUTCOME_FAILURE), timeout=10)

    assert await unknown_ids(ledger) == ["U1-1"]
    page = await ledger.ListUnknownOffers(
        pb.ListUnknownOffersRequest(limit=1, before_lead_id="U1"), timeout=10
    )
    assert list(page.offers) == []


async def test_an_unknown_offer_earns_nothing_until_resolved_as_a_sale(ledger: Any) -> None:
    before = await buyer_row(ledger)
    assert (before.sold, before.unknown, from_proto(before.sales_total)) == (1, 2, Decimal(20))

    first = await ledger.RecordDeliveryOutcome(
        resolution("U2-1", lead_pb2.OUTCOME_SUCCESS), timeout=10
    )
    again = await ledger.RecordDeliveryOutcome(
        resolution("U2-1", lead_pb2.OUTCOME_SUCCESS), timeout=10
    )

    assert first.created and not again.created
    assert (first.lead_id, first.stage_index, first.step_index, first.buyer_id) == (
        "U2",
        0,
        0,
        "acme",
    )
    after = await buyer_row(ledger)
    # Booked at the quoted price; the event itself stays `unknown`, the resolution is a new row.
    assert (after.sold, after.unknown, from_proto(after.sales_total)) == (2, 1, Decimal(45))
    lead = await ledger.GetLead(pb.GetLeadRequest(lead_id="U2"), timeout=10)
    assert [e.outcome for e in lead.recipient_events] == [lead_pb2.OUTCOME_UNKNOWN]
    assert [(o.recipient_event_id, o.outcome) for o in lead.delivery_outcomes] == [
        ("U2-1", lead_pb2.OUTCOME_SUCCESS)
    ]
    assert [p.kind for p in lead.postings] == ["purchase", "sale"]


async def test_a_second_resolution_answers_with_the_first(ledger: Any) -> None:
    await ledger.RecordDeliveryOutcome(resolution("U1-1", lead_pb2.OUTCOME_FAILURE), timeout=10)

    other = await ledger.RecordDeliveryOutcome(
        resolution("U1-1", lead_pb2.OUTCOME_SUCCESS), timeout=10
    )

    assert not other.created and other.outcome == lead_pb2.OUTCOME_FAILURE
    lead = await ledger.GetLead(pb.GetLeadRequest(lead_id="U1"), timeout=10)
    assert [p.kind for p in lead.postings] == ["purchase"]


async def test_only_queued_or_unknown_events_take_a_later_outcome(ledger: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.RecordDeliveryOutcome(resolution("S1-1", lead_pb2.OUTCOME_FAILURE), timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_unknown_page_size_out_of_range_is_refused(ledger: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ledger.ListUnknownOffers(pb.ListUnknownOffersRequest(limit=501), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
