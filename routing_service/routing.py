"""Which steps of a stage may get a lead, and the admission checks before any stage (SPEC 2, 7).

The configuration is compiled once into a `RoutingPlan` (rule sets, territories, hours tables,
caps with their counter keys), so screening a lead against a stage of 1,000 buyers is a loop of
set lookups and compiled rules. A step is screened cheapest check first: already sold, territory,
hours, then the buyer's and the step's criteria; the first failing check is the skip reason.
Caps need the database and are checked by the servicer after this screen.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from leadflow.config import (
    Buyer,
    Config,
    Flow,
    Hours,
    HttpDelivery,
    RuleSetSpec,
    Stage,
    sale_pricing,
)
from leadflow.context import lead_context
from leadflow.wire import LeadData, PriceAudit
from routing_service.caps import CapRule, Claim, claims
from routing_service.hours import OUTSIDE_HOURS, OpeningHours
from routing_service.strategies import shares
from routing_service.territory import OUTSIDE_TERRITORY, LeadPlace, TerritoryMatcher

if TYPE_CHECKING:
    from leadflow.rules import RuleSet

ALREADY_SOLD = "Already sold to this buyer"
CRITERIA_NOT_MET = "Criteria not met"


@dataclass(frozen=True)
class Criterion:
    """A compiled criteria rule set; `shared` when it does not read `buyer`, so its result
    for a lead is the same in every step that uses it (evaluated once per lead)."""

    rule_set: RuleSet
    shared: bool


@dataclass(frozen=True)
class StepPlan:
    index: int
    buyer_id: str
    buyer_ref: dict[str, str]  # the `buyer` variable rules see in this step's scope
    priority: int
    weight: Decimal
    criteria: tuple[Criterion, ...]  # the buyer's, then the step's
    territory: TerritoryMatcher | None
    hours: OpeningHours | None
    caps: tuple[CapRule, ...]  # the buyer's, then the step's
    ping_timeout_ms: int  # 0: the buyer has no `ping` and bids its quoted sale price
    sale_pricing: str  # none | rules | service: where its sale price comes from

    @property
    def has_ping(self) -> bool:
        return self.ping_timeout_ms > 0

    @property
    def capped(self) -> bool:
        return bool(self.caps)


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    strategy: str
    sell: int
    exclusive: bool  # a sale in this stage ends the lead's distribution
    min_bid: Decimal
    deadline_ms: int
    steps: tuple[StepPlan, ...]
    shares: dict[int, float]  # weight/Σweights by step index, for `weighted`
    hours_tables: tuple[OpeningHours, ...]  # the distinct hours of the stage's buyers
    # By lead state (None: a state no territory lists): the steps whose territory names states
    # only and not that one (out, without a look), and every other step in configuration order.
    outside_by_state: dict[str | None, tuple[StepPlan, ...]]
    inside_by_state: dict[str | None, tuple[StepPlan, ...]]


@dataclass(frozen=True)
class DuplicatePlan:
    fields: tuple[str, ...]
    within_days: int
    reason: str


@dataclass(frozen=True)
class FlowPlan:
    id: str
    zone: str
    hours: OpeningHours | None
    source_hours: dict[str, OpeningHours | None]
    duplicates: DuplicatePlan | None
    caps: tuple[CapRule, ...]
    source_caps: dict[str, tuple[CapRule, ...]]
    stages: tuple[StagePlan, ...]
    require_sale: bool  # a lead no buyer takes fails

    @cached_property
    def keeps_state(self) -> bool:
        """Whether settling a lead of this flow has anything to write: a duplicate key, a cap
        reservation, or sales a strategy reads (weighted shares, priority ties)."""
        if self.duplicates is not None or self.caps or any(self.source_caps.values()):
            return True
        for stage in self.stages:
            if stage.strategy == "weighted" or any(step.caps for step in stage.steps):
                return True
            priorities = [step.priority for step in stage.steps]
            if stage.strategy == "priority" and len(set(priorities)) != len(priorities):
                return True
        return False


def _buyer_caps(config: Config, buyer: Buyer) -> tuple[CapRule, ...]:
    # A buyer's caps span every flow, so their windows cannot follow one flow's zone: they use
    # the buyer's zone, else the account's.
    zone = buyer.time_zone or config.account.time_zone
    return tuple(
        CapRule.compile(cap, f"buyer:{buyer.id}:{i}", "buyer", zone)
        for i, cap in enumerate(buyer.caps)
    )


class _Interned:
    """Equal hours tables and criteria compiled once, so a lead evaluates each once."""

    def __init__(self) -> None:
        self.hours: dict[tuple[str, tuple[tuple[tuple[int, int], ...], ...]], OpeningHours] = {}
        self.criteria: dict[str, Criterion] = {}

    def opening(self, hours: Hours, zone: str) -> OpeningHours:
        compiled = OpeningHours.compile(hours, zone)
        return self.hours.setdefault((compiled.zone, compiled.days), compiled)

    def criterion(self, spec: RuleSetSpec) -> Criterion:
        text = json.dumps(spec.model_dump(mode="json", exclude_none=True), sort_keys=True)
        found = self.criteria.get(text)
        if found is None:
            found = self.criteria[text] = Criterion(spec.compiled, "buyer" not in text)
        return found


def _stage_plan(config: Config, flow: Flow, s: int, stage: Stage, interned: _Interned) -> StagePlan:
    flow_zone = config.flow_time_zone(flow)
    steps = []
    for k, step in enumerate(stage.steps):
        buyer = config.buyers_by_id[step.buyer]
        criteria = tuple(
            interned.criterion(spec) for spec in (buyer.criteria, step.criteria) if spec is not None
        )
        territory = TerritoryMatcher.compile(buyer.territory) if buyer.territory else None
        hours = (
            interned.opening(buyer.hours, config.buyer_time_zone(buyer, flow))
            if buyer.hours is not None
            else None
        )
        step_caps = tuple(
            CapRule.compile(cap, f"step:{flow.id}:{s}:{k}:{i}", "step", flow_zone)
            for i, cap in enumerate(step.caps)
        )
        steps.append(
            StepPlan(
                index=k,
                buyer_id=buyer.id,
                buyer_ref={"id": buyer.id, "name": buyer.name},
                priority=step.priority if step.priority is not None else k + 1,
                weight=step.weight,
                criteria=criteria,
                territory=None if territory is None or territory.empty else territory,
                hours=hours,
                caps=_buyer_caps(config, buyer) + step_caps,
                ping_timeout_ms=buyer.ping.timeout_ms
                if isinstance(buyer.ping, HttpDelivery)
                else 0,
                sale_pricing=sale_pricing(step, buyer),
            )
        )
    return StagePlan(
        index=s,
        name=stage.name,
        strategy=stage.strategy,
        sell=stage.sell,
        exclusive=stage.exclusive,
        min_bid=stage.min_bid,
        deadline_ms=stage.deadline_ms,
        steps=tuple(steps),
        shares=shares(steps),
        hours_tables=tuple({id(p.hours): p.hours for p in steps if p.hours is not None}.values()),
        **_territory_index(steps),
    )


def _territory_index(steps: list[StepPlan]) -> dict[str, Any]:
    """Most buyers' territories are lists of states: split the stage once per state so a lead
    never looks at the steps its state rules out."""
    by_states = [
        (p, p.territory.states)
        for p in steps
        if p.territory is not None and not p.territory.has_postal
    ]
    states: set[str | None] = {None}
    for _, listed in by_states:
        states |= listed
    outside: dict[str | None, tuple[StepPlan, ...]] = {}
    inside: dict[str | None, tuple[StepPlan, ...]] = {}
    for state in states:
        out = {p.index for p, listed in by_states if state not in listed}
        outside[state] = tuple(p for p in steps if p.index in out)
        inside[state] = tuple(p for p in steps if p.index not in out)
    return {"outside_by_state": outside, "inside_by_state": inside}


def _flow_plan(config: Config, flow: Flow, interned: _Interned) -> FlowPlan:
    zone = config.flow_time_zone(flow)
    duplicates = (
        DuplicatePlan(
            tuple(flow.duplicates.fields), flow.duplicates.within_days, flow.duplicates.reason
        )
        if flow.duplicates is not None
        else None
    )
    return FlowPlan(
        id=flow.id,
        zone=zone,
        hours=OpeningHours.compile(flow.hours, zone) if flow.hours is not None else None,
        source_hours={
            entry.source: OpeningHours.compile(entry.hours, zone) if entry.hours else None
            for entry in flow.sources
        },
        duplicates=duplicates,
        caps=tuple(
            CapRule.compile(cap, f"flow:{flow.id}:{i}", "flow", zone)
            for i, cap in enumerate(flow.caps)
        ),
        source_caps={
            entry.source: tuple(
                CapRule.compile(cap, f"source:{flow.id}:{entry.source}:{i}", "source", zone)
                for i, cap in enumerate(entry.caps)
            )
            for entry in flow.sources
        },
        stages=tuple(
            _stage_plan(config, flow, s, stage, interned) for s, stage in enumerate(flow.stages)
        ),
        require_sale=flow.require_sale,
    )


class RoutingPlan:
    """The configuration compiled for routing: built once per process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        interned = _Interned()
        self.flows = {flow.id: _flow_plan(config, flow, interned) for flow in config.flows}

    def flow(self, flow_id: str) -> FlowPlan:
        try:
            return self.flows[flow_id]
        except KeyError:
            raise LookupError(f"unknown flow {flow_id!r}") from None

    def stage(self, flow_id: str, stage_index: int) -> StagePlan:
        flow = self.flow(flow_id)
        if not 0 <= stage_index < len(flow.stages):
            raise LookupError(f"flow {flow_id!r} has no stage {stage_index}")
        return flow.stages[stage_index]

    def step(self, flow_id: str, stage_index: int, step_index: int) -> StepPlan:
        stage = self.stage(flow_id, stage_index)
        if not 0 <= step_index < len(stage.steps):
            raise LookupError(f"stage {stage_index} of flow {flow_id!r} has no step {step_index}")
        return stage.steps[step_index]

    def facts(self, lead: LeadData, purchase_price: Decimal | None = None) -> LeadFacts:
        if lead.flow_id not in self.flows:
            raise LookupError(f"unknown flow {lead.flow_id!r}")
        if lead.source_id not in self.config.sources_by_id:
            raise LookupError(f"unknown source {lead.source_id!r}")
        return LeadFacts(self.config, lead, purchase_price)


@dataclass
class LeadFacts:
    """What routing reads from one lead, computed once per call."""

    config: Config
    lead: LeadData
    purchase_price: Decimal | None
    context: dict[str, Any] = field(init=False)
    place: LeadPlace = field(init=False)
    _open: dict[int, bool] = field(init=False, default_factory=dict)
    # Reasons (None: passed) of shared criteria, by rule set: the same for every step.
    criteria_results: dict[int, str | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.context = lead_context(self.config, self.lead, purchase_price=self.purchase_price)
        self.place = LeadPlace(self.lead.fields)

    @property
    def when(self) -> datetime:
        return self.lead.submit_time

    def is_open(self, hours: OpeningHours) -> bool:
        # Many buyers share a few hours tables' zones; each table is evaluated once per lead.
        key = id(hours)
        found = self._open.get(key)
        if found is None:
            found = self._open[key] = hours.is_open(self.when)
        return found

    def in_buyer_scope(self, step: StepPlan) -> dict[str, Any]:
        """The rule context with `buyer` set to this step's buyer."""
        self.context["buyer"] = step.buyer_ref
        return self.context


# A buyer's ping exchanges as delivery reported them: carried to the recipient event as they
# are, never read here.
Attempts = tuple[Any, ...]


class Offer(NamedTuple):
    """An eligible step in offer order, with the price routing decided on (if any)."""

    step: StepPlan
    price: Decimal | None = None
    audit: PriceAudit | None = None
    bid_id: str = ""
    attempts: Attempts = ()


# A step that is not offered the lead: (step, reason, ping attempts). A plain tuple because a
# stage of 1,000 buyers may skip hundreds per lead and a named tuple costs 5x more to build.
LeftOut = tuple[StepPlan, str, Attempts]
NO_ATTEMPTS: Attempts = ()


@dataclass(frozen=True)
class Screen:
    eligible: list[StepPlan]
    skipped: list[LeftOut]


def _failure(rule_set: RuleSet, context: dict[str, Any]) -> str | None:
    """None when the set passes, else its reason."""
    result = rule_set.evaluate(context)
    return None if result.passed else (result.reason or CRITERIA_NOT_MET)


def screen(stage: StagePlan, facts: LeadFacts, sold_buyer_ids: Collection[str]) -> Screen:
    """Every step of the stage either eligible (before caps) or skipped with its reason.

    The hot loop of routing (a stage may list 1,000 buyers): steps whose states-only territory
    rules the lead out are skipped in bulk (they come first in the skip list), hours tables are
    evaluated once per lead, shared criteria once per lead, and the checks are inlined. A sold
    buyer was in territory when it bought, so "already sold" still wins over other reasons.
    """
    place = facts.place
    state = place.state
    split = state if state in stage.inside_by_state else None
    skipped: list[LeftOut] = [
        (step, OUTSIDE_TERRITORY, NO_ATTEMPTS) for step in stage.outside_by_state[split]
    ]
    eligible: list[StepPlan] = []
    keep, skip = eligible.append, skipped.append
    open_now = {id(hours): facts.is_open(hours) for hours in stage.hours_tables}
    results = facts.criteria_results
    context = facts.context
    for step in stage.inside_by_state[split]:
        if sold_buyer_ids and step.buyer_id in sold_buyer_ids:
            skip((step, ALREADY_SOLD, NO_ATTEMPTS))
            continue
        territory = step.territory
        if (
            territory is not None
            and territory.has_postal
            and state not in territory.states
            and not territory.contains_postal(place)
        ):
            skip((step, OUTSIDE_TERRITORY, NO_ATTEMPTS))
            continue
        if step.hours is not None and not open_now[id(step.hours)]:
            skip((step, OUTSIDE_HOURS, NO_ATTEMPTS))
            continue
        if step.criteria:
            context["buyer"] = step.buyer_ref
            reason = None
            for criterion in step.criteria:
                rule_set = criterion.rule_set
                if criterion.shared:
                    key = id(rule_set)
                    if key in results:
                        reason = results[key]
                    else:
                        reason = results[key] = _failure(rule_set, context)
                else:
                    reason = _failure(rule_set, context)
                if reason is not None:
                    break
            if reason is not None:
                skip((step, reason, NO_ATTEMPTS))
                continue
        keep(step)
    return Screen(eligible, skipped)


def admission_hours(flow: FlowPlan, facts: LeadFacts) -> str | None:
    """The hours reason when the flow, then the lead's source, is closed; None when open."""
    for hours in (flow.hours, flow.source_hours.get(facts.lead.source_id)):
        if hours is not None and not facts.is_open(hours):
            return OUTSIDE_HOURS
    return None


def lead_claims(flow: FlowPlan, facts: LeadFacts, purchase_price: Decimal) -> list[Claim]:
    """The flow's caps, then the source's, that this lead counts against (spend: the price)."""
    rules = flow.caps + flow.source_caps.get(facts.lead.source_id, ())
    if not rules:
        return []
    facts.context["buyer"] = {}
    return claims(rules, facts.context, facts.when, purchase_price)


def step_claims(step: StepPlan, facts: LeadFacts, sale_price: Decimal) -> list[Claim]:
    """The buyer's caps, then the step's, that this lead counts against (revenue: the price)."""
    if not step.caps:
        return []
    return claims(step.caps, facts.in_buyer_scope(step), facts.when, sale_price)
