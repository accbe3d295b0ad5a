"""routing_service: build the server (create_server) and run it as a process (main)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import grpc
from grpc_health.v1 import health
from sqlalchemy.exc import SQLAlchemyError

from leadflow import db, kit
from leadflow.config import Config, load_config
from leadflow.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from routing_service.config import Settings
from routing_service.distribution import Distributor
from routing_service.peers import Peers
from routing_service.router import DEFAULT_HOLD, Router
from routing_service.routing import RoutingPlan
from routing_service.servicer import RoutingServicer
from routing_service.store import RoutingStore

log = logging.getLogger(__name__)

SERVICE_NAME = routing_service_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name
PURGE_EVERY_S = 600.0


async def create_server(
    address: str,
    config: Config,
    store: RoutingStore,
    peers: Peers,
    hold: timedelta = DEFAULT_HOLD,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start routing on `address` (port 0 picks a free one); the caller owns store and peers."""
    router = Router(RoutingPlan(config), store, peers, hold)
    return await kit.start_service(
        routing_service_pb2_grpc.add_RoutingServiceServicer_to_server,
        RoutingServicer(router, Distributor(router, config)),
        SERVICE_NAME,
        address,
    )


async def purge_forever(store: RoutingStore, every_s: float = PURGE_EVERY_S) -> None:
    """Housekeeping on every replica: the deletes are idempotent, so replicas may overlap."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await store.purge(datetime.now(UTC))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("routing purge failed: %s", exc)


async def main() -> None:
    kit.bootstrap("routing_service")
    settings = Settings.from_env()
    config = load_config(settings.service.config_path)  # kit.run_main reports a ConfigError
    url = db.database_url(settings.service.database_url, settings.service.data_dir, "routing")
    store = await RoutingStore.open(url, settings.schema)
    peers = Peers(settings.peers, settings.stats_ttl_s)
    purge = asyncio.create_task(purge_forever(store))
    try:
        kit.serve_metrics(settings.service.metrics_port)
        server, port, health_servicer = await create_server(
            settings.service.address, config, store, peers, settings.hold
        )
        log.info("routing_service listening on port %d", port)
        await kit.run_until_terminated(server, health_servicer)
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        await peers.close()
        await store.close()
