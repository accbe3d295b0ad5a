"""`leadflow migrate`: create every stateful service's schema and tables."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from leadflow import db


def _schemas() -> list[tuple[str, MetaData]]:
    # Imported here so the CLI's other commands do not load every service's tables.
    from delivery_service.tables import Base as DeliveryBase
    from gateway.tables import Base as GatewayBase
    from ledger_service.tables import Base as LedgerBase
    from routing_service.tables import Base as RoutingBase

    return [
        ("gateway", GatewayBase.metadata),
        ("ledger", LedgerBase.metadata),
        ("delivery", DeliveryBase.metadata),
        ("routing", RoutingBase.metadata),
    ]


async def migrate(database_url: str | None, data_dir: Path) -> None:
    for schema, meta in _schemas():
        engine = db.create_engine(db.database_url(database_url, data_dir, schema), schema)
        try:
            await db.create_schema(engine, schema, meta)
        finally:
            await engine.dispose()
