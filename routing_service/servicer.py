"""RoutingService over gRPC: proto <-> domain translation and status codes only."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from leadflow import logs
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.routing.v1 import routing_service_pb2 as pb
from leadflow.routing.v1 import routing_service_pb2_grpc as pb_grpc
from leadflow.wire import LeadData, from_proto, outcome_to_proto
from routing_service.distribution import Distributor
from routing_service.router import Router

Context = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("abort returned")  # pragma: no cover - abort always raises


class GatewayGone(Exception):
    """The caller did not acknowledge an offering: the offer is not made."""


class StreamReport:
    """The DistributeLead stream as the distribution's `Report`: decided events wait for the
    next message; an offering goes at once and waits for the gateway's acknowledgement."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._pending: list[ledger_service_pb2.RecipientEvent] = []

    def decided(self, event: ledger_service_pb2.RecipientEvent) -> None:
        self._pending.append(event)

    async def offering(self, event: ledger_service_pb2.RecipientEvent) -> None:
        response = pb.DistributeLeadResponse(offering=event)
        response.recipients.extend(self._pending)
        self._pending.clear()
        await self._context.write(response)
        ack = await self._context.read()
        if ack is grpc.aio.EOF or ack.acknowledged_id != event.id:
            raise GatewayGone(event.id)

    async def flush(self) -> None:
        if self._pending:
            response = pb.DistributeLeadResponse()
            response.recipients.extend(self._pending)
            self._pending.clear()
            await self._context.write(response)

    def last(self, outcome: str, reason: str) -> pb.DistributeLeadResponse:
        response = pb.DistributeLeadResponse(
            done=True, outcome=outcome_to_proto(outcome), reason=reason
        )
        response.recipients.extend(self._pending)
        self._pending.clear()
        return response


class RoutingServicer(pb_grpc.RoutingServiceServicer):
    def __init__(self, router: Router, distributor: Distributor) -> None:
        self._router = router
        self._distributor = distributor

    async def _lead(self, request: Any, context: Context) -> LeadData:
        if not request.HasField("lead"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "lead is required")
        lead = LeadData.from_proto(request.lead)
        config = self._router.plan.config
        flow = config.flows_by_id.get(lead.flow_id)
        if flow is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"unknown flow {lead.flow_id!r}")
        if lead.source_id not in flow.sources_by_id:
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no source {lead.source_id!r} in flow {lead.flow_id!r}",
            )
        return lead

    # Written with context.read() and write() rather than as a generator: the distribution
    # waits for the gateway's acknowledgements in the middle of its work.
    async def DistributeLead(  # type: ignore[override]
        self, requests: Any, context: Context
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the lead is required")
        lead = await self._lead(first, context)
        quotes = {(q.stage_index, q.step_index): q for q in first.sale_quotes}
        report = StreamReport(context)
        with logs.lead_scope(lead.id):
            try:
                outcome, reason = await self._distributor.distribute(
                    lead, first.lead, from_proto(first.purchase_price), quotes, report
                )
            except GatewayGone:
                await _abort(context, grpc.StatusCode.CANCELLED, "offering not acknowledged")
        await context.write(report.last(outcome, reason))

    async def ResolveStep(
        self, request: pb.ResolveStepRequest, context: Context
    ) -> pb.ResolveStepResponse:
        if not request.lead_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "lead_id is required")
        if request.stage_index < 0 or request.step_index < 0:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "stage and step indexes are >= 0"
            )
        settled = await self._router.resolve_step(
            request.lead_id, request.stage_index, request.step_index, request.sold
        )
        return pb.ResolveStepResponse(settled=settled)
