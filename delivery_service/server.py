"""Wiring for the delivery service: adapters per buyer, the gRPC server, and main()."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import grpc
from grpc_health.v1 import health

from delivery_service.config import Settings
from delivery_service.http_adapter import HttpAdapter, create_session
from delivery_service.servicer import DeliveryServicer
from leadflow import kit
from leadflow.config import Config, ConfigError, HttpDelivery, load_config
from leadflow.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = delivery_service_pb2.DESCRIPTOR.services_by_name["DeliveryService"].full_name


def build_adapters(config: Config, session: aiohttp.ClientSession) -> dict[str, HttpAdapter]:
    """One adapter per HTTP buyer, its templates compiled here once rather than per lead."""
    allow_private = config.account.allow_private_network_delivery
    return {
        buyer.id: HttpAdapter(
            buyer.id, buyer.delivery, session, allow_private_network=allow_private
        )
        for buyer in config.buyers
        if isinstance(buyer.delivery, HttpDelivery)
    }


async def _close_after_stop(
    server: grpc.aio.Server,
    servicer: DeliveryServicer,
    session: aiohttp.ClientSession,
    grace: float,
) -> None:
    await server.wait_for_termination()
    await servicer.drain(grace)
    await session.close()


async def _start(
    settings: Settings, config: Config, session: aiohttp.ClientSession
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer, DeliveryServicer]:
    servicer = DeliveryServicer(config, build_adapters(config, session), settings.recent_results)
    server, port, health_servicer = await kit.start_service(
        delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server,
        servicer,
        SERVICE_NAME,
        settings.service.address,
    )
    return server, port, health_servicer, servicer


async def create_server(
    settings: Settings, config: Config, http_session: aiohttp.ClientSession | None = None
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start the service on `settings.service.address`.

    Without `http_session` the server makes its own (guarded as the account says) and, once
    the server has stopped, lets running deliveries finish and closes it.
    """
    if http_session is not None:
        server, port, health_servicer, _ = await _start(settings, config, http_session)
        return server, port, health_servicer
    session = create_session(allow_private_network=config.account.allow_private_network_delivery)
    try:
        server, port, health_servicer, servicer = await _start(settings, config, session)
    except BaseException:
        await session.close()
        raise
    closer = asyncio.create_task(
        _close_after_stop(server, servicer, session, settings.grace_seconds)
    )
    servicer.owned_tasks.add(closer)
    return server, port, health_servicer


async def main() -> None:
    kit.configure_logging()
    settings = Settings.from_env()
    try:
        config = load_config(settings.service.config_path)
    except ConfigError as exc:
        log.error("invalid configuration %s:\n%s", settings.service.config_path, exc)
        sys.exit(2)
    kit.serve_metrics(settings.service.metrics_port)
    session = create_session(allow_private_network=config.account.allow_private_network_delivery)
    try:
        server, port, health_servicer, servicer = await _start(settings, config, session)
        log.info("delivery service listening on %s:%d", settings.service.host, port)

        async def on_stop() -> None:
            await servicer.drain(settings.grace_seconds)

        await kit.run_until_terminated(
            server, health_servicer, on_stop=on_stop, grace=settings.grace_seconds
        )
    finally:
        await session.close()
