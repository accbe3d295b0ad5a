"""Nothing the gateway acknowledged is lost: the ledger outbox, asynchronous submission
(`Prefer: respond-async`) across gateway restarts, and the gRPC submission's rate limit; the
in-process suite of test_gateway on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.async_intake import Submission
from gateway.server import Background
from gateway.store import KeyInProgress, OutboxRecord, StoredResponse
from leadflow.config import parse_config
from leadflow.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from leadflow.ledger.v1 import ledger_service_pb2
from tests.conftest import Database
from tests.service.helpers_gateway import (
    ADMIN,
    CONFIG,
    KEY,
    LEAD,
    SUBMIT,
    InProcessSuite,
    in_process_suite,
)

ASYNC = {"Prefer": "respond-async"}
# Background loops fast enough for a test to watch them work.
QUICK = Background(sweep_interval_s=0.1, replay_after_s=0.2, unclaimed_after_s=0.2)


@pytest.fixture
async def suite(database: Database) -> AsyncIterator[InProcessSuite]:
    async with in_process_suite(database, background=QUICK) as running:
        yield running


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def status(suite: InProcessSuite, lead_id: str, key: str = KEY) -> tuple[int, Any]:
    async with suite.http.get(
        f"{suite.base_url}/leads/{lead_id}", headers={"X-Api-Key": key}
    ) as response:
        return response.status, orjson.loads(await response.read())


async def final_status(suite: InProcessSuite, lead_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = {}

    async def finished() -> bool:
        code, answer["body"] = await status(suite, lead_id)
        return code == 200

    await eventually(finished, f"lead {lead_id} never finished")
    result: dict[str, Any] = answer["body"]
    return result


async def test_an_async_submission_is_answered_202_and_its_outcome_read_at_its_status_url(
    suite: InProcessSuite,
) -> None:
    async with suite.http.post(
        suite.base_url + SUBMIT, json=LEAD, headers={"X-Api-Key": KEY, **ASYNC}
    ) as response:
        assert response.status == 202
        body = orjson.loads(await response.read())
        assert response.headers["Preference-Applied"] == "respond-async"
        assert response.headers["Location"] == body["status_url"]
    lead_id = body["lead"]["id"]
    assert body == {
        "outcome": "pending",
        "lead": {"id": lead_id},
        "status_url": f"/leads/{lead_id}",
    }

    assert await final_status(suite, lead_id) == {
        "outcome": "success",
        "lead": {"id": lead_id},
        "price": 9.99,
    }
    assert [name for name, _ in suite.buyers.received] == ["first"]
    code, view = await suite.lead_view(lead_id)
    assert (code, view["source_event"]["revenue"]) == (200, 25)


async def test_an_async_outcome_is_rendered_in_the_type_the_vendor_accepts(
    suite: InProcessSuite,
) -> None:
    _, body = await suite.submit(LEAD, **ASYNC)
    lead_id = body["lead"]["id"]
    await final_status(suite, lead_id)
    async with suite.http.get(
        f"{suite.base_url}/leads/{lead_id}", headers={"X-Api-Key": KEY, "Accept": "text/plain"}
    ) as response:
        assert await response.text() == f"outcome:success\nlead.id:{lead_id}\nprice:9.99\n"


async def test_a_failed_async_lead_reports_its_reason(suite: InProcessSuite) -> None:
    suite.buyers.statuses.update(first=500, second=500)
    _, body = await suite.submit(LEAD, **ASYNC)
    result = await final_status(suite, body["lead"]["id"])
    assert (result["outcome"], result["price"]) == ("failure", 0)
    assert result["reason"]


async def test_the_status_url_needs_the_leads_own_source_key_or_the_admin_key(
    suite: InProcessSuite,
) -> None:
    _, body = await suite.submit(LEAD, **ASYNC)
    lead_id = body["lead"]["id"]
    assert (await status(suite, lead_id, key="wrong"))[0] == 401
    assert (await status(suite, "no-such-lead"))[0] == 401
    await final_status(suite, lead_id)
    code, view = await status(suite, lead_id, key=ADMIN)
    assert (code, view["lead"]["id"]) == (200, lead_id)  # the operator's whole view


async def test_a_repeated_idempotency_key_returns_the_first_202_and_sells_once(
    suite: InProcessSuite,
) -> None:
    first = await suite.submit(LEAD, **ASYNC, **{"Idempotency-Key": "k-1"})
    again = await suite.submit(LEAD, **ASYNC, **{"Idempotency-Key": "k-1"})
    assert first == again
    await final_status(suite, first[1]["lead"]["id"])
    assert [name for name, _ in suite.buyers.received] == ["first"]


async def test_async_leads_accepted_by_a_stopped_gateway_are_processed_by_the_next(
    suite: InProcessSuite,
) -> None:
    await suite.restart_gateway(Background(workers=0))  # accepts, never processes
    lead_ids = [(await suite.submit(LEAD, **ASYNC))[1]["lead"]["id"] for _ in range(3)]
    await asyncio.sleep(0.3)
    assert suite.buyers.received == []
    assert [(await status(suite, i))[0] for i in lead_ids] == [202, 202, 202]

    await suite.restart_gateway(QUICK)
    for lead_id in lead_ids:
        assert (await final_status(suite, lead_id))["outcome"] == "success"
    assert len(suite.buyers.received) == 3


async def test_an_async_lead_whose_gateway_died_mid_way_is_an_error_and_never_resent(
    suite: InProcessSuite,
) -> None:
    await suite.restart_gateway(Background(workers=0))
    _, body = await suite.submit(LEAD, **ASYNC)
    lead_id = body["lead"]["id"]
    # What a gateway does before it processes the lead; then it "dies" (never finishes).
    assert await suite.store.claim_intake(lead_id)

    await suite.restart_gateway(Background(sweep_interval_s=0.1, lease_s=0.2))
    result = await final_status(suite, lead_id)
    assert (result["outcome"], result["reason"]) == (
        "error",
        "Processing was interrupted; submit the lead again",
    )
    assert suite.buyers.received == []
    code, view = await suite.lead_view(lead_id)
    assert (code, view["source_event"]["outcome"]) == (200, "error")


async def test_an_async_lead_whose_flow_left_the_configuration_is_an_error_not_retried(
    suite: InProcessSuite,
) -> None:
    await suite.restart_gateway(Background(workers=0))
    _, body = await suite.submit(LEAD, **ASYNC)
    lead_id = body["lead"]["id"]
    # The gateway restarts with a configuration whose only flow is another one.
    other_flow = CONFIG.replace("  - id: auto\n", "  - id: home\n")
    assert other_flow != CONFIG
    suite.config = parse_config(other_flow.format(admin=ADMIN, key=KEY, url="http://x"), {})
    await suite.restart_gateway(QUICK)

    async def finished() -> bool:
        intake = await suite.store.intake(lead_id)
        return intake is not None and intake.result is not None

    await eventually(finished, "the intake was never finished")
    intake = await suite.store.intake(lead_id)
    assert intake is not None and intake.result is not None
    result = orjson.loads(intake.result)
    assert (result["outcome"], result["reason"], result["lead"]["id"]) == (
        "error",
        "The lead's flow or source is no longer configured",
        lead_id,
    )
    assert suite.buyers.received == []
    code, view = await suite.lead_view(lead_id)
    assert (code, view["source_event"]["outcome"]) == (200, "error")


async def test_records_left_by_a_gateway_stopped_during_a_ledger_outage_reach_the_ledger(
    suite: InProcessSuite,
) -> None:
    await suite.ledger.stop()
    lead_ids = [(await suite.submit(LEAD))[1]["lead"]["id"] for _ in range(3)]
    await suite.restart_gateway(QUICK)
    assert await suite.store.outbox_size() == 3
    await suite.ledger.start()

    async def recorded() -> bool:
        return [(await suite.lead_view(i))[0] for i in lead_ids] == [200, 200, 200]

    await eventually(recorded, "the outbox was not replayed")
    await eventually(
        lambda: _equals(suite.store.outbox_size(), 0), "acknowledged records stay in the outbox"
    )
    assert suite.ledger.store is not None
    assert sum((await suite.ledger.store.trial_balance()).values()) == 0


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_lead_is_readable_right_after_its_201(suite: InProcessSuite) -> None:
    """The outbox forwards after the answer; a read through the gateway waits for it."""
    for _ in range(5):
        _, body = await suite.submit(LEAD)
        assert (await suite.lead_view(body["lead"]["id"]))[0] == 200


def record_leads_calls() -> float:
    return (
        REGISTRY.get_sample_value(
            "grpc_client_started_total",
            {
                "grpc_type": "unary",
                "grpc_service": "leadflow.ledger.v1.LedgerService",
                "grpc_method": "RecordLeads",
            },
        )
        or 0.0
    )


async def test_records_wait_to_share_one_ledger_call_until_a_read_needs_them(
    database: Database,
) -> None:
    # The default sweep (records replayed after 5 s) stays out of the way of this test.
    async with in_process_suite(database, background=Background(linger_s=60)) as suite:
        before = record_leads_calls()
        lead_ids = [(await suite.submit(LEAD))[1]["lead"]["id"] for _ in range(5)]
        await asyncio.sleep(0.3)
        assert record_leads_calls() == before, "records went to the ledger one by one"
        assert await suite.store.outbox_size() == 5
        # A read through the gateway does not wait for the linger: all five go, in one call.
        assert [(await suite.lead_view(i))[0] for i in lead_ids] == [200] * 5
        assert record_leads_calls() == before + 1
        await eventually(lambda: _equals(suite.store.outbox_size(), 0), "acknowledged records stay")


async def test_a_lead_recorded_twice_keeps_its_first_record_and_its_batch_the_others(
    database: Database,
) -> None:
    # Default background: no sweep replays these (unparseable) records during the test.
    async with in_process_suite(database) as suite:
        await suite.store.put_records([OutboxRecord("twice", b"first")])
        await suite.store.put_records([OutboxRecord("once", b"other"), OutboxRecord("twice", b"b")])
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert sorted(await suite.store.stale_records(later, 10)) == [b"first", b"other"]
        await suite.store.settle_records(["twice", "once"], [])
        assert await suite.store.outbox_size() == 0


async def test_a_record_the_ledger_refuses_is_set_aside_not_replayed(
    suite: InProcessSuite,
) -> None:
    invalid = ledger_service_pb2.RecordLeadRequest()  # no source event
    invalid.lead.id = "bad-lead"
    await suite.gateway.outbox.record(invalid)
    await eventually(
        lambda: _equals(suite.store.outbox_size(), 0), "the refused record was kept for replay"
    )
    [(lead_id, error)] = await suite.store.rejected_records()
    assert lead_id == "bad-lead" and "source_event" in error


async def test_a_concurrent_burst_is_recorded_once_per_lead(suite: InProcessSuite) -> None:
    answers = await asyncio.gather(*(suite.submit(LEAD) for _ in range(40)))
    lead_ids = {body["lead"]["id"] for _, body in answers}
    assert len(lead_ids) == 40
    views = await asyncio.gather(*(suite.lead_view(i) for i in lead_ids))
    assert [code for code, _ in views] == [200] * 40
    assert suite.ledger.store is not None
    purchases = [p for p in await suite.ledger.store.postings() if p.kind == "purchase"]
    assert sorted(p.lead.lead_id for p in purchases) == sorted(lead_ids)


async def test_the_grpc_submission_shares_the_sources_rate_limit(database: Database) -> None:
    limited = CONFIG.replace(
        "sources: [{{id: vendor, name: Vendor, api_key: {key}}}]",
        "sources: [{{id: vendor, name: Vendor, api_key: {key}, "
        "rate_limit: {{requests: 1, per: minute}}}}]",
    )
    async with in_process_suite(database, limited) as suite:
        assert (await suite.submit(LEAD))[0] == 201  # takes the one token
        async with grpc.aio.insecure_channel(suite.grpc_target) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            request = gateway_service_pb2.SubmitLeadRequest(
                flow_id="auto", source_id="vendor", api_key=KEY, fields_json=orjson.dumps(LEAD)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SubmitLead(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_submission_round_trips_through_its_json() -> None:
    submission = Submission({"a": {"b": [1, "x"]}}, "12.50", "ping-1")
    assert Submission.from_json(submission.to_json()) == submission


async def test_an_idempotency_key_abandoned_by_a_dead_gateway_is_taken_over(
    suite: InProcessSuite,
) -> None:
    # A gateway claimed the key, then died before answering: the vendor's retry must not be
    # refused with 409 forever.
    assert await suite.store.claim("vendor", "k-dead") is None
    assert await suite.store.claim("vendor", "k-dead", abandoned_after=timedelta(0)) is None
    # The retry owns it now: its response is the one every later repeat gets.
    response = StoredResponse(201, "application/json", b'{"outcome":"success"}')
    await suite.store.complete("vendor", "k-dead", response)
    assert await suite.store.claim("vendor", "k-dead", abandoned_after=timedelta(0)) == response


async def test_a_key_in_progress_is_not_taken_over_before_it_is_abandoned(
    suite: InProcessSuite,
) -> None:
    assert await suite.store.claim("vendor", "k-busy") is None
    with pytest.raises(KeyInProgress):
        await suite.store.claim("vendor", "k-busy", wait_s=0.1)
