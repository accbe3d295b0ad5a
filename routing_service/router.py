"""The routing decisions with their state: admission, stage ranking, step reservations and
settlement. Joins the pure screen and strategies to the store and the peers; no gRPC here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from leadflow.wire import LeadData
from routing_service import metrics
from routing_service.auction import run_auction
from routing_service.caps import Claim
from routing_service.duplicates import duplicate_key
from routing_service.hours import zone
from routing_service.peers import Peers
from routing_service.quotes import SaleQuotes
from routing_service.routing import (
    NO_ATTEMPTS,
    FlowPlan,
    LeadFacts,
    LeftOut,
    Offer,
    RoutingPlan,
    Screen,
    StagePlan,
    StepPlan,
    admission_hours,
    lead_claims,
    screen,
    step_claims,
)
from routing_service.store import (
    DuplicateClaim,
    FirstOffer,
    HeldStep,
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
    full: set[tuple[str, datetime]] | None = None  # the first stage's full cap windows
    held: HeldStep | None = None  # the first offer's step, reserved with the admission


@dataclass(frozen=True)
class SoldStep:
    """A step whose buyer took the lead, at its final sale price."""

    stage_index: int
    step_index: int
    buyer_id: str
    sale_price: Decimal = Decimal(0)


class Router:
    def __init__(
        self, plan: RoutingPlan, store: RoutingStore, peers: Peers, hold: timedelta = DEFAULT_HOLD
    ) -> None:
        self.plan = plan
        self._store = store
        self.peers = peers
        self._hold = hold

    # --- admission ----------------------------------------------------------------------------

    def _duplicate(self, flow: FlowPlan, lead: LeadData) -> DuplicateClaim | None:
        if flow.duplicates is None:
            return None
        digest = duplicate_key(lead.fields, flow.duplicates.fields)
        return DuplicateClaim(flow.id, digest, flow.duplicates.reason) if digest else None

    async def admit(
        self,
        flow: FlowPlan,
        facts: LeadFacts,
        purchase_price: Decimal,
        first_stage: Screen | None = None,
        quotes: SaleQuotes | None = None,
    ) -> Admission:
        """Flow then source hours, the duplicate key, then flow and source caps (SPEC 2).

        With the first stage's screen, an admitted lead also learns which of its eligible steps'
        caps are full (`Admission.full`, for `rank`) and, when the step it is offered first is
        known without another round trip (a `priority` stage without ties, its price quoted),
        has that step's caps reserved (`Admission.held`): all in admission's transaction."""
        reason = admission_hours(flow, facts)
        if reason is not None:
            return Admission(False, reason, "hours")
        lead = facts.lead
        claims = lead_claims(flow, facts, purchase_price)
        probe = self._probe(first_stage.eligible, facts) if first_stage is not None else {}
        first_offer = None
        if first_stage is not None and quotes is not None:
            first_offer = self._first_offer(flow.stages[0], first_stage, probe, facts, quotes)
        refusal, full, held = await self._store.admit_and_probe(
            lead.id,
            self._duplicate(flow, lead),
            claims,
            self._hold,
            [c for cs in probe.values() for c in cs],
            first_offer,
        )
        if refusal is None:
            if held is not None and held.refusal is not None and held.refusal.rule is not None:
                metrics.CAP_REJECTIONS.labels(held.refusal.rule.scope).inc()
            return Admission(True, full=full, held=held)
        if refusal.rule is not None:
            metrics.CAP_REJECTIONS.labels(refusal.rule.scope).inc()
        return Admission(False, refusal.reason, refusal.check)

    # --- ranking ------------------------------------------------------------------------------

    async def rank(
        self,
        stage: StagePlan,
        facts: LeadFacts,
        sold_buyer_ids: Collection[str],
        purchase_price: Decimal,
        quotes: SaleQuotes,
        screened: Screen | None = None,
        full: set[tuple[str, datetime]] | None = None,
    ) -> Ranking:
        """The stage's offers in its strategy's order and its skipped steps. `screened` and
        `full` are the stage's screen and full cap windows when admission already has them."""
        if screened is None:
            screened = screen(stage, facts, sold_buyer_ids)
        skipped = list(screened.skipped)
        eligible, capped_out = await self._within_caps(screened.eligible, facts, full)
        skipped += capped_out
        if not eligible:
            return Ranking(stage, [], skipped)
        offers, left_out = await self._order(stage, eligible, facts, purchase_price, quotes)
        return Ranking(stage, offers, skipped + left_out)

    def _first_offer(
        self,
        stage: StagePlan,
        screened: Screen,
        probe: dict[int, list[Claim]],
        facts: LeadFacts,
        quotes: SaleQuotes,
    ) -> FirstOffer | None:
        """How admission's transaction picks the step the lead is offered first and its claims,
        or None when that needs more than the caps' usage: another strategy, or priority ties
        (last sales), or a price to ask a pricing service for."""
        if stage.strategy != "priority" or has_priority_ties(screened.eligible):
            return None

        def pick(full: set[tuple[str, datetime]]) -> tuple[str, Sequence[Claim]] | None:
            # Runs in the transaction (a worker thread on SQLite): pure, like `rank`'s choice.
            room = [
                step
                for step in screened.eligible
                if not any((c.rule.key, c.window) in full for c in probe.get(step.index, ()))
            ]
            if not room:
                return None
            step = by_priority(room)[0]
            quote = quotes.known(stage.index, step)
            if not step.caps or quote is None:
                return None
            return step_scope(stage.index, step.index), step_claims(step, facts, quote.price)

        return pick

    def _probe(self, steps: Sequence[StepPlan], facts: LeadFacts) -> dict[int, list[Claim]]:
        """The claims to check for room, by step: what the lead would take of each step's caps."""
        return {step.index: step_claims(step, facts, PROBE_AMOUNT) for step in steps if step.caps}

    async def _within_caps(
        self,
        steps: list[StepPlan],
        facts: LeadFacts,
        full: set[tuple[str, datetime]] | None = None,
    ) -> tuple[list[StepPlan], list[LeftOut]]:
        claims = self._probe(steps, facts)
        if not any(claims.values()):
            return steps, []
        if full is None:
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
        self,
        stage: StagePlan,
        eligible: list[StepPlan],
        facts: LeadFacts,
        purchase_price: Decimal,
        quotes: SaleQuotes,
    ) -> tuple[list[Offer], list[LeftOut]]:
        lead = facts.lead
        strategy = stage.strategy
        if strategy == "auction":
            return await run_auction(
                stage, eligible, lead.to_proto(), purchase_price, self.peers, quotes
            )
        if strategy == "round_robin":
            first = await self._store.rotate(lead.flow_id, stage.index, [s.index for s in eligible])
            return [Offer(s) for s in rotation(eligible, first - 1)], []
        if strategy == "weighted":
            day = self._flow_day(lead)
            sales = await self._store.sales_on(lead.flow_id, stage.index, day)
            total = sum(sales.values())
            return [Offer(s) for s in by_deficit(eligible, stage.shares, sales, total)], []
        if strategy in ("highest_price", "performance"):
            return await self._by_value(stage, eligible, quotes), []
        last_sold = None
        if has_priority_ties(eligible):
            last_sold = await self._store.last_sales(lead.flow_id, stage.index)
        return [Offer(s) for s in by_priority(eligible, last_sold)], []

    async def _by_value(
        self, stage: StagePlan, eligible: Sequence[StepPlan], quotes: SaleQuotes
    ) -> list[Offer]:
        found = await asyncio.gather(*(quotes.quote(stage.index, s) for s in eligible))
        by_step = {s.index: q for s, q in zip(eligible, found, strict=True) if q is not None}
        prices = {index: quote.price for index, quote in by_step.items()}
        if stage.strategy == "performance":
            records = await self.peers.buyer_records([s.buyer_id for s in eligible])
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
        self, facts: LeadFacts, stage_index: int, step: StepPlan, sale_price: Decimal
    ) -> Refusal | None:
        """Hold the lead on every cap of the step's buyer and of the step, all or none."""
        claims = step_claims(step, facts, sale_price)
        refusal = await self._store.reserve(
            facts.lead.id, step_scope(stage_index, step.index), claims, self._hold
        )
        if refusal is not None and refusal.rule is not None:
            metrics.CAP_REJECTIONS.labels(refusal.rule.scope).inc()
        return refusal

    async def release_step(self, lead_id: str, stage_index: int, step_index: int) -> int:
        """The buyer did not take the lead: give its step's holds back now, for other leads."""
        return await self._store.settle(lead_id, step_scope(stage_index, step_index), False)

    async def resolve_step(
        self, lead_id: str, stage_index: int, step_index: int, sold: bool
    ) -> int:
        """An unknown offer resolved: commit its held reservations at the amounts held (the
        quoted sale price), or release them. What is not held any more is left alone, so a
        repeat changes nothing."""
        return await self._store.settle(lead_id, step_scope(stage_index, step_index), sold)

    async def settle_lead(
        self,
        flow: FlowPlan,
        facts: LeadFacts,
        accepted: bool,
        sales: Sequence[SoldStep],
        unknown: Sequence[SoldStep] = (),
    ) -> tuple[int, int]:
        """One write for the end of the lead: its admission committed (accepted) or released,
        its sold steps' holds committed at their final sale prices, its unknown offers' holds
        kept until they are resolved, everything else released, and its sales counted."""
        if not flow.keeps_state:
            return 0, 0  # nothing was reserved and no strategy counts its sales
        lead = facts.lead
        duplicate = self._duplicate(flow, lead)
        until = (
            lead.submit_time + timedelta(days=flow.duplicates.within_days)
            if flow.duplicates is not None
            else None
        )
        day = self._flow_day(lead)
        records = [SaleRecord(flow.id, s.stage_index, s.step_index, s.buyer_id, day) for s in sales]
        final = [
            claim
            for sale in sales
            for claim in step_claims(
                flow.stages[sale.stage_index].steps[sale.step_index], facts, sale.sale_price
            )
        ]
        return await self._store.settle_lead(
            lead.id,
            accepted,
            duplicate,
            until,
            records,
            lead.submit_time,
            [step_scope(s.stage_index, s.step_index) for s in unknown],
            final,
        )
