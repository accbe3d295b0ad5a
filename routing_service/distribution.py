"""One lead's distribution (SPEC 2, steps 6 to 10), decided in one place: admission, the stages
in order, each offer priced, reserved, delivered and settled, then the lead's outcome and its
settlement in one write. Each recipient event is reported as it is decided, and an offer is
reported before it leaves (see `Report`), so the caller always knows which buyers may have the
lead, whatever happens to this process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from time import perf_counter
from typing import Any, Protocol

import grpc
from sqlalchemy.exc import SQLAlchemyError

from leadflow.common.v1 import lead_pb2
from leadflow.config import Config
from leadflow.deadlines import delivery_deadline
from leadflow.delivery.v1 import delivery_service_pb2
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.wire import LeadData, PriceAudit, from_proto, outcome_from_proto, to_proto
from routing_service.quotes import SaleQuotes
from routing_service.router import Router, SoldStep
from routing_service.routing import FlowPlan, LeadFacts, Offer, Screen, StagePlan, screen
from routing_service.store import HeldStep, step_scope

log = logging.getLogger(__name__)

# Outcomes that allocate the lead to the buyer. A `queued` lead (a batch buyer's, waiting for its
# file) counts toward the stage's `sell`, ends an exclusive stage and satisfies `require_sale`
# like a sale: the buyer holds it and capacity is reserved for it; revenue waits for the file.
# So does an `unknown` offer (SPEC 8.1: the buyer may have it), whose holds stay held until it is
# resolved and which earns nothing until then.
ALLOCATED = frozenset({"success", "queued", "unknown"})
# Outcomes that are the buyer's sale for the caps and the strategies' counts now.
SOLD = frozenset({"success", "queued"})
# A failed DeliverLead call after which the buyer may have the lead: the call was sent (calls
# wait for a ready channel, so one never sent only ever ends at its deadline) and delivery died,
# became unreachable or did not answer in time. Any other status is delivery refusing the
# request before anything left.
FATE_UNKNOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    }
)
NOT_PROCESSED = "Lead could not be processed, try again later"
NO_BUYER = "No buyer accepted the lead"
# What an offer is recorded as if nothing more is heard of it (this process stops mid-offer).
IN_FLIGHT = "Offer interrupted before the buyer's answer: outcome unknown"

RecipientEvent = ledger_service_pb2.RecipientEvent
SKIP = lead_pb2.OUTCOME_SKIP
ERROR = lead_pb2.OUTCOME_ERROR
UNKNOWN = lead_pb2.OUTCOME_UNKNOWN


class Report(Protocol):
    """Where the lead's recipient events go as they are decided."""

    def decided(self, event: RecipientEvent) -> None:
        """A step is decided: skipped, or offered and answered (sent with the next message)."""

    async def offering(self, event: RecipientEvent) -> None:
        """An offer is about to leave: returns once the caller has it, raises if it is gone
        (the offer is then not made)."""

    async def flush(self) -> None:
        """Send what was decided now (a stage is over and another follows): the caller hears
        from routing at least once per stage."""


class PriceUnavailable(Exception):
    """A step's sale price could not be had: the lead cannot go on."""


@dataclass
class _Run:
    """One lead being distributed."""

    lead: LeadData
    proto: lead_pb2.Lead
    facts: LeadFacts
    purchase_price: Decimal
    quotes: SaleQuotes
    report: Report
    held: HeldStep | None = None  # the first offer's step, reserved with the admission
    recipients: int = 0
    offers: int = 0  # offerings reported: from the first, a buyer may have the lead
    sold_buyers: list[str] = field(default_factory=list)
    allocated: int = 0
    sales: list[SoldStep] = field(default_factory=list)
    unknown: list[SoldStep] = field(default_factory=list)

    def event(self, stage: StagePlan, step_index: int, buyer_id: str) -> RecipientEvent:
        self.recipients += 1
        return RecipientEvent(
            id=f"{self.lead.id}-{self.recipients}",
            stage_index=stage.index,
            stage_name=stage.name,
            strategy=stage.strategy,
            step_index=step_index,
            buyer_id=buyer_id,
        )


class Distributor:
    """The lead's path after acceptance; the only caller of delivery for real-time offers."""

    def __init__(self, router: Router, config: Config) -> None:
        self._router = router
        self._plan = router.plan
        self._currency = config.account.currency
        self._deadlines = {buyer.id: delivery_deadline(buyer.delivery) for buyer in config.buyers}

    async def distribute(
        self,
        lead: LeadData,
        proto: lead_pb2.Lead,
        purchase_price: Decimal,
        given_quotes: Mapping[tuple[int, int], Any],
        report: Report,
    ) -> tuple[str, str]:
        """The lead's outcome after distribution, and its reason: `failure` when admission
        refuses it or `require_sale` finds no buyer, `error` when it cannot go on before any
        buyer has it."""
        flow = self._plan.flow(lead.flow_id)
        facts = self._plan.facts(lead, purchase_price)
        # The first stage is screened before admission (pure: nothing is written) so that
        # admission also reads its steps' caps, in the same round trip.
        first = screen(flow.stages[0], facts, ())
        quotes = SaleQuotes(given_quotes, proto, purchase_price, self._router.peers)
        admission = await self._router.admit(flow, facts, purchase_price, first, quotes)
        if not admission.admitted:
            return "failure", admission.reason
        run = _Run(lead, proto, facts, purchase_price, quotes, report, held=admission.held)
        outcome, reason = "error", NOT_PROCESSED
        settle = True
        try:
            await self._stages(flow, run, first, admission.full)
        except PriceUnavailable:
            if run.allocated:
                # A buyer already has the lead: it goes no further, but it was processed (as
                # `error` the vendor would go unpaid and its duplicate key would be released,
                # so that resubmitting it could sell it again).
                outcome, reason = "success", ""
        except asyncio.CancelledError:
            # Cut off before any offer left: the gateway may start this lead again (admission
            # is idempotent per lead) and settling now could release what that call holds;
            # left alone, the holds lapse after the hold time or the new call settles them.
            settle = run.offers > 0
            raise
        else:
            outcome, reason = "success", ""
            if flow.require_sale and not run.allocated:
                outcome, reason = "failure", NO_BUYER
        finally:
            # Also when this call is cut short after an offer: what was sold stays sold, the
            # rest is released now rather than lapsing after the hold time.
            if settle:
                await self._settle(flow, run, accepted=outcome == "success")
        return outcome, reason

    async def _stages(
        self, flow: FlowPlan, run: _Run, first: Screen, full: set[tuple[str, datetime]] | None
    ) -> None:
        for stage in flow.stages:
            ranking = await self._router.rank(
                stage,
                run.facts,
                run.sold_buyers,
                run.purchase_price,
                run.quotes,
                *((first, full) if stage.index == 0 else (None, None)),
            )
            for step, reason, attempts in ranking.skipped:
                event = run.event(stage, step.index, step.buyer_id)
                event.outcome = SKIP
                event.reason = reason
                if attempts:
                    event.attempts.extend(attempts)
                run.report.decided(event)
            sales = 0
            for offer in ranking.offers:
                if sales >= stage.sell:
                    break
                if await self._offer(stage, offer, run) in ALLOCATED:
                    run.sold_buyers.append(offer.step.buyer_id)
                    run.allocated += 1
                    sales += 1
            if stage.exclusive and sales:
                return
            if stage.index + 1 < len(flow.stages):
                await run.report.flush()

    async def _price(self, stage: StagePlan, offer: Offer, run: _Run) -> tuple[Decimal, Any]:
        if offer.price is not None:  # routing priced it: a winning bid, a price strategy's quote
            return offer.price, offer.audit
        try:
            quote = await run.quotes.quote(stage.index, offer.step, strict=True)
        except (grpc.aio.AioRpcError, LookupError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "UNAVAILABLE"
            raise PriceUnavailable(f"Sale price unavailable: {code}") from exc
        assert quote is not None
        return quote.price, quote.audit

    async def _offer(self, stage: StagePlan, offer: Offer, run: _Run) -> str:
        """Price the step, reserve its caps, deliver to its buyer; the offer's outcome."""
        started = perf_counter()
        step = offer.step
        event = run.event(stage, step.index, step.buyer_id)
        event.outcome = ERROR  # until the buyer answers: an offer cut short is never a sale
        if offer.attempts:
            event.attempts.extend(offer.attempts)
        try:
            price, audit = await self._price(stage, offer, run)
        except PriceUnavailable as exc:
            event.reason = str(exc)
            run.report.decided(event)
            raise
        event.sale_price.CopyFrom(to_proto(price, self._currency))
        event.price_audit.CopyFrom((audit or PriceAudit(amount=price)).to_proto())
        if step.capped:
            held, run.held = run.held, None
            if held is not None and held.scope == step_scope(stage.index, step.index):
                refusal = held.refusal  # reserved with the admission, at this quoted price
            else:
                refusal = await self._router.reserve_step(run.facts, stage.index, step, price)
            if refusal is not None:
                event.outcome, event.reason = SKIP, refusal.reason
                event.duration_ms = int((perf_counter() - started) * 1000)
                run.report.decided(event)
                return "skip"
        event.outcome, event.reason = UNKNOWN, IN_FLIGHT
        await run.report.offering(event)
        run.offers += 1
        # From here the buyer may have the lead. Should this call be cut short before its answer
        # (the gateway then records the offering as `unknown`), the settlement in `distribute`'s
        # `finally` keeps the step's holds for ResolveStep (SPEC 8.1) instead of releasing them.
        in_flight = SoldStep(stage.index, step.index, step.buyer_id, price)
        run.unknown.append(in_flight)
        outcome = await self._deliver(event, offer, run)
        run.unknown.remove(in_flight)
        sold = SoldStep(stage.index, step.index, step.buyer_id, from_proto(event.sale_price))
        if outcome in SOLD:
            run.sales.append(sold)  # its holds are committed with the lead's settlement
        elif outcome == "unknown":
            run.unknown.append(sold)
        elif step.capped:
            await self._release(run, stage.index, step.index)
        event.duration_ms = int((perf_counter() - started) * 1000)
        run.report.decided(event)
        return outcome

    async def _deliver(self, event: RecipientEvent, offer: Offer, run: _Run) -> str:
        request = delivery_service_pb2.DeliverLeadRequest(
            request_id=event.id,
            lead=run.proto,
            buyer_id=event.buyer_id,
            sale_price=event.sale_price,
            purchase_price=to_proto(run.purchase_price, self._currency),
            bid_id=offer.bid_id,
        )
        try:
            answer = await self._router.peers.deliver(request, self._deadlines[event.buyer_id])
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FATE_UNKNOWN:
                # SPEC 8.1: never `error` (the next buyer would get a lead this one may have
                # bought, for free): allocated until delivery's recovery or an operator settles.
                event.outcome = UNKNOWN
                event.reason = f"Delivery interrupted ({exc.code().name}): outcome unknown"
                return "unknown"
            # Refused before anything was sent: this step's error; the next step still runs.
            event.outcome = ERROR
            event.reason = f"Delivery unavailable: {exc.code().name}"
            return "error"
        except LookupError as exc:
            event.outcome, event.reason = ERROR, f"Delivery unavailable: {exc}"
            return "error"
        event.outcome = answer.outcome
        event.reason = answer.reason
        event.reference = answer.reference
        if answer.attempts:
            event.attempts.extend(answer.attempts)  # after the auction's ping, if any
        if answer.HasField("price"):
            price = from_proto(answer.price)
            event.sale_price.CopyFrom(answer.price)
            event.price_audit.CopyFrom(PriceAudit(layer="response", amount=price).to_proto())
        return outcome_from_proto(answer.outcome)

    async def _release(self, run: _Run, stage_index: int, step_index: int) -> None:
        """Give a declined step's holds back now, so concurrent leads can use the capacity; if
        this fails the lead's settlement releases them."""
        try:
            await self._router.release_step(run.lead.id, stage_index, step_index)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("lead %s: releasing step caps: %s", run.lead.id, exc)

    async def _settle(self, flow: FlowPlan, run: _Run, *, accepted: bool) -> None:
        """Commit or release what admission and the offers reserved; unreachable, the holds
        lapse after the hold time instead (unknown offers' holds included)."""
        try:
            await self._router.settle_lead(flow, run.facts, accepted, run.sales, run.unknown)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("lead %s: settling: %s", run.lead.id, exc)
