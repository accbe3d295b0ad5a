"""Each service as its own process (`python -m <service>`, as in a container): SIGTERM turns its
health NOT_SERVING, lets in-flight calls finish, refuses new ones, and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leadflow.fields import parse_lead
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from leadflow.wire import LeadData, from_proto
from tests.e2e.harness import ThreadedApp

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SLOW_PRICE_SECONDS = 1.5
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

CONFIG = """
account: {{name: Shutdown test}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers: [{{id: acme, name: Acme, delivery: {{type: http, url: "http://127.0.0.1:9/"}}}}]
flows:
  - id: auto
    name: Auto
    pricing: {{service: {{url: "{url}", timeout_ms: 10000, fallback_price: 1}}}}
    sources: [{{source: vendor}}]
    stages: [{{name: main, steps: [{{buyer: acme}}]}}]
"""


class SlowPricingService:
    """An HTTP pricing service that takes its time: the quote in flight when SIGTERM arrives."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.port = 0

    def __enter__(self) -> SlowPricingService:
        async def price(_request: web.Request) -> web.Response:
            self.arrived.set()
            await asyncio.sleep(SLOW_PRICE_SECONDS)
            return web.json_response({"price": 12.5})

        app = web.Application()
        app.router.add_post("/price", price)
        self._server = ThreadedApp(app)
        self.port = self._server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.stop()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def pricing_http() -> Iterator[SlowPricingService]:
    with SlowPricingService() as service:
        yield service


async def start_service(
    module: str, config: Path, data_dir: Path
) -> tuple[asyncio.subprocess.Process, str]:
    grpc_port, http_port = free_ports(2)
    env = {
        **os.environ,
        "LEADFLOW_CONFIG": str(config),
        "LEADFLOW_DATA_DIR": str(data_dir),
        "LEADFLOW_HOST": "127.0.0.1",
        "LEADFLOW_GRPC_PORT": str(grpc_port),
        "LEADFLOW_METRICS_PORT": "0",
        "LEADFLOW_HTTP_PORT": str(http_port),
        "LEADFLOW_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return process, f"127.0.0.1:{grpc_port}"


async def wait_serving(address: str, process: asyncio.subprocess.Process) -> None:
    """Poll the standard health check until the process answers SERVING."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            assert process.returncode is None, await output(process)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{address} did not become SERVING")


async def output(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await process.stdout.read()).decode(errors="replace")


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:  # a failed test must not leave a service running
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_goes_not_serving_finishes_the_call_in_flight_and_exits_0(
    pricing_http: SlowPricingService,
    tmp_path: Path,
    processes: list[asyncio.subprocess.Process],
) -> None:
    config = tmp_path / "leadflow.yaml"
    config.write_text(CONFIG.format(url=f"http://127.0.0.1:{pricing_http.port}/price"))
    process, address = await start_service("pricing_service", config, tmp_path)
    processes.append(process)
    await wait_serving(address, process)
    lead = LeadData("L1", "auto", "vendor", parse_lead({"state": "CA"}), datetime.now(UTC))
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        stub = pricing_service_pb2_grpc.PricingServiceStub(channel)
        in_flight = stub.QuotePurchasePrice(
            pricing_service_pb2.QuotePurchasePriceRequest(lead=lead.to_proto()), timeout=15
        )
        assert await asyncio.to_thread(pricing_http.arrived.wait, 10), "the quote never started"

        process.send_signal(signal.SIGTERM)

        update = await asyncio.wait_for(watch.read(), 5)
        assert update.status == NOT_SERVING
        watch.cancel()
        # While the quote is still running, a new call is refused.
        async with grpc.aio.insecure_channel(address) as late:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pricing_service_pb2_grpc.PricingServiceStub(late).QuotePurchasePrice(
                    pricing_service_pb2.QuotePurchasePriceRequest(lead=lead.to_proto()),
                    timeout=2,
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not in_flight.done(), "the slow quote finished before the test could check"
        reply = await in_flight
    assert from_proto(reply.price) == Decimal("12.50")
    assert not reply.audit.fallback_used
    code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    assert code == 0, await output(process)


@pytest.mark.parametrize(
    "module",
    ["pricing_service", "routing_service", "delivery_service", "ledger_service", "gateway"],
)
async def test_every_service_goes_not_serving_and_exits_0_on_sigterm(
    module: str, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    config = tmp_path / "leadflow.yaml"
    config.write_text(CONFIG.format(url="http://127.0.0.1:9/price"))
    process, address = await start_service(module, config, tmp_path)
    processes.append(process)
    await wait_serving(address, process)
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        process.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        watch.cancel()
    code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    assert code == 0, await output(process)
