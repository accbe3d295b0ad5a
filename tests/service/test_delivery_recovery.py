"""Durable HTTP attempts and their recovery (SPEC 8.1): delivery_service with its real store
(SQLite and PostgreSQL), a real buyer and a real ledger holding the leads' `unknown` offers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from delivery_service.attempts import Answer, SentAttempt
from delivery_service.config import Settings
from delivery_service.http_adapter import DeliveryResult
from delivery_service.recovery import AttemptLog
from delivery_service.server import DeliveryServer, Deps, create_server
from delivery_service.store import DeliveryStore
from leadflow.common.v1 import lead_pb2
from leadflow.config import parse_config
from leadflow.delivery.v1 import delivery_service_pb2 as pb
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from leadflow.fields import parse_lead
from leadflow.ledger.v1 import ledger_service_pb2 as ledger_pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from leadflow.wire import LeadData, PriceAudit, to_proto
from ledger_service.config import Settings as LedgerSettings
from ledger_service.ledger import Lead as LedgerLead
from ledger_service.ledger import LeadRecord, RecipientEvent, SourceEvent
from ledger_service.server import Deps as LedgerDeps
from ledger_service.server import create_server as create_ledger
from ledger_service.store import LedgerStore

if TYPE_CHECKING:
    from conftest import Database

pytestmark = pytest.mark.timeout(60)
SUBMITTED = datetime(2026, 3, 14, 15, 9, tzinfo=UTC)


@dataclass
class Buyer:
    """One loopback buyer that takes every lead, after `release` when a test holds it."""

    url: str = ""
    received: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(dict(request.headers))
        await self.release.wait()
        return web.json_response({"status": "accepted"})


@pytest.fixture
async def buyer() -> AsyncIterator[Buyer]:
    state = Buyer()
    app = web.Application()
    app.router.add_post("/{name}", state.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = f"http://127.0.0.1:{server.port}"
    try:
        yield state
    finally:
        state.release.set()
        await server.close()


def config_text(url: str) -> str:
    return f"""
account: {{name: Test, allow_private_network_delivery: true}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - id: plain
    name: Plain
    delivery:
      type: http
      url: {url}/plain
      timeout_ms: 2000
      response: {{outcome_search_term: accepted, outcome_search_path: status}}
  - id: idem
    name: Idempotent
    delivery:
      type: http
      url: {url}/idem
      timeout_ms: 2000
      retry: {{idempotent: true}}
      response: {{outcome_search_term: accepted, outcome_search_path: status}}
flows:
  - id: auto
    name: Auto
    sources: [{{source: vendor}}]
    stages: [{{name: one, exclusive: true, steps: [{{buyer: plain}}, {{buyer: idem}}]}}]
"""


def lead(lead_id: str) -> LeadData:
    fields = parse_lead({"first_name": "Ada", "phone_1": "(512) 555-1234", "state": "CA"})
    return LeadData(lead_id, "auto", "vendor", fields, SUBMITTED)


def deliver_request(lead_id: str, buyer_id: str) -> pb.DeliverLeadRequest:
    return pb.DeliverLeadRequest(
        request_id=f"{lead_id}-1",
        lead=lead(lead_id).to_proto(),
        buyer_id=buyer_id,
        sale_price=to_proto(Decimal("12.50")),
        purchase_price=to_proto(Decimal("4.00")),
    )


def unknown_lead(lead_id: str, buyer_id: str) -> LeadRecord:
    """What the gateway recorded: the offer to `buyer_id` cut off, its outcome unknown."""
    data = lead(lead_id)
    event = RecipientEvent(
        id=f"{lead_id}-1",
        stage_index=0,
        stage_name="one",
        strategy="priority",
        step_index=0,
        buyer_id=buyer_id,
        outcome="unknown",
        reason="Delivery interrupted (UNAVAILABLE): outcome unknown",
        sale_price=Decimal("12.50"),
        price_audit=PriceAudit(),
        reference="",
        attempts=(),
        duration_ms=0,
    )
    source = SourceEvent(
        outcome="success",
        reason="",
        purchase_price=Decimal("4.00"),
        price_paid=Decimal("4.00"),
        revenue=Decimal(0),
        price_audit=PriceAudit(),
        duration_ms=1,
    )
    fields = orjson.dumps(data.fields).decode()
    return LeadRecord(
        lead=LedgerLead(lead_id, "auto", "vendor", fields, SUBMITTED),
        source_event=source,
        recipient_events=(event,),
    )


@dataclass
class Running:
    delivery: DeliveryServer
    store: DeliveryStore
    ledger: Any  # LedgerServiceStub
    stub: Any  # DeliveryServiceStub


@pytest.fixture
async def running(buyer: Buyer, database: Database) -> AsyncIterator[Running]:
    ledger_store = await LedgerStore.open(database.url, database.schema)
    for lead_id, buyer_id in (("L1", "idem"), ("L2", "plain"), ("L3", "plain"), ("L4", "plain")):
        await ledger_store.record(unknown_lead(lead_id, buyer_id))
    ledger = await create_ledger(
        LedgerSettings(host="127.0.0.1", grpc_port=0), LedgerDeps(ledger_store)
    )
    ledger_port = ledger.port
    store = await DeliveryStore.open(database.url, database.schema)
    settings = Settings(host="127.0.0.1", grpc_port=0, ledger_addr=f"127.0.0.1:{ledger_port}")
    delivery = await create_server(settings, Deps(parse_config(config_text(buyer.url), {}), store))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{delivery.port}")
    ledger_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ledger_port}")
    try:
        yield Running(
            delivery,
            store,
            ledger_grpc.LedgerServiceStub(ledger_channel),
            pb_grpc.DeliveryServiceStub(channel),
        )
    finally:
        await channel.close()
        await ledger_channel.close()
        await delivery.stop(1)
        await ledger.stop(1)
        await store.close()
        await ledger_store.close()


async def until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def settled_outcome(running: Running, lead_id: str) -> list[int]:
    reply = await running.ledger.GetLead(ledger_pb.GetLeadRequest(lead_id=lead_id), timeout=5)
    return [outcome.outcome for outcome in reply.delivery_outcomes]


async def test_a_delivery_is_recorded_before_it_leaves_and_dropped_once_answered(
    running: Running, buyer: Buyer
) -> None:
    call = running.stub.DeliverLead(deliver_request("N1", "plain"))

    async def arrived() -> bool:
        return bool(buyer.received)

    await until(arrived)
    # The buyer has the request: its attempt is already on record.
    assert await running.store.open_attempts() == 1
    assert buyer.received[0]["webhook-id"] == "N1-1"
    assert buyer.received[0]["webhook-timestamp"].isdigit()

    buyer.release.set()
    assert (await call).outcome == lead_pb2.OUTCOME_SUCCESS

    async def dropped() -> bool:
        return await running.store.open_attempts() == 0

    await until(dropped)


async def test_recovery_resends_to_an_idempotent_buyer_and_books_its_answer(
    running: Running, buyer: Buyer
) -> None:
    """A delivery that died with its process: the same request (same webhook-id) goes again
    and the ledger completes the unknown offer with the answer."""
    buyer.release.set()
    past = datetime.now(UTC) - timedelta(minutes=1)
    request = deliver_request("L1", "idem")
    await running.store.record_sent(
        [SentAttempt("L1-1", "idem", "L1", request.SerializeToString(), past, past)]
    )

    async def booked() -> bool:
        return await settled_outcome(running, "L1") == [lead_pb2.OUTCOME_SUCCESS]

    await until(booked)
    assert [headers["webhook-id"] for headers in buyer.received] == ["L1-1"]

    async def dropped() -> bool:
        return await running.store.open_attempts() == 0

    await until(dropped)


async def test_recovery_books_a_recorded_answer_and_leaves_a_silent_one_to_operators(
    running: Running, buyer: Buyer
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    answered = deliver_request("L2", "plain")
    silent = deliver_request("L3", "plain")
    # L2 becomes an orphan only later: recovery must not take it for a silent one before its
    # answer is recorded below (it runs concurrently).
    later = datetime.now(UTC) + timedelta(minutes=1)
    await running.store.record_sent(
        [
            SentAttempt("L2-1", "plain", "L2", answered.SerializeToString(), past, later),
            SentAttempt("L3-1", "plain", "L3", silent.SerializeToString(), past, past),
        ]
    )
    await running.store.record_answers(
        [Answer("L2-1", "failure", "Rejected by buyer", None, (), past)]
    )

    async def done() -> bool:
        return await running.store.open_attempts() == 0

    await until(done)
    assert await settled_outcome(running, "L2") == [lead_pb2.OUTCOME_FAILURE]
    # Not resent (the buyer does not de-duplicate) and not guessed: still unknown.
    assert await settled_outcome(running, "L3") == []
    assert buyer.received == []


async def test_an_answer_whose_caller_gave_up_waiting_is_booked_late(
    running: Running, buyer: Buyer
) -> None:
    """The gateway's deadline passed while the buyer was still answering (the gateway books the
    offer `unknown`): the answer that came afterwards is the event's late outcome."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.stub.DeliverLead(deliver_request("L4", "plain"), timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    buyer.release.set()

    async def booked() -> bool:
        return await settled_outcome(running, "L4") == [lead_pb2.OUTCOME_SUCCESS]

    await until(booked)


async def test_one_write_takes_new_attempts_answers_and_deletions_together(
    database: Database,
) -> None:
    store = await DeliveryStore.open(database.url, database.schema)
    past = datetime.now(UTC) - timedelta(minutes=1)
    try:
        request = deliver_request("L1", "plain").SerializeToString()
        await store.write_attempts(
            [
                SentAttempt("A", "plain", "L1", request, past, past),
                SentAttempt("B", "plain", "L1", request, past, past),
            ],
            (),
            (),
        )
        await store.write_attempts(
            [SentAttempt("C", "plain", "L1", request, past, past)],
            [Answer("A", "success", "", Decimal("12.5"), (), past)],
            ["B"],
        )
        due = await store.due_attempts(datetime.now(UTC), datetime.now(UTC), 10)
    finally:
        await store.close()
    by_id = {attempt.event_id: attempt for attempt in due}
    assert sorted(by_id) == ["A", "C"]
    answer = by_id["A"].answer
    assert answer is not None and (answer.outcome, answer.price) == ("success", Decimal("12.5"))
    assert (by_id["C"].state, by_id["C"].answer) == ("sent", None)


async def test_the_attempt_log_groups_concurrent_deliveries_into_few_transactions(
    database: Database,
) -> None:
    store = await DeliveryStore.open(database.url, database.schema)
    calls: list[tuple[int, int, int]] = []
    write = store.write_attempts

    async def counted(sent: Any, answers: Any, forgotten: Any) -> None:
        calls.append((len(sent), len(answers), len(forgotten)))
        await write(sent, answers, forgotten)

    store.write_attempts = counted  # type: ignore[method-assign]
    log = AttemptLog(store)
    config = parse_config(config_text("http://127.0.0.1:9/leads"), {})
    buyer = config.buyers_by_id["plain"]

    async def deliver(n: int) -> None:
        event_id = f"E{n}"
        await log.sent(buyer, deliver_request(f"L{n}", "plain"), event_id)
        await log.answered(event_id, DeliveryResult("success", ""))
        log.done(event_id)

    try:
        await asyncio.gather(*(deliver(n) for n in range(20)))
        await log.drain()
        assert await store.open_attempts() == 0
    finally:
        await store.close()
    assert [sum(kind) for kind in zip(*calls, strict=True)] == [20, 20, 20]
    # A transaction per burst, not three per delivery.
    assert len(calls) < 20
