"""RecordLeads: a batch of lead records posted in one call, each answered on its own (created,
already recorded or rejected), through the ledger's real server on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from prometheus_client import REGISTRY

from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.wire import to_proto
from ledger_service.store import LedgerStore
from tests.service.helpers_ledger import bad_request_fields, record_request, running_ledger

if TYPE_CHECKING:
    from conftest import Database

CREATED = pb.RECORD_STATUS_CREATED
ALREADY = pb.RECORD_STATUS_ALREADY_RECORDED
REJECTED = pb.RECORD_STATUS_REJECTED
# What record_request posts per lead, in micros: a purchase and two real-time sales.
PURCHASE = 12_500_000
SALES = {"buyer_one": 7_250_000, "buyer_three": 3_110_000}


@pytest.fixture
async def ledger(database: Database) -> AsyncIterator[tuple[Any, LedgerStore]]:
    """The server's stub, and a store on its database to read the journal back."""
    async with running_ledger(database) as stub:
        store = LedgerStore.connect(database.url, database.schema)
        try:
            yield stub, store
        finally:
            await store.close()


def batch(*lead_ids: str) -> pb.RecordLeadsRequest:
    return pb.RecordLeadsRequest(records=[record_request(lead_id) for lead_id in lead_ids])


def statuses(response: pb.RecordLeadsResponse) -> list[tuple[str, int]]:
    return [(result.lead_id, result.status) for result in response.results]


async def lead_or_none(stub: Any, lead_id: str) -> pb.GetLeadResponse | None:
    try:
        response: pb.GetLeadResponse = await stub.GetLead(
            pb.GetLeadRequest(lead_id=lead_id), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    return response


def money_metrics() -> tuple[float, float]:
    """Purchase cost and sale revenue counted so far for record_request's flow."""
    cost = REGISTRY.get_sample_value(
        "leadflow_purchase_cost_dollars_total", {"flow": "solar", "source": "acme"}
    )
    revenue = sum(
        REGISTRY.get_sample_value(
            "leadflow_sale_revenue_dollars_total", {"flow": "solar", "buyer": buyer}
        )
        or 0.0
        for buyer in SALES
    )
    return cost or 0.0, revenue


async def test_batch_records_every_lead_with_its_postings_and_balances(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, store = ledger
    request = batch("B1", "B2", "B3")

    response = await stub.RecordLeads(request, timeout=10)

    assert statuses(response) == [("B1", CREATED), ("B2", CREATED), ("B3", CREATED)]
    for sent in request.records:
        got = await stub.GetLead(pb.GetLeadRequest(lead_id=sent.lead.id), timeout=10)
        assert got.lead == sent.lead
        assert got.source_event == sent.source_event
        assert list(got.recipient_events) == list(sent.recipient_events)
        assert {(p.kind, p.recipient_event_id) for p in got.postings} == {
            ("purchase", ""),
            ("sale", f"{sent.lead.id}-c"),
            ("sale", f"{sent.lead.id}-b"),
        }
    balance = await store.trial_balance()
    assert sum(balance.values()) == 0
    assert balance == {
        "cost:solar": 3 * PURCHASE,
        "vendor_payable:acme": -3 * PURCHASE,
        "buyer_receivable:buyer_one": 3 * SALES["buyer_one"],
        "buyer_receivable:buyer_three": 3 * SALES["buyer_three"],
        "revenue:solar": -3 * sum(SALES.values()),
    }


async def test_already_recorded_lead_is_reported_and_not_written_twice(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, store = ledger
    await stub.RecordLead(record_request("B2"), timeout=10)
    request = batch("B1", "B2", "B3")
    del request.records[1].recipient_events[1:]  # a replay's content never replaces the first

    response = await stub.RecordLeads(request, timeout=10)
    replayed = await stub.GetLead(pb.GetLeadRequest(lead_id="B2"), timeout=10)

    assert statuses(response) == [("B1", CREATED), ("B2", ALREADY), ("B3", CREATED)]
    assert list(replayed.recipient_events) == list(record_request("B2").recipient_events)
    assert len(await store.postings("B2")) == 3
    assert len(await store.postings()) == 9
    assert sum((await store.trial_balance()).values()) == 0


async def test_a_lead_twice_in_one_batch_is_created_once(ledger: tuple[Any, LedgerStore]) -> None:
    stub, store = ledger

    response = await stub.RecordLeads(batch("B1", "B1"), timeout=10)

    assert statuses(response) == [("B1", CREATED), ("B1", ALREADY)]
    assert len(await store.postings("B1")) == 3


async def test_invalid_record_is_rejected_with_its_reason_and_the_rest_recorded(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, _ = ledger
    request = batch("B1", "B2", "B3", "B4")
    request.records[1].source_event.price_paid.CopyFrom(to_proto(Decimal("10.35")))
    request.records[2].ClearField("source_event")

    response = await stub.RecordLeads(request, timeout=10)

    assert statuses(response) == [
        ("B1", CREATED),
        ("B2", REJECTED),
        ("B3", REJECTED),
        ("B4", CREATED),
    ]
    assert response.results[1].error.startswith("source_event.price_paid: must be ")
    assert response.results[2].error == "source_event: required"
    assert [result.error for result in response.results[::3]] == ["", ""]
    assert await lead_or_none(stub, "B2") is None
    assert await lead_or_none(stub, "B3") is None
    assert await lead_or_none(stub, "B4") is not None


async def test_record_with_event_ids_of_another_lead_is_rejected(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, store = ledger
    await stub.RecordLead(record_request("B1"), timeout=10)
    request = batch("B2", "B3")
    request.records[0].recipient_events[2].id = "B1-c"

    response = await stub.RecordLeads(request, timeout=10)

    assert statuses(response) == [("B2", REJECTED), ("B3", CREATED)]
    assert "B1-c" in response.results[0].error
    assert await lead_or_none(stub, "B2") is None
    assert len(await store.postings()) == 6


async def test_leads_of_one_batch_sharing_an_event_id_keep_the_first(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, _ = ledger
    request = batch("B1", "B2", "B3")
    request.records[2].recipient_events[0].id = "B1-a"

    response = await stub.RecordLeads(request, timeout=10)

    assert statuses(response) == [("B1", CREATED), ("B2", CREATED), ("B3", REJECTED)]
    assert "B1-a" in response.results[2].error
    assert await lead_or_none(stub, "B3") is None


async def test_more_than_500_records_is_invalid_argument_and_records_nothing(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, store = ledger
    request = batch(*(f"B{n:03d}" for n in range(501)))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RecordLeads(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == ["records"]
    assert await store.postings() == []


async def test_same_batch_sent_concurrently_records_each_lead_once(
    database: Database, ledger: tuple[Any, LedgerStore]
) -> None:
    stub, store = ledger
    lead_ids = [f"B{n:02d}" for n in range(20)]
    request = batch(*lead_ids)

    async with running_ledger(database) as replica:
        responses = await asyncio.gather(
            stub.RecordLeads(request, timeout=30),
            stub.RecordLeads(request, timeout=30),
            replica.RecordLeads(request, timeout=30),
        )

    for position, lead_id in enumerate(lead_ids):
        answers = sorted(response.results[position].status for response in responses)
        assert answers == [CREATED, ALREADY, ALREADY], lead_id
    assert len(await store.postings()) == 3 * len(lead_ids)
    assert sum((await store.trial_balance()).values()) == 0


async def test_money_metrics_count_each_created_lead_once(
    ledger: tuple[Any, LedgerStore],
) -> None:
    stub, _ = ledger
    await stub.RecordLead(record_request("B0"), timeout=10)
    cost_before, revenue_before = money_metrics()
    request = batch("B0", "B1", "B2", "B3")
    request.records[3].source_event.price_paid.CopyFrom(to_proto(Decimal("1.00")))  # invalid

    await asyncio.gather(*(stub.RecordLeads(request, timeout=30) for _ in range(2)))
    cost, revenue = money_metrics()

    # B1 and B2 are new; B0 is a replay and B3 is rejected.
    assert cost - cost_before == pytest.approx(2 * PURCHASE / 1e6)
    assert revenue - revenue_before == pytest.approx(2 * sum(SALES.values()) / 1e6)
