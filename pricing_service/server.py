"""pricing_service: build the server (create_server) and run it as a process (main)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health

from leadflow import kit
from leadflow.config import Config, load_config
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from pricing_service.config import settings_from_env
from pricing_service.servicer import PricingServicer

SERVICE_NAME = pricing_service_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name


async def create_server(
    address: str, config: Config
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    servicer = PricingServicer(config)
    return await kit.start_server(
        [
            lambda server: pricing_service_pb2_grpc.add_PricingServiceServicer_to_server(
                servicer, server
            )
        ],
        [SERVICE_NAME],
        address,
    )


async def main() -> None:
    kit.configure_logging()
    settings = settings_from_env()
    config = load_config(settings.config_path)
    kit.serve_metrics(settings.metrics_port)
    server, _, health_servicer = await create_server(settings.address, config)
    await kit.run_until_terminated(server, health_servicer)
