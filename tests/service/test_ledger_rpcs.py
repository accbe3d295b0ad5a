"""The ledger's money RPCs through its real server and channel (SQLite and PostgreSQL): batch
outcomes, feedback, decisions, stats and reports, with their status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from prometheus_client import REGISTRY

from leadflow.common.v1 import lead_pb2
from leadflow.kit import ServiceSettings, stop_server
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from leadflow.wire import from_proto, to_proto
from ledger_service.config import Settings
from ledger_service.server import create_server
from ledger_service.store import LedgerStore
from tests.service.helpers_ledger import T0, lead_record, queued_lead, recipient, sold_lead

if TYPE_CHECKING:
    from conftest import Database

POLICY = pb.ReturnPolicy(
    window_days=3650,
    max_percent="100",
    auto_approve=True,
    reasons=["Bad phone"],
    return_to_source=True,
    time_zone="America/Chicago",
)


@pytest.fixture
async def ledger(database: Database) -> AsyncIterator[Any]:
    store = await LedgerStore.open(database.url, database.schema)
    await store.record(sold_lead("L1", buyer_id="acme"))
    await store.record(queued_lead("Q1"))
    await store.record(lead_record("N1", recipients=[recipient("N1-1", "acme", "failure")]))
    service = ServiceSettings("", "", database.url, "127.0.0.1", 0, None)
    server, port, health = await create_server(Settings(service, database.schema), store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.LedgerServiceStub(channel)
    finally:
        await stop_server(server, health, grace=1)
        await store.close()


def outcome_request(event_id: str = "Q1-1", **changes: Any) -> pb.RecordDeliveryOutcomeRequest:
    values: dict[str, Any] = {
        "recipient_event_id": event_id,
        "outcome": lead_pb2.OUTCOME_SUCCESS,
        "sale_price": to_proto(Decimal("14.50")),
        "batch_id": "B7",
        "attempts": [lead_pb2.DeliveryAttempt(number=1, request="PUT leads.csv")],
    }
    values.update(changes)
    request = pb.RecordDeliveryOutcomeRequest(**values)
    request.complete_time.FromDatetime(T0 + timedelta(hours=5))
    return request


def feedback_request(feedback_id: str = "F1", **changes: Any) -> pb.SubmitFeedbackRequest:
    values: dict[str, Any] = {
        "feedback_id": feedback_id,
        "buyer_id": "acme",
        "lead_id": "L1",
        "type": pb.FEEDBACK_TYPE_RETURN,
        "reason": "Bad phone",
        "return_policy": POLICY,
    }
    values.update(changes)
    return pb.SubmitFeedbackRequest(**values)


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


async def test_batch_outcome_books_the_sale_once_and_shows_on_the_lead(ledger: Any) -> None:
    first = await ledger.RecordDeliveryOutcome(outcome_request(), timeout=10)
    again = await ledger.RecordDeliveryOutcome(outcome_request(), timeout=10)
    lead = await ledger.GetLead(pb.GetLeadRequest(lead_id="Q1"), timeout=10)

    assert first.created and not again.created
    [outcome] = lead.delivery_outcomes
    assert (outcome.recipient_event_id, outcome.batch_id) == ("Q1-1", "B7")
    assert outcome.outcome == lead_pb2.OUTCOME_SUCCESS
    assert from_proto(outcome.sale_price) == Decimal("14.50")
    assert outcome.attempts[0].request == "PUT leads.csv"
    assert [(p.kind, from_proto(p.amount)) for p in lead.postings] == [
        ("purchase", Decimal("10.00")),
        ("sale", Decimal("14.50")),
    ]
    assert lead.postings[1].effective_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=5)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (outcome_request("nope"), grpc.StatusCode.NOT_FOUND),
        (outcome_request("L1-1"), grpc.StatusCode.FAILED_PRECONDITION),
        (outcome_request(outcome=lead_pb2.OUTCOME_QUEUED), grpc.StatusCode.INVALID_ARGUMENT),
        (outcome_request(outcome=lead_pb2.OUTCOME_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT),
        (outcome_request(""), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown-event", "not-queued", "queued-again", "no-outcome", "no-event-id"],
)
async def test_batch_outcome_refusals_have_their_codes(
    ledger: Any, request_: pb.RecordDeliveryOutcomeRequest, code: grpc.StatusCode
) -> None:
    assert await code_of(ledger.RecordDeliveryOutcome(request_, timeout=10)) == code


def _credits(buyer: str) -> float:
    value = REGISTRY.get_sample_value("leadflow_return_credits_dollars_total", {"buyer": buyer})
    return value or 0.0


async def test_approved_return_answers_with_its_status_and_counts_its_credit(ledger: Any) -> None:
    before = _credits("acme")

    reply = await ledger.SubmitFeedback(feedback_request(), timeout=10)
    replay = await ledger.SubmitFeedback(feedback_request(), timeout=10)
    lead = await ledger.GetLead(pb.GetLeadRequest(lead_id="L1"), timeout=10)

    assert reply.created and not replay.created
    assert reply.feedback.status == pb.FEEDBACK_STATUS_APPROVED
    assert reply.feedback.outcome == lead_pb2.OUTCOME_SUCCESS
    assert from_proto(reply.feedback.amount) == Decimal("20.00")
    assert replay.feedback == reply.feedback
    assert _credits("acme") - before == pytest.approx(20.0)
    assert [f.id for f in lead.feedback] == ["F1"]
    assert sorted(p.kind for p in lead.postings) == ["chargeback", "purchase", "return", "sale"]


async def test_refused_return_answers_failure_with_the_reason(ledger: Any) -> None:
    reply = await ledger.SubmitFeedback(feedback_request(reason="Meh"), timeout=10)

    assert reply.feedback.outcome == lead_pb2.OUTCOME_FAILURE
    assert reply.feedback.status == pb.FEEDBACK_STATUS_DENIED
    assert reply.feedback.outcome_reason == "Return reason must be one of: Bad phone"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (feedback_request(lead_id="nope"), grpc.StatusCode.NOT_FOUND),
        (feedback_request(buyer_id="beta"), grpc.StatusCode.NOT_FOUND),
        (feedback_request(type=pb.FEEDBACK_TYPE_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT),
        (feedback_request(lead_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (feedback_request(feedback_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (
            feedback_request(amount=to_proto(Decimal("-1"))),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            feedback_request(return_policy=pb.ReturnPolicy(max_percent="120")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            feedback_request(return_policy=pb.ReturnPolicy(time_zone="Mars/Base")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=[
        "unknown-lead",
        "other-buyer",
        "no-type",
        "no-lead",
        "no-id",
        "negative",
        "percent",
        "zone",
    ],
)
async def test_feedback_refusals_have_their_codes(
    ledger: Any, request_: pb.SubmitFeedbackRequest, code: grpc.StatusCode
) -> None:
    assert await code_of(ledger.SubmitFeedback(request_, timeout=10)) == code


async def test_pending_return_is_decided_once(ledger: Any) -> None:
    pending = pb.ReturnPolicy(window_days=3650, auto_approve=False, time_zone="UTC")
    reply = await ledger.SubmitFeedback(feedback_request(return_policy=pending), timeout=10)
    assert reply.feedback.status == pb.FEEDBACK_STATUS_PENDING

    approved = await ledger.DecideReturn(
        pb.DecideReturnRequest(feedback_id="F1", approve=True), timeout=10
    )
    again = await ledger.DecideReturn(
        pb.DecideReturnRequest(feedback_id="F1", approve=True), timeout=10
    )
    reverse = ledger.DecideReturn(
        pb.DecideReturnRequest(feedback_id="F1", approve=False), timeout=10
    )

    assert approved.changed and approved.feedback.status == pb.FEEDBACK_STATUS_APPROVED
    assert approved.feedback.HasField("decide_time")
    assert not again.changed
    assert await code_of(reverse) == grpc.StatusCode.FAILED_PRECONDITION
    unknown = ledger.DecideReturn(pb.DecideReturnRequest(feedback_id="nope"), timeout=10)
    assert await code_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_buyer_stats_serve_routing(ledger: Any) -> None:
    await ledger.SubmitFeedback(feedback_request(), timeout=10)
    request = pb.GetBuyerStatsRequest(buyer_ids=["acme"])
    request.start_time.FromDatetime(T0 - timedelta(days=7))

    reply = await ledger.GetBuyerStats(request, timeout=10)

    [stats] = reply.stats
    assert (stats.buyer_id, stats.offered, stats.sold, stats.returned) == ("acme", 2, 1, 1)
    assert from_proto(stats.revenue) == Decimal("20.00")
    no_start = ledger.GetBuyerStats(pb.GetBuyerStatsRequest(), timeout=10)
    assert await code_of(no_start) == grpc.StatusCode.INVALID_ARGUMENT


async def test_reports_need_a_window_and_margin_a_group(ledger: Any) -> None:
    margin = pb.GetMarginReportRequest()
    margin.start_time.FromDatetime(T0 - timedelta(days=1))
    margin.end_time.FromDatetime(T0 + timedelta(days=1))
    backwards = pb.GetVendorReportRequest()
    backwards.start_time.FromDatetime(T0)
    backwards.end_time.FromDatetime(T0 - timedelta(days=1))

    assert (
        await code_of(ledger.GetMarginReport(margin, timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(ledger.GetVendorReport(backwards, timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    margin.group_by.append(pb.MARGIN_GROUP_BUYER)
    reply = await ledger.GetMarginReport(margin, timeout=10)
    assert reply.total_leads == 3
    assert {row.buyer_id for row in reply.rows} == {"acme", ""}


async def test_buyer_report_over_the_wire(ledger: Any) -> None:
    request = pb.GetBuyerReportRequest()
    request.start_time.FromDatetime(T0 - timedelta(days=1))
    request.end_time.FromDatetime(T0 + timedelta(days=1))

    reply = await ledger.GetBuyerReport(request, timeout=10)

    [acme] = [row for row in reply.rows if row.buyer_id == "acme"]
    assert (acme.deliveries, acme.sold, acme.failed) == (2, 1, 1)
    assert from_proto(acme.sales_total) == Decimal("20.00")
    assert from_proto(acme.failed_opportunity) == Decimal("20.00")
