"""ledger_service: build the server (create_server) and run it as a process (main)."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health

from leadflow import db, kit
from leadflow.config import load_config
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from ledger_service import metrics
from ledger_service.config import Settings
from ledger_service.servicer import LedgerServicer
from ledger_service.store import LedgerStore

log = logging.getLogger(__name__)

SERVICE_NAME = ledger_service_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


async def create_server(
    settings: Settings, store: LedgerStore
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start the ledger on settings.address (port 0 picks a free one); returns the bound port."""
    return await kit.start_service(
        ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server,
        LedgerServicer(store),
        SERVICE_NAME,
        settings.address,
    )


async def main() -> None:
    kit.bootstrap("ledger_service")
    settings = Settings.from_env()
    url = db.database_url(settings.service.database_url, settings.service.data_dir, "ledger")
    store = await LedgerStore.open(url, settings.schema)
    try:
        metrics.start_at_zero(load_config(settings.service.config_path))
        kit.serve_metrics(settings.service.metrics_port)
        server, port, health_servicer = await create_server(settings, store)
        log.info("ledger_service listening on port %d", port)
        await kit.run_until_terminated(server, health_servicer)
    finally:
        await store.close()
