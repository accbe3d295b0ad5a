"""Which steps of a stage may get a lead, and the admission checks before any stage (SPEC 2, 7).

The configuration is compiled once into a `RoutingPlan` (rule sets, territories, hours tables,
caps with their counter keys), so screening a lead against a stage of 1,000 buyers is a loop of
set lookups and compiled rules. A step is screened cheapest check first: already sold, territory,
hours, then the buyer's and the step's criteria; the first failing check is the skip reason.
Caps need the database and are checked by the servicer after this screen.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from leadflow.config import Buyer, Config, Flow, Stage
from leadflow.context import lead_context
from leadflow.wire import LeadData
from routing_service.caps import CapRule, Claim, claims
from routing_service.hours import OUTSIDE_HOURS, OpeningHours
from routing_service.territory import OUTSIDE_TERRITORY, LeadPlace, TerritoryMatcher

if TYPE_CHECKING:
    from leadflow.rules import RuleSet

ALREADY_SOLD = "Already sold to this buyer"
CRITERIA_NOT_MET = "Criteria not met"


@dataclass(frozen=True)
class StepPlan:
    index: int
    buyer_id: str
    buyer_ref: dict[str, str]  # the `buyer` variable rules see in this step's scope
    priority: int
    weight: Decimal
    criteria: tuple[RuleSet, ...]  # the buyer's, then the step's
    territory: TerritoryMatcher | None
    hours: OpeningHours | None
    caps: tuple[CapRule, ...]  # the buyer's, then the step's
    has_ping: bool

    @property
    def capped(self) -> bool:
        return bool(self.caps)


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    strategy: str
    sell: int
    min_bid: Decimal
    deadline_ms: int
    steps: tuple[StepPlan, ...]
    weights_total: Decimal


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


def _buyer_caps(config: Config, buyer: Buyer) -> tuple[CapRule, ...]:
    # A buyer's caps span every flow, so their windows cannot follow one flow's zone: they use
    # the buyer's zone, else the account's.
    zone = buyer.time_zone or config.account.time_zone
    return tuple(
        CapRule.compile(cap, f"buyer:{buyer.id}:{i}", "buyer", zone)
        for i, cap in enumerate(buyer.caps)
    )


def _stage_plan(config: Config, flow: Flow, s: int, stage: Stage) -> StagePlan:
    flow_zone = config.flow_time_zone(flow)
    steps = []
    for k, step in enumerate(stage.steps):
        buyer = config.buyers_by_id[step.buyer]
        criteria = tuple(
            spec.compiled for spec in (buyer.criteria, step.criteria) if spec is not None
        )
        territory = TerritoryMatcher.compile(buyer.territory) if buyer.territory else None
        hours = (
            OpeningHours.compile(buyer.hours, config.buyer_time_zone(buyer, flow))
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
                has_ping=buyer.ping is not None,
            )
        )
    return StagePlan(
        index=s,
        name=stage.name,
        strategy=stage.strategy,
        sell=stage.sell,
        min_bid=stage.min_bid,
        deadline_ms=stage.deadline_ms,
        steps=tuple(steps),
        weights_total=sum((step.weight for step in stage.steps), Decimal(0)),
    )


def _flow_plan(config: Config, flow: Flow) -> FlowPlan:
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
        stages=tuple(_stage_plan(config, flow, s, stage) for s, stage in enumerate(flow.stages)),
    )


class RoutingPlan:
    """The configuration compiled for routing: built once per process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.flows = {flow.id: _flow_plan(config, flow) for flow in config.flows}

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


@dataclass(frozen=True)
class Screen:
    eligible: list[StepPlan]
    skipped: list[tuple[StepPlan, str]]


def screen(stage: StagePlan, facts: LeadFacts, sold_buyer_ids: Collection[str]) -> Screen:
    """Every step of the stage either eligible (before caps) or skipped with its reason."""
    eligible: list[StepPlan] = []
    skipped: list[tuple[StepPlan, str]] = []
    place = facts.place
    for step in stage.steps:
        if step.buyer_id in sold_buyer_ids:
            skipped.append((step, ALREADY_SOLD))
            continue
        if step.territory is not None and not step.territory.contains(place):
            skipped.append((step, OUTSIDE_TERRITORY))
            continue
        if step.hours is not None and not facts.is_open(step.hours):
            skipped.append((step, OUTSIDE_HOURS))
            continue
        reason = None
        if step.criteria:
            context = facts.in_buyer_scope(step)
            for rule_set in step.criteria:
                if not rule_set.passes(context):
                    reason = rule_set.failure_reason(context) or CRITERIA_NOT_MET
                    break
        if reason is not None:
            skipped.append((step, reason))
        else:
            eligible.append(step)
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
