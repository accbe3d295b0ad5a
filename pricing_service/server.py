"""pricing_service: build the server (create_server) and run it as a process (main)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health

from leadflow import kit
from leadflow.config import Config
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from pricing_service.config import settings_from_env
from pricing_service.servicer import PricingServicer

SERVICE_NAME = pricing_service_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name


async def create_server(
    address: str, config: Config
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    return await kit.start_service(
        pricing_service_pb2_grpc.add_PricingServiceServicer_to_server,
        PricingServicer(config),
        SERVICE_NAME,
        address,
    )


async def main() -> None:
    await kit.run_config_service(settings_from_env(), create_server)
