"""Delivery service wiring: adapters, batch runner, what it runs on (open_deps), create_server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from delivery_service.config import Settings
from delivery_service.http_adapter import HttpAdapter, create_session
from delivery_service.ping import Pinger
from delivery_service.recovery import AttemptLog, Recovery
from delivery_service.runner import BatchRunner
from delivery_service.servicer import DeliveryServicer
from delivery_service.store import DeliveryStore
from leadflow import db, kit
from leadflow.config import Config, HttpDelivery
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


@dataclass(frozen=True)
class Deps:
    """The configuration; with a store, the batch queue, its scheduler and recovery run too;
    without `http_session` the service makes its own (guarded as the account says)."""

    config: Config
    store: DeliveryStore | None = None
    http_session: aiohttp.ClientSession | None = None


@dataclass
class DeliveryServer(kit.Running):
    """A running delivery service: its gRPC server and what must stop after it."""

    servicer: DeliveryServicer
    runner: BatchRunner | None
    session: aiohttp.ClientSession | None  # owned: closed at the end
    recovery: Recovery | None

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


async def create_server(settings: Settings, deps: Deps) -> DeliveryServer:
    """Start the service on settings.address (port 0 picks a free one)."""
    config, store = deps.config, deps.store
    session = deps.http_session or create_session(
        allow_private_network=config.account.allow_private_network_delivery
    )
    runner = None
    recovery: Recovery | None = None
    try:
        if store is not None:
            runner = BatchRunner(config, store, settings.runner, settings.ledger_addr)
        servicer = DeliveryServicer(
            config, build_adapters(config, session), settings.delivery_recent_results, runner
        )
        servicer.pinger = Pinger(config, session)
        if store is not None:
            servicer.attempt_log = AttemptLog(store)
            recovery = Recovery(
                config,
                store,
                servicer.redeliver,
                settings.ledger_addr,
                settings.routing_addr,
                settings.delivery_tick_seconds,
            )
        server, port, health_servicer = await kit.start_service(
            delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server,
            servicer,
            SERVICE_NAME,
            settings.address,
        )
    except BaseException:
        if runner is not None:
            await runner.reporter.close()
        if recovery is not None:
            await recovery.close()
        if deps.http_session is None:
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
        None if deps.http_session is not None else session,
        recovery,
        grace=settings.shutdown_grace_seconds,
    )


@asynccontextmanager
async def open_deps(settings: Settings, config: Config) -> AsyncIterator[Deps]:
    url = db.database_url(settings.database_url, settings.data_dir, "delivery")
    store = await DeliveryStore.open(url, settings.db_schema)
    try:
        yield Deps(config, store)
    finally:
        await store.close()
