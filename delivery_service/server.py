"""Wiring for the delivery service: adapters, the batch runner, the gRPC server and main()."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import grpc
from grpc_health.v1 import health

from delivery_service.config import Settings
from delivery_service.http_adapter import HttpAdapter, create_session
from delivery_service.ping import Pinger
from delivery_service.recovery import AttemptLog, Recovery
from delivery_service.runner import BatchRunner
from delivery_service.servicer import DeliveryServicer
from delivery_service.store import DeliveryStore
from leadflow import db, kit
from leadflow.config import Config, HttpDelivery, load_config
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


@dataclass
class DeliveryServer:
    """A running delivery service: its gRPC server and what must stop after it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: DeliveryServicer
    runner: BatchRunner | None
    session: aiohttp.ClientSession | None  # owned: closed at the end
    grace: float
    recovery: Recovery | None = None

    async def after_stop(self) -> None:
        """Once the server stopped taking calls: end the scheduler (a file being sent gets the
        grace period), let deliveries finish, close the HTTP session."""
        if self.runner is not None:
            await self.runner.stop(self.grace)
        if self.recovery is not None:
            await self.recovery.close()
        await self.servicer.drain(self.grace)
        if self.servicer.attempt_log is not None:
            await self.servicer.attempt_log.drain()
        if self.session is not None:
            await self.session.close()

    async def stop(self, grace: float | None = None) -> None:
        await kit.stop_server(self.server, self.health, self.grace if grace is None else grace)
        await self.after_stop()


async def start_delivery(
    settings: Settings,
    config: Config,
    store: DeliveryStore | None = None,
    http_session: aiohttp.ClientSession | None = None,
) -> DeliveryServer:
    """Start the service on `settings.service.address`; with a store, the batch queue and its
    scheduler run too. Without `http_session` it makes its own (guarded as the account says)."""
    session = http_session or create_session(
        allow_private_network=config.account.allow_private_network_delivery
    )
    runner = None
    recovery: Recovery | None = None
    try:
        if store is not None:
            runner = BatchRunner(config, store, settings.runner, settings.ledger_address)
        servicer = DeliveryServicer(
            config, build_adapters(config, session), settings.recent_results, runner
        )
        servicer.pinger = Pinger(config, session)
        if store is not None:
            servicer.attempt_log = AttemptLog(store)
            recovery = Recovery(
                config,
                store,
                servicer.redeliver,
                settings.ledger_address,
                settings.routing_address,
                settings.runner.tick_seconds,
            )
        server, port, health_servicer = await kit.start_service(
            delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server,
            servicer,
            SERVICE_NAME,
            settings.service.address,
        )
    except BaseException:
        if runner is not None:
            await runner.reporter.close()
        if recovery is not None:
            await recovery.close()
        if http_session is None:
            await session.close()
        raise
    if runner is not None:
        runner.start()
    if recovery is not None:
        recovery.start()
    return DeliveryServer(
        server,
        port,
        health_servicer,
        servicer,
        runner,
        None if http_session is not None else session,
        settings.grace_seconds,
        recovery,
    )


async def _close_after_stop(running: DeliveryServer) -> None:
    await running.server.wait_for_termination()
    await running.after_stop()


async def create_server(
    settings: Settings,
    config: Config,
    http_session: aiohttp.ClientSession | None = None,
    store: DeliveryStore | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """start_delivery for callers that only hold the server: what must stop after it stops
    once the server has terminated."""
    running = await start_delivery(settings, config, store, http_session)
    closer = asyncio.create_task(_close_after_stop(running))
    running.servicer.owned_tasks.add(closer)
    return running.server, running.port, running.health


async def main() -> None:
    kit.bootstrap("delivery_service")
    settings = Settings.from_env()
    config = load_config(settings.service.config_path)  # kit.run_main reports a ConfigError
    kit.serve_metrics(settings.service.metrics_port)
    url = db.database_url(settings.service.database_url, settings.service.data_dir, "delivery")
    store = await DeliveryStore.open(url, settings.schema)
    try:
        running = await start_delivery(settings, config, store)
        log.info("delivery service listening on %s:%d", settings.service.host, running.port)
        await kit.run_until_terminated(
            running.server, running.health, on_stop=running.after_stop, grace=running.grace
        )
    finally:
        await store.close()
