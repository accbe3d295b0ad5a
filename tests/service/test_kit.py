"""The service kit on a real server: metrics under go-grpc-prometheus names, graceful shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from leadflow import kit


def _registrar(release: asyncio.Event, started: asyncio.Event | None = None) -> kit.Registrar:
    async def wait(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if started is not None:
            started.set()
        await release.wait()
        return request

    async def fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.v1.KitService",
        {
            "Wait": grpc.unary_unary_rpc_method_handler(wait),  # type: ignore[arg-type]
            "Fail": grpc.unary_unary_rpc_method_handler(fail),  # type: ignore[arg-type]
        },
    )
    return lambda server: server.add_generic_rpc_handlers((handler,))


def handled(method: str, code: str, side: str = "server") -> float:
    value = REGISTRY.get_sample_value(
        f"grpc_{side}_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "test.v1.KitService",
            "grpc_method": method,
            "grpc_code": code,
        },
    )
    return value or 0.0


async def test_server_and_client_metrics_count_each_call_by_code() -> None:
    release = asyncio.Event()
    release.set()
    server, port, _ = await kit.start_server(
        [_registrar(release)], ["test.v1.KitService"], "127.0.0.1:0"
    )
    channel = kit.channel(f"127.0.0.1:{port}")
    before = (
        handled("Wait", "OK"),
        handled("Fail", "FailedPrecondition"),
        handled("Wait", "OK", "client"),
    )
    try:
        assert await channel.unary_unary("/test.v1.KitService/Wait")(b"x", timeout=5) == b"x"
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary("/test.v1.KitService/Fail")(b"x", timeout=5)
    finally:
        await channel.close()
        await server.stop(None)
    after = (
        handled("Wait", "OK"),
        handled("Fail", "FailedPrecondition"),
        handled("Wait", "OK", "client"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


async def test_graceful_stop_goes_not_serving_and_finishes_in_flight_calls() -> None:
    release = asyncio.Event()
    server, port, health = await kit.start_server(
        [_registrar(release)], ["test.v1.KitService"], "127.0.0.1:0"
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        in_flight = asyncio.ensure_future(
            channel.unary_unary("/test.v1.KitService/Wait")(b"done", timeout=10)
        )
        await asyncio.sleep(0.1)  # let the call reach the server before stopping
        stopping = asyncio.ensure_future(kit.stop_server(server, health, grace=5))
        watcher = health_pb2_grpc.HealthStub(channel)
        for _ in range(50):
            if health._server_status.get("") == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.01)
        assert health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
        release.set()
        assert await in_flight == b"done"
        await stopping
        with pytest.raises(grpc.aio.AioRpcError):
            await watcher.Check(health_pb2.HealthCheckRequest(), timeout=1)
