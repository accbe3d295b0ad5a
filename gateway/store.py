"""gateway storage: claiming and completing idempotency keys. The only module using SQLAlchemy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.tables import Base, IdempotencyKey, LedgerOutbox, Ping
from leadflow.db import create_schema

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class StoredResponse:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class PingQuote:
    """The price an inbound ping quoted (SPEC 5.2), in micros."""

    ping_id: str
    price_micros: int
    expires_time: datetime


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

    async def put_ping(self, flow_id: str, source_id: str, quote: PingQuote) -> None:
        """Keep a ping's quote; pings expired for a day are deleted on the way."""
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            await session.execute(delete(Ping).where(Ping.expires_time < now - timedelta(days=1)))
            session.add(
                Ping(
                    ping_id=quote.ping_id,
                    flow_id=flow_id,
                    source_id=source_id,
                    price_micros=quote.price_micros,
                    created_time=now,
                    expires_time=quote.expires_time,
                )
            )

    async def take_ping(self, ping_id: str, flow_id: str, source_id: str) -> PingQuote | None:
        """Use a ping once: one conditional UPDATE, so of two submits carrying it only one
        gets its price. None when unknown, expired, used, or for another flow or source."""
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    update(Ping)
                    .where(
                        Ping.ping_id == ping_id,
                        Ping.flow_id == flow_id,
                        Ping.source_id == source_id,
                        Ping.used_time.is_(None),
                        Ping.expires_time > now,
                    )
                    .values(used_time=now)
                    .returning(Ping.price_micros, Ping.expires_time)
                )
            ).first()
        return None if row is None else PingQuote(ping_id, int(row[0]), row[1])
