"""pricing_service: build the server (create_server) and run it as a process (main)."""

from __future__ import annotations

import aiohttp
import grpc
from grpc_health.v1 import health

from leadflow import kit
from leadflow.config import Config
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from pricing_service.config import settings_from_env
from pricing_service.pricing import Pricer
from pricing_service.servicer import PricingServicer
from pricing_service.services import PricingServiceClient

SERVICE_NAME = pricing_service_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name
# Pricing services answer a few hundred bytes; many leads at once share a pool of connections.
CONNECTIONS = 200


async def create_server(
    address: str, config: Config
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """The server owns its HTTP session for pricing services and closes it once stopped."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONNECTIONS), cookie_jar=aiohttp.DummyCookieJar()
    )
    try:
        servicer = PricingServicer(config, Pricer(config, PricingServiceClient(session)))
        server, port, health_servicer = await kit.start_service(
            pricing_service_pb2_grpc.add_PricingServiceServicer_to_server,
            servicer,
            SERVICE_NAME,
            address,
        )
    except BaseException:
        await session.close()
        raise
    servicer.closer = kit.close_after_stop(server, session.close)
    return server, port, health_servicer


async def main() -> None:
    await kit.run_config_service("pricing_service", settings_from_env(), create_server)
