"""ledger_service: what it runs on (open_deps) and its server (create_server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from leadflow import db, kit
from leadflow.config import Config
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from ledger_service import metrics
from ledger_service.config import Settings
from ledger_service.servicer import LedgerServicer
from ledger_service.store import LedgerStore

SERVICE_NAME = ledger_service_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


@dataclass(frozen=True)
class Deps:
    """The journal's store (the caller owns it) and the configuration, whose money series are
    exported at 0 from the start (none without one)."""

    store: LedgerStore
    config: Config | None = None


async def create_server(settings: Settings, deps: Deps) -> kit.Running:
    """Start the ledger on settings.address (port 0 picks a free one)."""
    if deps.config is not None:
        metrics.start_at_zero(deps.config)
    server, port, health = await kit.start_service(
        ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server,
        LedgerServicer(deps.store),
        SERVICE_NAME,
        settings.address,
    )
    return kit.Running(server, port, health)


@asynccontextmanager
async def open_deps(settings: Settings, config: Config) -> AsyncIterator[Deps]:
    url = db.database_url(settings.database_url, settings.data_dir, "ledger")
    store = await LedgerStore.open(url, settings.db_schema)
    try:
        yield Deps(store, config)
    finally:
        await store.close()
