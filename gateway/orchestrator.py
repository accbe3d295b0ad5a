"""One lead through the suite, in SPEC section 2's order: price, accept, distribute, record.

The gateway keeps the front door, the purchase price, acceptance and the record; routing owns
the distribution (one DistributeLead stream per lead, which streams back each recipient event)."""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from time import perf_counter
from typing import Any

import grpc

from gateway import metrics
from gateway.clients import Downstream
from gateway.intake import SubmissionResult, render
from gateway.outbox import LedgerOutbox
from gateway.store import GatewayStore, PingQuote
from leadflow import logs, tracing
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, Flow
from leadflow.context import lead_context
from leadflow.deadlines import distribution_deadlines, pricing_deadline
from leadflow.fields import parse_lead
from leadflow.ids import new_lead_id
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.money import ZERO, from_micros
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

NOT_PROCESSED = "Lead could not be processed, try again later"


@dataclass
class LeadRun:
    """Everything decided about one lead, recorded in the ledger at the end."""

    lead: LeadData
    override_price: str = ""  # the vendor's `price` parameter, as sent
    ping_id: str = ""  # the inbound ping the vendor refers to, as sent
    ping: PingQuote | None = None  # that ping, when it was honoured (unused and unexpired)
    # Sale quotes of the steps priced by rules, from the purchase quote: routing's to use.
    sale_quotes: list[lead_pb2.StepQuote] = field(default_factory=list)
    outcome: str = "success"
    reason: str = ""
    purchase_price: Decimal = ZERO
    purchase_audit: PriceAudit = field(default_factory=PriceAudit)
    # Routing's recipient events by id, in order; an offering is replaced by its answer.
    recipients: dict[str, ledger_service_pb2.RecipientEvent] = field(default_factory=dict)

    @property
    def price_paid(self) -> Decimal:
        return self.purchase_price if self.outcome == "success" else ZERO

    def fail(self, outcome: str, reason: str) -> None:
        self.outcome, self.reason = outcome, reason


class Orchestrator:
    def __init__(
        self, config: Config, downstream: Downstream, outbox: LedgerOutbox, store: GatewayStore
    ) -> None:
        self._config = config
        self._downstream = downstream
        self._outbox = outbox
        self._store = store  # inbound pings
        self._pricing_deadline = pricing_deadline(config)
        self._distribution_deadlines = {
            flow.id: distribution_deadlines(config, flow) for flow in config.flows
        }

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
            run.fail("error", NOT_PROCESSED)
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
            run.sale_quotes = list(quote.sales)
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

        await self._distribute(flow, run)

    async def _distribute(self, flow: Flow, run: LeadRun) -> None:
        """Routing admits and distributes the lead, streaming each recipient event; an offer
        it announced and never answered stays `unknown` (its buyer may have the lead)."""
        request = routing_service_pb2.DistributeLeadRequest(
            lead=run.lead.to_proto(),
            purchase_price=to_proto(run.purchase_price),
            sale_quotes=run.sale_quotes,
        )
        recipients = run.recipients
        stream = self._downstream.distribute(request, self._distribution_deadlines[flow.id])
        try:
            # aclosing: leaving at the last message ends the stream's call at once.
            async with aclosing(stream):
                async for response in stream:
                    for event in response.recipients:
                        recipients[event.id] = event
                    if response.HasField("offering"):
                        recipients[response.offering.id] = response.offering
                    if response.done:
                        outcome = outcome_from_proto(response.outcome)
                        if outcome != "success":
                            run.fail(outcome, response.reason)
                        return
        except grpc.aio.AioRpcError as exc:
            log.warning("lead %s: distribution: %s %s", run.lead.id, exc.code().name, exc.details())
        run.fail("error", NOT_PROCESSED)

    async def _record(self, run: LeadRun, duration: float, result: bytes | None) -> None:
        source_event = ledger_service_pb2.SourceEvent(
            outcome=outcome_to_proto(run.outcome),
            reason=run.reason,
            purchase_price=to_proto(run.purchase_price),
            price_paid=to_proto(run.price_paid),
            price_audit=run.purchase_audit.to_proto(),
            duration_ms=int(duration * 1000),
        )
        request = ledger_service_pb2.RecordLeadRequest(
            lead=run.lead.to_proto(),
            source_event=source_event,
            recipient_events=run.recipients.values(),
        )
        await self._outbox.record(request, result)
