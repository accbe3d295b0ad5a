"""Per-buyer circuit breaker through the real delivery server, against a real failing buyer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from leadflow.common.v1 import lead_pb2
from leadflow.config import parse_config
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from tests.service.helpers_delivery import deliver_request, running_delivery

pytestmark = pytest.mark.timeout(30)

CONFIG = """
account: {{name: Test, allow_private_network_delivery: true}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - id: breaker-buyer
    name: Breaker
    delivery:
      type: http
      url: "{url}/lead"
      timeout_ms: 2000
      circuit_breaker: {{errors: 3, cooldown_s: 0.3}}
  - id: plain-buyer
    name: Plain
    delivery: {{type: http, url: "{url}/lead", timeout_ms: 2000}}
flows:
  - id: auto
    name: Auto
    sources: [{{source: vendor}}]
    stages: [{{name: s, steps: [{{buyer: breaker-buyer}}, {{buyer: plain-buyer}}]}}]
"""


@dataclass
class Buyer:
    status: int = 500
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        return web.json_response({"ok": self.status < 400}, status=self.status)


@pytest.fixture
async def buyer() -> AsyncIterator[tuple[Buyer, str]]:
    state = Buyer()
    app = web.Application()
    app.router.add_post("/lead", state.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield state, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def delivery(buyer: tuple[Buyer, str]) -> AsyncIterator[pb_grpc.DeliveryServiceStub]:
    async with running_delivery(parse_config(CONFIG.format(url=buyer[1]), env={})) as stub:
        yield stub


async def _deliver(
    stub: pb_grpc.DeliveryServiceStub, buyer_id: str = "breaker-buyer"
) -> tuple[int, str]:
    reply = await stub.DeliverLead(deliver_request(buyer_id), timeout=10)
    return reply.outcome, reply.reason


def _refused() -> float:
    value = REGISTRY.get_sample_value(
        "leadflow_delivery_circuit_refused_total", {"buyer": "breaker-buyer"}
    )
    return value or 0.0


async def _until_buyer_called(stub: pb_grpc.DeliveryServiceStub, state: Buyer) -> tuple[int, str]:
    """Deliver until the cool-down ends and the probe reaches the buyer (polled, bounded)."""
    calls = state.calls
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        result = await _deliver(stub)
        if state.calls > calls:
            return result
        assert result[1].startswith("Circuit open"), result
        assert asyncio.get_running_loop().time() < deadline, "the circuit never half-opened"
        await asyncio.sleep(0.02)


async def test_consecutive_errors_open_the_circuit_and_the_buyer_is_not_called(
    delivery: pb_grpc.DeliveryServiceStub, buyer: tuple[Buyer, str]
) -> None:
    state, _ = buyer
    for _ in range(3):
        assert (await _deliver(delivery))[0] == lead_pb2.OUTCOME_ERROR
    assert state.calls == 3
    refused_before = _refused()
    outcome, reason = await _deliver(delivery)
    assert outcome == lead_pb2.OUTCOME_ERROR
    assert reason.startswith("Circuit open after 3 consecutive delivery errors"), reason
    assert state.calls == 3  # refused without a request to the buyer
    assert _refused() == refused_before + 1
    state_value = REGISTRY.get_sample_value(
        "leadflow_delivery_circuit_state", {"buyer": "breaker-buyer"}
    )
    assert state_value == 1
    # Another buyer at the same address, without a breaker, is still called.
    assert (await _deliver(delivery, "plain-buyer"))[0] == lead_pb2.OUTCOME_ERROR
    assert state.calls == 4


async def test_a_successful_probe_after_the_cool_down_closes_the_circuit(
    delivery: pb_grpc.DeliveryServiceStub, buyer: tuple[Buyer, str]
) -> None:
    state, _ = buyer
    for _ in range(3):
        await _deliver(delivery)
    state.status = 200
    assert (await _until_buyer_called(delivery, state))[0] == lead_pb2.OUTCOME_SUCCESS
    calls = state.calls
    assert [(await _deliver(delivery))[0] for _ in range(3)] == [lead_pb2.OUTCOME_SUCCESS] * 3
    assert state.calls == calls + 3


async def test_a_failed_probe_opens_the_circuit_again_at_once(
    delivery: pb_grpc.DeliveryServiceStub, buyer: tuple[Buyer, str]
) -> None:
    state, _ = buyer
    for _ in range(3):
        await _deliver(delivery)
    assert (await _until_buyer_called(delivery, state))[0] == lead_pb2.OUTCOME_ERROR
    calls = state.calls
    assert (await _deliver(delivery))[1].startswith("Circuit open")
    assert state.calls == calls


async def test_an_answer_from_the_buyer_resets_the_error_count(
    delivery: pb_grpc.DeliveryServiceStub, buyer: tuple[Buyer, str]
) -> None:
    state, _ = buyer
    for status in (500, 500, 422, 500, 500):
        state.status = status
        await _deliver(delivery)
    assert state.calls == 5
    _, reason = await _deliver(delivery)
    assert not reason.startswith("Circuit open"), reason
    assert state.calls == 6  # the third error in a row: the circuit opens only now
    assert (await _deliver(delivery))[1].startswith("Circuit open")
