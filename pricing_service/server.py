"""pricing_service: what it runs on (open_deps) and its server (create_server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from leadflow import kit
from leadflow.config import Config
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from pricing_service.config import Settings
from pricing_service.pricing import Pricer
from pricing_service.servicer import PricingServicer
from pricing_service.services import PricingServiceClient

SERVICE_NAME = pricing_service_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name
# Pricing services answer a few hundred bytes; many leads at once share a pool of connections.
CONNECTIONS = 200


@dataclass(frozen=True)
class Deps:
    """The configuration: pricing keeps no state of its own."""

    config: Config


@dataclass
class RunningPricing(kit.Running):
    """The server owns its HTTP session for pricing services and closes it once stopped."""

    session: aiohttp.ClientSession | None = None

    async def after_stop(self) -> None:
        if self.session is not None:
            await self.session.close()


async def create_server(settings: Settings, deps: Deps) -> RunningPricing:
    """Start pricing on settings.address (port 0 picks a free one)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONNECTIONS), cookie_jar=aiohttp.DummyCookieJar()
    )
    try:
        servicer = PricingServicer(deps.config, Pricer(deps.config, PricingServiceClient(session)))
        server, port, health = await kit.start_service(
            pricing_service_pb2_grpc.add_PricingServiceServicer_to_server,
            servicer,
            SERVICE_NAME,
            settings.address,
        )
    except BaseException:
        await session.close()
        raise
    return RunningPricing(server, port, health, session=session)


@asynccontextmanager
async def open_deps(settings: Settings, config: Config) -> AsyncIterator[Deps]:
    yield Deps(config)
