"""routing_service: build the server (create_server) and run it as a process (main)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health

from leadflow import kit
from leadflow.config import Config
from leadflow.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from routing_service.config import settings_from_env
from routing_service.servicer import RoutingServicer

SERVICE_NAME = routing_service_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name


async def create_server(
    address: str, config: Config
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    return await kit.start_service(
        routing_service_pb2_grpc.add_RoutingServiceServicer_to_server,
        RoutingServicer(config),
        SERVICE_NAME,
        address,
    )


async def main() -> None:
    await kit.run_config_service(settings_from_env(), create_server)
