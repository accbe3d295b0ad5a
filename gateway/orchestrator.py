"""One lead through the suite, in SPEC section 2's order: price, accept, distribute, record."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from time import perf_counter
from typing import Any

import grpc

from gateway import metrics
from gateway.clients import Downstream, delivery_deadline, pricing_deadline
from gateway.intake import SubmissionResult
from gateway.outbox import LedgerOutbox
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, Flow, HttpDelivery
from leadflow.context import lead_context
from leadflow.fields import parse_lead
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.money import ZERO, from_proto, to_proto
from leadflow.routing.v1 import routing_service_pb2
from leadflow.wire import LeadData, PriceAudit, outcome_from_proto, outcome_to_proto

log = logging.getLogger(__name__)


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
    def __init__(self, config: Config, downstream: Downstream, outbox: LedgerOutbox) -> None:
        self._config = config
        self._downstream = downstream
        self._outbox = outbox
        self._pricing_deadline = pricing_deadline(config)

    async def submit(
        self, flow_id: str, source_id: str, data: dict[str, Any], override_price: str = ""
    ) -> SubmissionResult:
        """Process one authenticated submission; never raises for anything the vendor sent."""
        started = perf_counter()
        flow = self._config.flows_by_id[flow_id]
        lead = LeadData(
            id=new_lead_id(),
            flow_id=flow_id,
            source_id=source_id,
            fields=parse_lead(data, flow.fields),
            submit_time=datetime.now(UTC),
        )
        run = LeadRun(lead, override_price=override_price)
        try:
            await self._process(flow, run)
        except grpc.aio.AioRpcError as exc:
            log.warning("lead %s: %s unavailable: %s", lead.id, exc.code().name, exc.details())
            run.fail("error", "Lead could not be processed, try again later")
        duration = perf_counter() - started
        await self._record(run, duration)
        metrics.observe_lead(
            run.lead.flow_id, run.lead.source_id, run.outcome, run.price_paid, duration
        )
        for recipient in run.recipients:
            if recipient.outcome == "success":
                metrics.observe_sale(flow_id, recipient.buyer_id, recipient.sale_price)
        return SubmissionResult(
            outcome=run.outcome,
            reason=run.reason or None,
            lead_id=lead.id,
            price=run.price_paid,
        )

    async def _process(self, flow: Flow, run: LeadRun) -> None:
        quote = await self._downstream.purchase_price(
            run.lead, run.override_price, self._pricing_deadline
        )
        run.purchase_price = from_proto(quote.price)
        run.purchase_audit = PriceAudit.from_proto(quote.audit)

        context = lead_context(self._config, run.lead, purchase_price=run.purchase_price)
        entry = flow.sources_by_id[run.lead.source_id]
        for rule_set in (flow.acceptance, entry.acceptance):
            if rule_set is not None:
                result = rule_set.compiled.evaluate(context)
                if not result.passed:
                    run.fail("failure", result.reason or "Acceptance criteria not met")
                    return

        await self._distribute(flow, run)
        if flow.require_sale and not any(r.outcome == "success" for r in run.recipients):
            run.fail("failure", "No buyer accepted the lead")

    async def _distribute(self, flow: Flow, run: LeadRun) -> None:
        sold: list[str] = []
        for stage_index, stage in enumerate(flow.stages):
            ranking = await self._downstream.rank_stage(run.lead, stage_index, sold)
            for skipped in ranking.skipped:
                run.add_recipient(stage_index, ranking, skipped, "skip", skipped.reason)
            sales = 0
            for candidate in ranking.candidates:
                if sales >= stage.sell:
                    break
                # "error" until the buyer answers: a step interrupted midway is never a sale.
                recipient = run.add_recipient(stage_index, ranking, candidate, "error")
                await self._offer(run, recipient)
                if recipient.outcome == "success":
                    sold.append(candidate.buyer_id)
                    sales += 1
            if stage.exclusive and sales:
                return

    async def _offer(self, run: LeadRun, recipient: Recipient) -> None:
        """Price the step, deliver to its buyer and record what the buyer answered."""
        started = perf_counter()
        quote = await self._downstream.sale_price(
            run.lead,
            recipient.stage_index,
            recipient.step_index,
            run.purchase_price,
            self._pricing_deadline,
        )
        recipient.sale_price = from_proto(quote.price)
        recipient.price_audit = PriceAudit.from_proto(quote.audit)
        buyer = self._config.buyers_by_id[recipient.buyer_id]
        delivery = buyer.delivery if isinstance(buyer.delivery, HttpDelivery) else None
        try:
            answer = await self._downstream.deliver(
                recipient.id,
                run.lead,
                recipient.buyer_id,
                recipient.sale_price,
                run.purchase_price,
                delivery_deadline(delivery),
            )
        except grpc.aio.AioRpcError as exc:
            # A delivery that cannot be attempted is this step's error; the next step still runs.
            recipient.outcome = "error"
            recipient.reason = f"Delivery unavailable: {exc.code().name}"
        else:
            recipient.outcome = outcome_from_proto(answer.outcome)
            recipient.reason = answer.reason
            recipient.reference = answer.reference
            recipient.attempts = list(answer.attempts)
            if answer.HasField("price"):
                price = from_proto(answer.price)
                recipient.sale_price = price
                recipient.price_audit = PriceAudit(layer="response", amount=price)
        recipient.duration_ms = int((perf_counter() - started) * 1000)

    async def _record(self, run: LeadRun, duration: float) -> None:
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
        await self._outbox.record(request)
