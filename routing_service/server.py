"""routing_service: what it runs on (open_deps) and its server (create_server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from leadflow import db, kit
from leadflow.config import Config
from leadflow.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from routing_service.config import Settings
from routing_service.distribution import Distributor
from routing_service.peers import Peers
from routing_service.router import Router
from routing_service.routing import RoutingPlan
from routing_service.servicer import RoutingServicer
from routing_service.store import RoutingStore

log = logging.getLogger(__name__)

SERVICE_NAME = routing_service_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name
PURGE_EVERY_S = 600.0


@dataclass(frozen=True)
class Deps:
    """The configuration, the store and the peers' channels (the caller owns store and peers)."""

    config: Config
    store: RoutingStore
    peers: Peers


async def create_server(settings: Settings, deps: Deps) -> kit.Running:
    """Start routing on settings.address (port 0 picks a free one)."""
    router = Router(RoutingPlan(deps.config), deps.store, deps.peers, settings.hold)
    server, port, health = await kit.start_service(
        routing_service_pb2_grpc.add_RoutingServiceServicer_to_server,
        RoutingServicer(router, Distributor(router, deps.config)),
        SERVICE_NAME,
        settings.address,
    )
    return kit.Running(server, port, health)


async def purge_forever(store: RoutingStore, every_s: float = PURGE_EVERY_S) -> None:
    """Housekeeping on every replica: the deletes are idempotent, so replicas may overlap."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await store.purge(datetime.now(UTC))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("routing purge failed: %s", exc)


@contextlib.asynccontextmanager
async def open_deps(settings: Settings, config: Config) -> AsyncIterator[Deps]:
    """The store and the peers, and the store's housekeeping while they are open."""
    url = db.database_url(settings.database_url, settings.data_dir, "routing")
    store = await RoutingStore.open(url, settings.db_schema)
    peers = Peers(settings.peers, settings.routing_stats_seconds)
    purge = asyncio.create_task(purge_forever(store))
    try:
        yield Deps(config, store, peers)
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        await peers.close()
        await store.close()
