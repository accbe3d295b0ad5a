"""One lead through the suite, in SPEC section 2's order: price, accept, distribute, record."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from time import perf_counter
from typing import Any

import grpc

from gateway import metrics
from gateway.clients import ROUTING_DEADLINE_S, Downstream, delivery_deadline, pricing_deadline
from gateway.intake import SubmissionResult, render
from gateway.outbox import LedgerOutbox
from gateway.store import GatewayStore, PingQuote
from leadflow import logs, tracing
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, Flow, Stage
from leadflow.context import lead_context
from leadflow.fields import parse_lead
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.money import ZERO, from_micros
from leadflow.pricing.v1 import pricing_service_pb2
from leadflow.routing.v1 import routing_service_pb2
from leadflow.wire import (
    LeadData,
    PriceAudit,
    from_proto,
    outcome_from_proto,
    outcome_to_proto,
    to_proto,
)

log = logging.getLogger(__name__)

# Outcomes that allocate the lead to the buyer. A `queued` lead (a batch buyer's, waiting for its
# file) counts toward the stage's `sell`, ends an exclusive stage and satisfies `require_sale`
# like a sale: the buyer holds it and capacity is reserved for it; revenue waits for the file.
# So does an `unknown` offer (SPEC 8.1: the buyer may have it), whose holds stay held until it is
# resolved and which earns nothing until then.
ALLOCATED = frozenset({"success", "queued", "unknown"})
# Outcomes that are the buyer's sale for routing's counts now (an unknown one is resolved later).
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


def new_lead_id() -> str:
    """Sortable by arrival (milliseconds first), unguessable after that."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


@dataclass
class Recipient:
    """A recipient event being built while the lead is distributed."""

    id: str
    stage_index: int
    stage_name: str
    strategy: str
    step_index: int
    buyer_id: str
    outcome: str
    reason: str = ""
    sale_price: Decimal = ZERO
    price_audit: PriceAudit = field(default_factory=PriceAudit)
    reference: str = ""
    attempts: list[lead_pb2.DeliveryAttempt] = field(default_factory=list)
    duration_ms: int = 0

    def to_proto(self) -> ledger_service_pb2.RecipientEvent:
        return ledger_service_pb2.RecipientEvent(
            id=self.id,
            stage_index=self.stage_index,
            stage_name=self.stage_name,
            strategy=self.strategy,
            step_index=self.step_index,
            buyer_id=self.buyer_id,
            outcome=outcome_to_proto(self.outcome),
            reason=self.reason,
            sale_price=to_proto(self.sale_price),
            price_audit=self.price_audit.to_proto(),
            reference=self.reference,
            attempts=self.attempts,
            duration_ms=self.duration_ms,
        )


@dataclass
class LeadRun:
    """Everything decided about one lead, recorded in the ledger at the end."""

    lead: LeadData
    override_price: str = ""  # the vendor's `price` parameter, as sent
    ping_id: str = ""  # the inbound ping the vendor refers to, as sent
    ping: PingQuote | None = None  # that ping, when it was honoured (unused and unexpired)
    # Routing may hold something for this lead (reservations, a duplicate key, counted sales):
    # SettleLead when it is over. Unknown until admission answers, so assumed then.
    needs_settlement: bool = False
    # Sale quotes of first-stage steps that came with the purchase price, by step index.
    first_stage_quotes: dict[int, pricing_service_pb2.StepQuote] = field(default_factory=dict)
    outcome: str = "success"
    reason: str = ""
    purchase_price: Decimal = ZERO
    purchase_audit: PriceAudit = field(default_factory=PriceAudit)
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def revenue(self) -> Decimal:
        return sum((r.sale_price for r in self.recipients if r.outcome == "success"), ZERO)

    @property
    def price_paid(self) -> Decimal:
        return self.purchase_price if self.outcome == "success" else ZERO

    def fail(self, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason

    def add_recipient(
        self,
        stage_index: int,
        ranking: routing_service_pb2.RankStageResponse,
        step: routing_service_pb2.Candidate | routing_service_pb2.SkippedStep,
        outcome: str,
        reason: str = "",
    ) -> Recipient:
        recipient = Recipient(
            id=f"{self.lead.id}-{len(self.recipients) + 1}",
            stage_index=stage_index,
            stage_name=ranking.stage_name,
            strategy=ranking.strategy,
            step_index=step.step_index,
            buyer_id=step.buyer_id,
            outcome=outcome,
            reason=reason,
        )
        self.recipients.append(recipient)
        return recipient


class Orchestrator:
    def __init__(
        self, config: Config, downstream: Downstream, outbox: LedgerOutbox, store: GatewayStore
    ) -> None:
        self._config = config
        self._downstream = downstream
        self._outbox = outbox
        self._store = store  # inbound pings
        self._pricing_deadline = pricing_deadline(config)

    async def submit(
        self,
        flow_id: str,
        source_id: str,
        data: dict[str, Any],
        override_price: str = "",
        *,
        ping_id: str = "",
        lead_id: str | None = None,
    ) -> SubmissionResult:
        """Process one authenticated submission; never raises for anything the vendor sent.
        Returns once the lead's record is durable. `lead_id` is an asynchronous intake's, whose
        result is stored with the record."""
        started = perf_counter()
        lead = self._lead(flow_id, source_id, data, lead_id)
        run = LeadRun(lead, override_price=override_price, ping_id=ping_id)
        # Every line logged about this lead carries its id; with tracing on, every call made for
        # it is in one trace (under the HTTP request's span, or a new one for a queued intake).
        with logs.lead_scope(lead.id), tracing.span("process lead", lead.id):
            return await self._submit(run, started, intake=lead_id is not None)

    async def _submit(self, run: LeadRun, started: float, *, intake: bool) -> SubmissionResult:
        lead, flow_id, source_id = run.lead, run.lead.flow_id, run.lead.source_id
        flow = self._config.flows_by_id.get(flow_id)
        if flow is None or source_id not in flow.sources_by_id:
            # Only an asynchronous intake gets here: accepted before the gateway restarted with a
            # configuration that no longer has its flow, or no longer takes its source there.
            run.fail("error", "The lead's flow or source is no longer configured")
            return await self._finish(run, started, intake=intake)
        if run.ping_id:
            run.ping = await self._store.take_ping(run.ping_id, flow_id, source_id)
        try:
            await self._process(flow, run)
        except grpc.aio.AioRpcError as exc:
            log.warning("lead %s: %s unavailable: %s", lead.id, exc.code().name, exc.details())
            run.fail("error", "Lead could not be processed, try again later")
        await self._settle(run)
        result = await self._finish(run, started, intake=intake)
        if run.ping is not None and run.outcome == "error":
            await self._give_back(run.ping)
        return result

    async def _give_back(self, ping: PingQuote) -> None:
        """The lead ended in error, unpaid: the vendor may submit it again, with its ping. After
        the lead is recorded, so that failing here costs the ping, never the record."""
        try:
            await self._store.return_ping(ping.ping_id)
        except Exception:
            log.exception("ping %s could not be given back", ping.ping_id)

    async def interrupted(
        self, lead_id: str, flow_id: str, source_id: str, data: dict[str, Any]
    ) -> SubmissionResult:
        """Record an asynchronous intake whose gateway stopped while processing it: an error,
        never processed again (its buyers may already have it)."""
        run = LeadRun(self._lead(flow_id, source_id, data, lead_id))
        run.fail("error", "Processing was interrupted; submit the lead again")
        return await self._finish(run, perf_counter(), intake=True)

    def _lead(
        self, flow_id: str, source_id: str, data: dict[str, Any], lead_id: str | None
    ) -> LeadData:
        flow = self._config.flows_by_id.get(flow_id)
        return LeadData(
            id=lead_id or new_lead_id(),
            flow_id=flow_id,
            source_id=source_id,
            # A flow gone from the configuration (an asynchronous intake's): standard fields only.
            fields=parse_lead(data, flow.fields if flow else {}),
            submit_time=datetime.now(UTC),
        )

    async def _finish(self, run: LeadRun, started: float, *, intake: bool) -> SubmissionResult:
        duration = perf_counter() - started
        result = SubmissionResult(
            outcome=run.outcome,
            reason=run.reason or None,
            lead_id=run.lead.id,
            price=run.price_paid,
        )
        stored = render(result.as_dict(), "application/json") if intake else None
        await self._record(run, duration, stored)
        metrics.observe_lead(run.lead.flow_id, run.lead.source_id, run.outcome, duration)
        return result

    async def _process(self, flow: Flow, run: LeadRun) -> None:
        if run.ping is not None:
            # SPEC 5.2: a submit carrying an honoured ping_id is paid the pinged price.
            run.purchase_price = from_micros(run.ping.price_micros)
            run.purchase_audit = PriceAudit(
                layer="ping", amount=run.purchase_price, note=f"ping {run.ping.ping_id}"
            )
        else:
            quote = await self._downstream.purchase_price(
                run.lead, run.override_price, self._pricing_deadline
            )
            run.purchase_price = from_proto(quote.price)
            run.purchase_audit = PriceAudit.from_proto(quote.audit)
            run.first_stage_quotes = {q.step_index: q for q in quote.first_stage}
            if run.ping_id:
                note = f"ping_id {run.ping_id[:64]!r} not honoured: unknown, expired or used"
                notes = "; ".join(filter(None, [run.purchase_audit.note, note]))
                run.purchase_audit = replace(run.purchase_audit, note=notes)

        context = lead_context(self._config, run.lead, purchase_price=run.purchase_price)
        entry = flow.sources_by_id[run.lead.source_id]
        for rule_set in (flow.acceptance, entry.acceptance):
            if rule_set is not None:
                result = rule_set.compiled.evaluate(context)
                if not result.passed:
                    run.fail("failure", result.reason or "Acceptance criteria not met")
                    return

        # Hours, duplicates, then flow and source caps (reserved until the lead settles).
        run.needs_settlement = True
        first_stage = flow.stages[0] if flow.stages else None
        admission = await self._downstream.admit_lead(
            run.lead,
            run.purchase_price,
            rank_first_stage=first_stage is not None,
            deadline_s=self._rank_deadline(first_stage) if first_stage else ROUTING_DEADLINE_S,
        )
        run.needs_settlement = admission.needs_settlement
        if not admission.admitted:
            run.fail("failure", admission.reason)
            return

        await self._distribute(flow, run, admission.first_stage)
        if flow.require_sale and not any(r.outcome in ALLOCATED for r in run.recipients):
            run.fail("failure", "No buyer accepted the lead")

    async def _distribute(
        self, flow: Flow, run: LeadRun, first_stage: routing_service_pb2.RankStageResponse
    ) -> None:
        sold: list[str] = []
        for stage_index, stage in enumerate(flow.stages):
            # Admission ranked the first stage already.
            ranking = (
                first_stage
                if stage_index == 0
                else await self._downstream.rank_stage(
                    run.lead, stage_index, sold, run.purchase_price, self._rank_deadline(stage)
                )
            )
            for skipped in ranking.skipped:
                event = run.add_recipient(stage_index, ranking, skipped, "skip", skipped.reason)
                event.attempts = list(skipped.ping_attempts)
            sales = 0
            for candidate in ranking.candidates:
                if sales >= stage.sell:
                    break
                # "error" until the buyer answers: a step interrupted midway is never a sale.
                recipient = run.add_recipient(stage_index, ranking, candidate, "error")
                await self._offer(run, recipient, candidate)
                if recipient.outcome in ALLOCATED:
                    sold.append(candidate.buyer_id)
                    sales += 1
            if stage.exclusive and sales:
                return

    def _rank_deadline(self, stage: Stage) -> float:
        """Routing quotes sale prices for price strategies and pings for auctions."""
        deadline = ROUTING_DEADLINE_S
        if stage.strategy in ("highest_price", "performance", "auction"):
            deadline += self._pricing_deadline
        if stage.strategy == "auction":
            deadline += stage.deadline_ms / 1000
        return deadline

    async def _offer(
        self, run: LeadRun, recipient: Recipient, candidate: routing_service_pb2.Candidate
    ) -> None:
        """Price the step, reserve its caps, deliver to its buyer and record the answer."""
        started = perf_counter()
        recipient.attempts = list(candidate.ping_attempts)
        quoted = (
            run.first_stage_quotes.get(candidate.step_index) if not recipient.stage_index else None
        )
        if candidate.HasField("price"):
            # Routing priced it: the winning bid of an auction, or a price strategy's quote.
            recipient.sale_price = from_proto(candidate.price)
            recipient.price_audit = PriceAudit.from_proto(candidate.price_audit)
        elif quoted is not None:  # quoted along with the purchase price
            recipient.sale_price = from_proto(quoted.price)
            recipient.price_audit = PriceAudit.from_proto(quoted.audit)
        else:
            try:
                quote = await self._downstream.sale_price(
                    run.lead,
                    recipient.stage_index,
                    recipient.step_index,
                    run.purchase_price,
                    self._pricing_deadline,
                )
            except grpc.aio.AioRpcError as exc:
                recipient.reason = f"Sale price unavailable: {exc.code().name}"
                raise  # the lead cannot go on: it ends `error`
            recipient.sale_price = from_proto(quote.price)
            recipient.price_audit = PriceAudit.from_proto(quote.audit)
        if candidate.capped:
            hold = await self._downstream.reserve_step(
                run.lead, recipient.stage_index, recipient.step_index, recipient.sale_price
            )
            if not hold.reserved:
                recipient.outcome, recipient.reason = "skip", hold.reason
                recipient.duration_ms = int((perf_counter() - started) * 1000)
                return
        try:
            await self._deliver(run, recipient, candidate.bid_id)
        finally:
            # An unknown offer's holds stay held: SettleLead keeps them until it is resolved.
            if candidate.capped and recipient.outcome != "unknown":
                await self._settle_step(run, recipient)
        recipient.duration_ms = int((perf_counter() - started) * 1000)

    async def _settle_step(self, run: LeadRun, recipient: Recipient) -> None:
        """Commit the step's cap reservations when the buyer took the lead, else release them
        now so concurrent leads can use the capacity; if routing is unreachable the lead's
        settlement does it."""
        try:
            await self._downstream.settle_step(
                run.lead,
                recipient.stage_index,
                recipient.step_index,
                recipient.outcome in SOLD,
                recipient.sale_price,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("lead %s: settling step caps: %s", run.lead.id, exc.code().name)

    async def _settle(self, run: LeadRun) -> None:
        """The lead is over: routing commits or releases what admission and steps reserved.
        Unreachable, the reservations lapse after routing's hold time instead."""
        if not run.needs_settlement:
            return
        sales = [
            (r.stage_index, r.step_index, r.buyer_id) for r in run.recipients if r.outcome in SOLD
        ]
        unknown = [
            (r.stage_index, r.step_index, r.buyer_id)
            for r in run.recipients
            if r.outcome == "unknown"
        ]
        try:
            await self._downstream.settle_lead(run.lead, run.outcome == "success", sales, unknown)
        except grpc.aio.AioRpcError as exc:
            log.warning("lead %s: settling with routing: %s", run.lead.id, exc.code().name)

    async def _deliver(self, run: LeadRun, recipient: Recipient, bid_id: str) -> None:
        buyer = self._config.buyers_by_id[recipient.buyer_id]
        try:
            answer = await self._downstream.deliver(
                recipient.id,
                run.lead,
                recipient.buyer_id,
                recipient.sale_price,
                run.purchase_price,
                delivery_deadline(buyer.delivery),
                bid_id=bid_id,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FATE_UNKNOWN:
                # SPEC 8.1: never `error` (the next buyer would get a lead this one may have
                # bought, for free): allocated until delivery's recovery or an operator settles it.
                recipient.outcome = "unknown"
                recipient.reason = f"Delivery interrupted ({exc.code().name}): outcome unknown"
            else:
                # Refused before anything was sent: this step's error; the next step still runs.
                recipient.outcome = "error"
                recipient.reason = f"Delivery unavailable: {exc.code().name}"
        else:
            recipient.outcome = outcome_from_proto(answer.outcome)
            recipient.reason = answer.reason
            recipient.reference = answer.reference
            recipient.attempts += list(answer.attempts)  # after the auction's ping, if any
            if answer.HasField("price"):
                price = from_proto(answer.price)
                recipient.sale_price = price
                recipient.price_audit = PriceAudit(layer="response", amount=price)

    async def _record(self, run: LeadRun, duration: float, result: bytes | None) -> None:
        source_event = ledger_service_pb2.SourceEvent(
            outcome=outcome_to_proto(run.outcome),
            reason=run.reason,
            purchase_price=to_proto(run.purchase_price),
            price_paid=to_proto(run.price_paid),
            price_audit=run.purchase_audit.to_proto(),
            revenue=to_proto(run.revenue),
            duration_ms=int(duration * 1000),
        )
        request = ledger_service_pb2.RecordLeadRequest(
            lead=run.lead.to_proto(),
            source_event=source_event,
            recipient_events=[recipient.to_proto() for recipient in run.recipients],
        )
        await self._outbox.record(request, result)
