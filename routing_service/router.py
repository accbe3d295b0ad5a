"""The routing decisions with their state: admission, stage ranking, step reservations and
settlement. Joins the pure screen and strategies to the store and the peers; no gRPC here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from leadflow.common.v1 import lead_pb2
from leadflow.wire import LeadData
from routing_service import metrics
from routing_service.auction import run_auction
from routing_service.caps import Claim
from routing_service.duplicates import duplicate_key
from routing_service.hours import zone
from routing_service.peers import Peers
from routing_service.routing import (
    NO_ATTEMPTS,
    FlowPlan,
    LeadFacts,
    LeftOut,
    Offer,
    RoutingPlan,
    StagePlan,
    StepPlan,
    admission_hours,
    lead_claims,
    screen,
    step_claims,
)
from routing_service.store import (
    DuplicateClaim,
    Refusal,
    RoutingStore,
    SaleRecord,
    step_scope,
)
from routing_service.strategies import (
    by_deficit,
    by_price,
    by_priority,
    expected_revenue,
    has_priority_ties,
    rotation,
)

log = logging.getLogger(__name__)

# A reservation no gateway settles (it crashed mid-lead) lapses after this long. It must outlast
# the longest lead: every stage's deliveries with their retries. 15 minutes covers ten steps of
# a buyer with a 30 s timeout and 3 attempts; LEADFLOW_ROUTING_HOLD_SECONDS changes it.
DEFAULT_HOLD = timedelta(minutes=15)
# The read-only cap check before ranking asks for room for at least a cent.
PROBE_AMOUNT = Decimal("0.01")


@dataclass(frozen=True)
class Ranking:
    stage: StagePlan
    offers: list[Offer]
    skipped: list[LeftOut]


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str = ""
    check: str = ""  # hours | duplicates | caps
    first_stage: Ranking | None = None  # when asked for and admitted


@dataclass(frozen=True)
class SoldStep:
    stage_index: int
    step_index: int
    buyer_id: str


class Router:
    def __init__(
        self, plan: RoutingPlan, store: RoutingStore, peers: Peers, hold: timedelta = DEFAULT_HOLD
    ) -> None:
        self.plan = plan
        self._store = store
        self._peers = peers
        self._hold = hold

    # --- admission ----------------------------------------------------------------------------

    def _duplicate(self, flow: FlowPlan, lead: LeadData) -> DuplicateClaim | None:
        if flow.duplicates is None:
            return None
        digest = duplicate_key(lead.fields, flow.duplicates.fields)
        return DuplicateClaim(flow.id, digest, flow.duplicates.reason) if digest else None

    async def admit(
        self, lead: LeadData, purchase_price: Decimal, rank_first_stage: bool = False
    ) -> Admission:
        """Flow then source hours, the duplicate key, then flow and source caps (SPEC 2).

        With `rank_first_stage`, an admitted lead comes back with stage 0 ranked as `rank`
        would with no buyer sold yet: the gateway saves a round trip on every lead.
        """
        flow = self.plan.flow(lead.flow_id)
        facts = self.plan.facts(lead, purchase_price)
        reason = admission_hours(flow, facts)
        if reason is not None:
            return Admission(False, reason, "hours")
        claims = lead_claims(flow, facts, purchase_price)
        refusal = await self._store.admit(lead.id, self._duplicate(flow, lead), claims, self._hold)
        if refusal is None:
            if not rank_first_stage or not flow.stages:
                return Admission(True)
            ranking = await self._rank(flow.stages[0], facts, (), purchase_price)
            return Admission(True, first_stage=ranking)
        if refusal.rule is not None:
            metrics.CAP_REJECTIONS.labels(refusal.rule.scope).inc()
        return Admission(False, refusal.reason, refusal.check)

    # --- ranking ------------------------------------------------------------------------------

    async def rank(
        self,
        lead: LeadData,
        stage_index: int,
        sold_buyer_ids: Collection[str],
        purchase_price: Decimal,
    ) -> Ranking:
        stage = self.plan.stage(lead.flow_id, stage_index)
        return await self._rank(
            stage, self.plan.facts(lead, purchase_price), sold_buyer_ids, purchase_price
        )

    async def _rank(
        self,
        stage: StagePlan,
        facts: LeadFacts,
        sold_buyer_ids: Collection[str],
        purchase_price: Decimal,
    ) -> Ranking:
        screened = screen(stage, facts, sold_buyer_ids)
        skipped = screened.skipped
        eligible, capped_out = await self._within_caps(screened.eligible, facts)
        skipped += capped_out
        if not eligible:
            return Ranking(stage, [], skipped)
        offers, left_out = await self._order(stage, eligible, facts, purchase_price)
        return Ranking(stage, offers, skipped + left_out)

    async def _within_caps(
        self, steps: list[StepPlan], facts: LeadFacts
    ) -> tuple[list[StepPlan], list[LeftOut]]:
        claims: dict[int, list[Claim]] = {}
        for step in steps:
            if step.caps:
                claims[step.index] = step_claims(step, facts, PROBE_AMOUNT)
        if not any(claims.values()):
            return steps, []
        full = await self._store.usage([c for cs in claims.values() for c in cs])
        if not full:
            return steps, []
        eligible: list[StepPlan] = []
        skipped: list[LeftOut] = []
        for step in steps:
            blocking = next(
                (c for c in claims.get(step.index, ()) if (c.rule.key, c.window) in full), None
            )
            if blocking is None:
                eligible.append(step)
            else:
                metrics.CAP_REJECTIONS.labels(blocking.rule.scope).inc()
                skipped.append((step, blocking.rule.reason, NO_ATTEMPTS))
        return eligible, skipped

    async def _order(
        self, stage: StagePlan, eligible: list[StepPlan], facts: LeadFacts, purchase_price: Decimal
    ) -> tuple[list[Offer], list[LeftOut]]:
        lead = facts.lead
        strategy = stage.strategy
        if strategy == "auction":
            return await run_auction(stage, eligible, lead.to_proto(), purchase_price, self._peers)
        if strategy == "round_robin":
            first = await self._store.rotate(lead.flow_id, stage.index, [s.index for s in eligible])
            return [Offer(s) for s in rotation(eligible, first - 1)], []
        if strategy == "weighted":
            day = self._flow_day(lead)
            sales = await self._store.sales_on(lead.flow_id, stage.index, day)
            total = sum(sales.values())
            return [Offer(s) for s in by_deficit(eligible, stage.shares, sales, total)], []
        if strategy in ("highest_price", "performance"):
            return await self._by_value(stage, eligible, lead.to_proto(), purchase_price), []
        last_sold = None
        if has_priority_ties(eligible):
            last_sold = await self._store.last_sales(lead.flow_id, stage.index)
        return [Offer(s) for s in by_priority(eligible, last_sold)], []

    async def _by_value(
        self,
        stage: StagePlan,
        eligible: Sequence[StepPlan],
        lead: lead_pb2.Lead,
        purchase_price: Decimal,
    ) -> list[Offer]:
        quotes = await asyncio.gather(
            *(self._peers.quote(lead, stage.index, s.index, purchase_price) for s in eligible)
        )
        by_step = {s.index: q for s, q in zip(eligible, quotes, strict=True) if q is not None}
        prices = {index: quote.price for index, quote in by_step.items()}
        if stage.strategy == "performance":
            records = await self._peers.buyer_records([s.buyer_id for s in eligible])
            ranked = by_price(eligible, expected_revenue(eligible, prices, records))
        else:
            ranked = by_price(eligible, prices)
        return [
            Offer(s, by_step[s.index].price, by_step[s.index].audit)
            if s.index in by_step
            else Offer(s)
            for s in ranked
        ]

    def _flow_day(self, lead: LeadData) -> str:
        flow = self.plan.flow(lead.flow_id)
        return lead.submit_time.astimezone(zone(flow.zone)).date().isoformat()

    # --- reservations and settlement ----------------------------------------------------------

    async def reserve_step(
        self, lead: LeadData, stage_index: int, step_index: int, sale_price: Decimal
    ) -> Refusal | None:
        step = self.plan.step(lead.flow_id, stage_index, step_index)
        claims = step_claims(step, self.plan.facts(lead), sale_price)
        refusal = await self._store.reserve(
            lead.id, step_scope(stage_index, step_index), claims, self._hold
        )
        if refusal is not None and refusal.rule is not None:
            metrics.CAP_REJECTIONS.labels(refusal.rule.scope).inc()
        return refusal

    async def settle_step(
        self, lead: LeadData, stage_index: int, step_index: int, sold: bool, sale_price: Decimal
    ) -> int:
        step = self.plan.step(lead.flow_id, stage_index, step_index)
        final = step_claims(step, self.plan.facts(lead), sale_price) if sold else []
        return await self._store.settle(lead.id, step_scope(stage_index, step_index), sold, final)

    async def resolve_step(
        self, lead_id: str, stage_index: int, step_index: int, sold: bool
    ) -> int:
        """An unknown offer resolved: commit its held reservations at the amounts held (the
        quoted sale price), or release them. What is not held any more is left alone, so a
        repeat changes nothing."""
        return await self._store.settle(lead_id, step_scope(stage_index, step_index), sold)

    async def settle_lead(
        self,
        lead: LeadData,
        accepted: bool,
        sales: Sequence[SoldStep],
        unknown: Sequence[SoldStep] = (),
    ) -> tuple[int, int]:
        flow = self.plan.flow(lead.flow_id)
        if not flow.keeps_state:
            return 0, 0  # nothing was reserved and no strategy counts its sales
        duplicate = self._duplicate(flow, lead)
        until = (
            lead.submit_time + timedelta(days=flow.duplicates.within_days)
            if flow.duplicates is not None
            else None
        )
        day = self._flow_day(lead)
        records = [SaleRecord(flow.id, s.stage_index, s.step_index, s.buyer_id, day) for s in sales]
        return await self._store.settle_lead(
            lead.id,
            accepted,
            duplicate,
            until,
            records,
            lead.submit_time,
            [step_scope(s.stage_index, s.step_index) for s in unknown],
        )
