"""routing storage: cap reservations, duplicate keys, rotation cursors and stage sales.

The only module using SQLAlchemy. Correctness with several replicas on one database rests on
single statements the database applies atomically, never on locks in this process:

- a cap reservation is `UPDATE cap_counters SET held = held + 1 WHERE used + held + 1 <= max`
  (PostgreSQL re-evaluates the condition after waiting for a concurrent writer's row lock;
  SQLite has one writer at a time). A lead's claims are taken in one transaction, sorted by key
  so that two transactions never wait on each other in a cycle; if one is full, all roll back.
- a duplicate key is an `INSERT … ON CONFLICT DO UPDATE … WHERE <the holder lapsed>`: of two
  identical leads, the second waits on the first's uncommitted row and then finds it taken.
- the round-robin cursor moves in one `UPDATE … SET last_step = CASE …` that picks the next
  eligible step from the current value.

Every write transaction starts with a write statement, so SQLite takes its write lock up front
(waiting on busy_timeout) instead of failing to upgrade a read snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from leadflow import db
from routing_service.caps import CapRule, Claim
from routing_service.tables import (
    Base,
    CapCounter,
    CapHold,
    DuplicateKey,
    RotationCursor,
    StageSale,
)

log = logging.getLogger(__name__)

LEAD_SCOPE = "lead"
# The expiry of a hold kept for an offer whose fate is unknown: it stays until it is resolved.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)
# Sales rows older than this are deleted: weighted shares read today's, priority ties the last.
SALES_KEPT_DAYS = 35


def step_scope(stage_index: int, step_index: int) -> str:
    return f"step:{stage_index}:{step_index}"


@dataclass(frozen=True)
class DuplicateClaim:
    flow_id: str
    digest: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """Why admission or a reservation failed: `duplicates` or `caps`, with the reason."""

    check: str
    reason: str
    rule: CapRule | None = None


@dataclass(frozen=True)
class SaleRecord:
    flow_id: str
    stage_index: int
    step_index: int
    buyer_id: str
    day: str


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def _ordered(claims: Sequence[Claim]) -> list[Claim]:
    # One global lock order for every transaction: no deadlocks between replicas.
    return sorted(claims, key=lambda c: (c.rule.key, c.window))


class RoutingStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    @classmethod
    async def open(cls, url: str, schema: str) -> RoutingStore:
        """Connect to `url` and create routing's schema and tables if they are missing."""
        return cls(await db.open_engine(url, schema, Base.metadata))

    async def close(self) -> None:
        await self._engine.dispose()

    def _insert(self, table: Any) -> Any:
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    # --- caps ---------------------------------------------------------------------------------

    async def _ensure_counter(self, conn: AsyncConnection, claim: Claim) -> None:
        await conn.execute(
            self._insert(CapCounter)
            .values(
                cap_key=claim.rule.key,
                window_start=claim.window,
                window_end=claim.rule.window_end(claim.window),
                used_leads=0,
                used_micros=0,
                held_leads=0,
                held_micros=0,
            )
            .on_conflict_do_nothing(index_elements=["cap_key", "window_start"])
        )

    async def _take(self, conn: AsyncConnection, claim: Claim) -> bool:
        """One conditional increment of the window's held amount; False when it is full."""
        max_leads, max_micros = claim.limit
        conditions = [CapCounter.cap_key == claim.rule.key, CapCounter.window_start == claim.window]
        if max_leads is not None:
            conditions.append(CapCounter.used_leads + CapCounter.held_leads + 1 <= max_leads)
        if max_micros is not None:
            conditions.append(
                CapCounter.used_micros + CapCounter.held_micros + claim.micros <= max_micros
            )
        result = await conn.execute(
            update(CapCounter)
            .where(*conditions)
            .values(
                held_leads=CapCounter.held_leads + 1,
                held_micros=CapCounter.held_micros + claim.micros,
            )
        )
        return bool(result.rowcount)

    async def _sweep(self, conn: AsyncConnection, key: str, window: datetime, now: datetime) -> int:
        """Give back what expired holds on one window kept (their gateway never settled).

        A hold its late gateway is settling right now is locked by that settlement and skipped
        (PostgreSQL SKIP LOCKED): the settlement gives it back, and waiting for it here while
        holding the counter's row lock could deadlock with it.
        """
        lapsed = (
            select(CapHold.lead_id, CapHold.scope, CapHold.cap_key)
            .where(
                CapHold.cap_key == key,
                CapHold.window_start == window,
                CapHold.expires_time < now,
            )
            .with_for_update(skip_locked=True)
        )
        rows = (
            await conn.execute(
                delete(CapHold)
                .where(tuple_(CapHold.lead_id, CapHold.scope, CapHold.cap_key).in_(lapsed))
                .returning(CapHold.micros)
            )
        ).all()
        if rows:
            await conn.execute(
                update(CapCounter)
                .where(CapCounter.cap_key == key, CapCounter.window_start == window)
                .values(
                    held_leads=CapCounter.held_leads - len(rows),
                    held_micros=CapCounter.held_micros - sum(int(r[0]) for r in rows),
                )
            )
            log.info("released %d expired reservations on cap %s", len(rows), key)
        return len(rows)

    async def _reserve_in(
        self,
        conn: AsyncConnection,
        lead_id: str,
        scope: str,
        claims: Sequence[Claim],
        expires: datetime,
        now: datetime,
    ) -> None:
        for claim in _ordered(claims):
            await self._ensure_counter(conn, claim)
            inserted = await conn.execute(
                self._insert(CapHold)
                .values(
                    lead_id=lead_id,
                    scope=scope,
                    cap_key=claim.rule.key,
                    window_start=claim.window,
                    micros=claim.micros,
                    expires_time=expires,
                )
                .on_conflict_do_nothing(index_elements=["lead_id", "scope", "cap_key"])
                .returning(CapHold.lead_id)
            )
            if inserted.first() is None:
                continue  # a retried request: this lead already holds the cap
            if await self._take(conn, claim):
                continue
            if await self._sweep(conn, claim.rule.key, claim.window, now) and await self._take(
                conn, claim
            ):
                continue
            raise _Refused(Refusal("caps", claim.rule.reason, claim.rule))

    async def reserve(
        self, lead_id: str, scope: str, claims: Sequence[Claim], ttl: timedelta
    ) -> Refusal | None:
        """Hold one unit (and its money) on every claimed window, all or none."""
        if not claims:
            return None
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                await self._reserve_in(conn, lead_id, scope, claims, now + ttl, now)
        except _Refused as refused:
            return refused.refusal
        return None

    async def _settle_holds(
        self,
        conn: AsyncConnection,
        lead_id: str,
        scopes: Collection[str] | None,
        commit: Collection[str],
        final: Sequence[Claim] = (),
        keep: Collection[str] = (),
    ) -> tuple[int, int]:
        """Delete a lead's holds (in `scopes`, or all but those in `keep`) and give their amounts
        back; those whose scope is in `commit` are counted as used instead. Returns (committed,
        released).

        `final` gives committed amounts known only now (a sale price after delivery); a final
        claim whose hold has gone (lapsed and swept) is still counted: the sale happened.
        Counters are updated in the one global key order, like reservations.
        """
        where = [CapHold.lead_id == lead_id]
        if scopes is not None:
            where.append(CapHold.scope.in_(list(scopes)))
        if keep:
            where.append(CapHold.scope.not_in(list(keep)))
        held = (
            await conn.execute(
                delete(CapHold)
                .where(*where)
                .returning(CapHold.scope, CapHold.cap_key, CapHold.window_start, CapHold.micros)
            )
        ).all()
        amounts = {(c.rule.key, c.window): c.micros for c in final}
        # Per window: [held leads, held micros] to give back, [used leads, used micros] to add.
        deltas: dict[tuple[str, datetime], list[int]] = {}
        committed = released = 0
        for scope, key, window, micros in held:
            delta = deltas.setdefault((key, window), [0, 0, 0, 0])
            delta[0] += 1
            delta[1] += int(micros)
            if scope in commit:
                delta[2] += 1
                delta[3] += amounts.get((key, window), int(micros))
                committed += 1
            else:
                released += 1
        lapsed = [c for c in final if (c.rule.key, c.window) not in deltas]
        for claim in lapsed:
            deltas[(claim.rule.key, claim.window)] = [0, 0, 1, claim.micros]
            committed += 1
        for claim in sorted(lapsed, key=lambda c: (c.rule.key, c.window)):
            await self._ensure_counter(conn, claim)
        for (key, window), (held_leads, held_micros, used_leads, used_micros) in sorted(
            deltas.items()
        ):
            await conn.execute(
                update(CapCounter)
                .where(CapCounter.cap_key == key, CapCounter.window_start == window)
                .values(
                    held_leads=CapCounter.held_leads - held_leads,
                    held_micros=CapCounter.held_micros - held_micros,
                    used_leads=CapCounter.used_leads + used_leads,
                    used_micros=CapCounter.used_micros + used_micros,
                )
            )
        return committed, released

    async def settle(
        self, lead_id: str, scope: str, commit: bool, final: Sequence[Claim] = ()
    ) -> int:
        """Commit (with the `final` amounts) or release one scope's holds."""
        async with self._engine.begin() as conn:
            committed, released = await self._settle_holds(
                conn, lead_id, [scope], [scope] if commit else [], final if commit else ()
            )
        return committed + released

    async def usage(self, claims: Sequence[Claim]) -> set[tuple[str, datetime]]:
        """The claimed windows that cannot take this lead now (read only: ReserveStep decides).

        Holds past their expiry are not counted, so an abandoned reservation never keeps a
        step out of the ranking; the next reservation on that window sweeps it.
        """
        if not claims:
            return set()
        pairs = list({(c.rule.key, c.window) for c in claims})
        async with self._engine.connect() as conn:
            counters = {
                (key, window): (int(leads), int(micros))
                for key, window, leads, micros in await conn.execute(
                    select(
                        CapCounter.cap_key,
                        CapCounter.window_start,
                        CapCounter.used_leads + CapCounter.held_leads,
                        CapCounter.used_micros + CapCounter.held_micros,
                    ).where(tuple_(CapCounter.cap_key, CapCounter.window_start).in_(pairs))
                )
            }
            full = [claim for claim in claims if not _fits(claim, counters)]
            if not full:
                return set()
            expired = {
                (key, window): (int(n), int(micros or 0))
                for key, window, n, micros in await conn.execute(
                    select(
                        CapHold.cap_key,
                        CapHold.window_start,
                        func.count(),
                        func.sum(CapHold.micros),
                    )
                    .where(
                        tuple_(CapHold.cap_key, CapHold.window_start).in_(
                            [(c.rule.key, c.window) for c in full]
                        ),
                        CapHold.expires_time < datetime.now(UTC),
                    )
                    .group_by(CapHold.cap_key, CapHold.window_start)
                )
            }
        live = {
            pair: (leads - expired.get(pair, (0, 0))[0], micros - expired.get(pair, (0, 0))[1])
            for pair, (leads, micros) in counters.items()
        }
        return {(c.rule.key, c.window) for c in full if not _fits(c, live)}

    async def counter(self, key: str, window: datetime) -> tuple[int, int, int, int] | None:
        """(used leads, used micros, held leads, held micros) of one window: for tests and ops."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        CapCounter.used_leads,
                        CapCounter.used_micros,
                        CapCounter.held_leads,
                        CapCounter.held_micros,
                    ).where(CapCounter.cap_key == key, CapCounter.window_start == window)
                )
            ).first()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    # --- admission ----------------------------------------------------------------------------

    async def admit(
        self,
        lead_id: str,
        duplicate: DuplicateClaim | None,
        claims: Sequence[Claim],
        ttl: timedelta,
    ) -> Refusal | None:
        """Claim the duplicate key, then reserve the flow and source caps: all or nothing."""
        if duplicate is None and not claims:
            return None
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                if duplicate is not None:
                    await self._claim_duplicate(conn, lead_id, duplicate, now, now + ttl)
                await self._reserve_in(conn, lead_id, LEAD_SCOPE, claims, now + ttl, now)
        except _Refused as refused:
            return refused.refusal
        return None

    async def _claim_duplicate(
        self,
        conn: AsyncConnection,
        lead_id: str,
        duplicate: DuplicateClaim,
        now: datetime,
        hold_until: datetime,
    ) -> None:
        insert = self._insert(DuplicateKey)
        statement = (
            insert.values(
                flow_id=duplicate.flow_id,
                digest=duplicate.digest,
                lead_id=lead_id,
                committed=False,
                expires_time=hold_until,
            )
            .on_conflict_do_update(
                index_elements=["flow_id", "digest"],
                set_={
                    "lead_id": insert.excluded.lead_id,
                    "committed": False,
                    "expires_time": insert.excluded.expires_time,
                },
                # Taken over only when the earlier lead's key has lapsed (or it is this lead).
                where=(DuplicateKey.expires_time < now) | (DuplicateKey.lead_id == lead_id),
            )
            .returning(DuplicateKey.lead_id)
        )
        if (await conn.execute(statement)).first() is None:
            raise _Refused(Refusal("duplicates", duplicate.reason))

    # --- the end of a lead --------------------------------------------------------------------

    async def settle_lead(
        self,
        lead_id: str,
        accepted: bool,
        duplicate: DuplicateClaim | None,
        duplicate_until: datetime | None,
        sales: Sequence[SaleRecord],
        sold_time: datetime,
        unknown: Collection[str] = (),
    ) -> tuple[int, int]:
        """Commit (accepted) or release the lead's admission; commit the holds of sold steps
        that were not settled yet (SettleStep never arrived), keep those of the `unknown` step
        scopes held until they are resolved, and release every other; count its sales."""
        commit = {step_scope(sale.stage_index, sale.step_index) for sale in sales}
        if accepted:
            commit.add(LEAD_SCOPE)
        async with self._engine.begin() as conn:
            # The duplicate key before any counter, as in admission: one lock order.
            if duplicate is not None:
                key = (DuplicateKey.flow_id == duplicate.flow_id) & (
                    DuplicateKey.digest == duplicate.digest
                )
                if accepted and duplicate_until is not None:
                    await conn.execute(
                        update(DuplicateKey)
                        .where(key, DuplicateKey.lead_id == lead_id)
                        .values(committed=True, expires_time=duplicate_until)
                    )
                else:
                    await conn.execute(
                        delete(DuplicateKey).where(key, DuplicateKey.lead_id == lead_id)
                    )
            for sale in sorted(sales, key=lambda s: (s.flow_id, s.stage_index, s.buyer_id)):
                await self._count_sale(conn, sale, sold_time)
            if unknown:
                # SPEC 8.1: an offer whose fate is unknown keeps its holds, never lapsing, until
                # ResolveStep commits or releases them (a hold already resolved is not here).
                await conn.execute(
                    update(CapHold)
                    .where(CapHold.lead_id == lead_id, CapHold.scope.in_(list(unknown)))
                    .values(expires_time=NEVER)
                )
            return await self._settle_holds(conn, lead_id, None, commit, keep=unknown)

    async def _count_sale(self, conn: AsyncConnection, sale: SaleRecord, when: datetime) -> None:
        insert = self._insert(StageSale)
        await conn.execute(
            insert.values(
                flow_id=sale.flow_id,
                stage_index=sale.stage_index,
                buyer_id=sale.buyer_id,
                day=sale.day,
                sales=1,
                last_sold_time=when,
            ).on_conflict_do_update(
                index_elements=["flow_id", "stage_index", "buyer_id", "day"],
                set_={
                    "sales": StageSale.sales + 1,
                    "last_sold_time": insert.excluded.last_sold_time,
                },
            )
        )

    # --- strategies' state --------------------------------------------------------------------

    async def rotate(self, flow_id: str, stage_index: int, eligible: Sequence[int]) -> int:
        """Move a round-robin cursor to the next eligible step after it and return that step."""
        ordered = sorted(set(eligible))
        cursor = RotationCursor.last_step
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(RotationCursor)
                .values(flow_id=flow_id, stage_index=stage_index, last_step=-1)
                .on_conflict_do_nothing(index_elements=["flow_id", "stage_index"])
            )
            row = (
                await conn.execute(
                    update(RotationCursor)
                    .where(
                        RotationCursor.flow_id == flow_id,
                        RotationCursor.stage_index == stage_index,
                    )
                    .values(last_step=case(*[(cursor < i, i) for i in ordered], else_=ordered[0]))
                    .returning(RotationCursor.last_step)
                )
            ).first()
        assert row is not None
        return int(row[0])

    async def sales_on(self, flow_id: str, stage_index: int, day: str) -> dict[str, int]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(StageSale.buyer_id, StageSale.sales).where(
                    StageSale.flow_id == flow_id,
                    StageSale.stage_index == stage_index,
                    StageSale.day == day,
                )
            )
            return {buyer: int(sales) for buyer, sales in rows}

    async def last_sales(self, flow_id: str, stage_index: int) -> dict[str, datetime]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(StageSale.buyer_id, func.max(StageSale.last_sold_time))
                .where(StageSale.flow_id == flow_id, StageSale.stage_index == stage_index)
                .group_by(StageSale.buyer_id)
            )
            return {buyer: db_time(when) for buyer, when in rows if when is not None}

    # --- housekeeping -------------------------------------------------------------------------

    async def purge(self, now: datetime) -> None:
        """Delete what no decision reads any more: lapsed holds (giving back what they held),
        ended windows, lapsed duplicate keys and old sales."""
        async with self._engine.connect() as conn:
            lapsed = (
                await conn.execute(
                    select(CapHold.cap_key, CapHold.window_start)
                    .where(CapHold.expires_time < now)
                    .distinct()
                )
            ).all()
        for key, window in sorted(lapsed):
            async with self._engine.begin() as conn:
                await self._sweep(conn, key, window, now)
        day_ago = now - timedelta(days=1)
        async with self._engine.begin() as conn:
            await conn.execute(delete(CapCounter).where(CapCounter.window_end < day_ago))
            await conn.execute(delete(DuplicateKey).where(DuplicateKey.expires_time < now))
            oldest = (now - timedelta(days=SALES_KEPT_DAYS)).date().isoformat()
            await conn.execute(delete(StageSale).where(StageSale.day < oldest))


def db_time(value: datetime | str) -> datetime:
    """An aggregate's datetime: SQLite hands back text (func.max loses the column type)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fits(claim: Claim, usage: dict[tuple[str, datetime], tuple[int, int]]) -> bool:
    leads, micros = usage.get((claim.rule.key, claim.window), (0, 0))
    max_leads, max_micros = claim.limit
    if max_leads is not None and leads + 1 > max_leads:
        return False
    return max_micros is None or micros + claim.micros <= max_micros
