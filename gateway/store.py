"""gateway storage: claiming and completing idempotency keys. The only module using SQLAlchemy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.tables import Base, IdempotencyKey, LedgerOutbox
from leadflow.db import create_schema

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class StoredResponse:
    status: int
    content_type: str
    body: bytes


class KeyInProgress(Exception):
    """Another request with the same key is still being processed."""


class GatewayStore:
    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self._engine = engine
        self._schema = schema
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create_schema(self) -> None:
        await create_schema(self._engine, self._schema, Base.metadata)

    async def claim(self, source_id: str, key: str, wait_s: float = 30.0) -> StoredResponse | None:
        """None when this request owns the key and must process the lead; otherwise the first
        response (waiting while a concurrent first request is still running)."""
        try:
            async with self._sessions.begin() as session:
                session.add(
                    IdempotencyKey(source_id=source_id, key=key, created_time=datetime.now(UTC))
                )
            return None
        except IntegrityError:
            pass
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            async with self._sessions() as session:
                row = await session.get(IdempotencyKey, (source_id, key))
            if row is None:  # the first request failed and released it: try to own it again
                return await self.claim(
                    source_id, key, max(0.0, deadline - asyncio.get_running_loop().time())
                )
            if row.body is not None and row.status is not None and row.content_type is not None:
                return StoredResponse(row.status, row.content_type, row.body)
            if asyncio.get_running_loop().time() >= deadline:
                raise KeyInProgress(key)
            await asyncio.sleep(POLL_SECONDS)

    async def complete(self, source_id: str, key: str, response: StoredResponse) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.source_id == source_id, IdempotencyKey.key == key)
                .values(
                    status=response.status, content_type=response.content_type, body=response.body
                )
            )

    async def release(self, source_id: str, key: str) -> None:
        """Give a claimed key back when its request could not finish, so a retry can run."""
        async with self._sessions.begin() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.source_id == source_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.body.is_(None),
                )
            )

    async def park(self, lead_id: str, request: bytes) -> None:
        """Keep a ledger record for replay; parking the same lead twice keeps the first."""
        try:
            async with self._sessions.begin() as session:
                session.add(
                    LedgerOutbox(lead_id=lead_id, created_time=datetime.now(UTC), request=request)
                )
        except IntegrityError:
            pass

    async def parked(self, limit: int = 100) -> list[tuple[str, bytes]]:
        """The oldest parked records first."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(LedgerOutbox.lead_id, LedgerOutbox.request)
                .order_by(LedgerOutbox.created_time)
                .limit(limit)
            )
            return [(lead_id, request) for lead_id, request in rows]

    async def unpark(self, lead_id: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(delete(LedgerOutbox).where(LedgerOutbox.lead_id == lead_id))
