"""Which steps of a stage may get a lead, and in what order (SPEC section 7)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from leadflow.config import Config, Stage
from leadflow.context import lead_context
from leadflow.wire import LeadData


@dataclass(frozen=True)
class Candidate:
    step_index: int
    buyer_id: str


@dataclass(frozen=True)
class Skipped:
    step_index: int
    buyer_id: str
    reason: str


@dataclass(frozen=True)
class Ranking:
    stage: Stage
    candidates: list[Candidate]
    skipped: list[Skipped]


def rank_stage(
    config: Config, lead: LeadData, stage_index: int, sold_buyer_ids: Collection[str]
) -> Ranking:
    """Eligible steps in strategy order, and the ineligible ones with why.

    Only `priority` runs in this version (config_check refuses the others): ascending
    `priority`, a step without one ranks by its position, ties keep configuration order.
    """
    flow = config.flows_by_id[lead.flow_id]
    if not 0 <= stage_index < len(flow.stages):
        raise LookupError(f"flow {flow.id!r} has no stage {stage_index}")
    stage = flow.stages[stage_index]
    eligible: list[tuple[int, int, Candidate]] = []
    skipped: list[Skipped] = []
    for index, step in enumerate(stage.steps):
        buyer = config.buyers_by_id[step.buyer]
        if buyer.id in sold_buyer_ids:
            skipped.append(Skipped(index, buyer.id, "Already sold to this buyer"))
            continue
        context = lead_context(config, lead, buyer=buyer)
        reason = None
        for rule_set in (buyer.criteria, step.criteria):
            if rule_set is not None:
                result = rule_set.compiled.evaluate(context)
                if not result.passed:
                    reason = result.reason or "Criteria not met"
                    break
        if reason is not None:
            skipped.append(Skipped(index, buyer.id, reason))
            continue
        priority = step.priority if step.priority is not None else index + 1
        eligible.append((priority, index, Candidate(index, buyer.id)))
    eligible.sort(key=lambda item: (item[0], item[1]))
    return Ranking(stage, [candidate for _, _, candidate in eligible], skipped)
