"""The kit counts calls to services registered the generated way (registered method handlers,
the path every leadflow service takes) under the go-grpc-prometheus names."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from leadflow import kit
from leadflow.pricing.v1 import pricing_service_pb2 as pb
from leadflow.pricing.v1 import pricing_service_pb2_grpc as pb_grpc

PRICING = "leadflow.pricing.v1.PricingService"


class _Pricing(pb_grpc.PricingServiceServicer):
    async def QuotePurchasePrice(
        self, request: pb.QuotePurchasePriceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QuotePurchasePriceResponse:
        if request.override_price_text == "refuse":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such source")
        return pb.QuotePurchasePriceResponse()


def _sample(name: str, service: str, method: str, code: str | None = None) -> float:
    labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
    if code is not None:
        labels["grpc_code"] = code
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _counts(service: str, method: str) -> tuple[float, ...]:
    return (
        _sample("grpc_server_started_total", service, method),
        _sample("grpc_server_handled_total", service, method, "OK"),
        _sample("grpc_server_handled_total", service, method, "NotFound"),
        _sample("grpc_server_handling_seconds_count", service, method),
    )


async def test_calls_to_generated_services_are_counted_by_method_and_code() -> None:
    server, port, _ = await kit.start_service(
        pb_grpc.add_PricingServiceServicer_to_server, _Pricing(), PRICING, "127.0.0.1:0"
    )
    before = _counts(PRICING, "QuotePurchasePrice")
    health_before = _counts("grpc.health.v1.Health", "Check")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PricingServiceStub(channel)
            await stub.QuotePurchasePrice(pb.QuotePurchasePriceRequest(), timeout=5)
            await stub.QuotePurchasePrice(pb.QuotePurchasePriceRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.QuotePurchasePrice(
                    pb.QuotePurchasePriceRequest(override_price_text="refuse"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            check = health_pb2_grpc.HealthStub(channel).Check
            await check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(None)
    after = _counts(PRICING, "QuotePurchasePrice")
    assert [b - a for a, b in zip(before, after, strict=True)] == [3, 2, 1, 3]
    health_after = _counts("grpc.health.v1.Health", "Check")
    assert [b - a for a, b in zip(health_before, health_after, strict=True)] == [1, 1, 0, 1]
