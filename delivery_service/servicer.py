"""DeliveryService over gRPC: proto <-> domain (delivery_service.dispatch) and status codes."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from decimal import Decimal
from time import perf_counter
from typing import Any

import grpc
from google.type import money_pb2

from delivery_service import metrics
from delivery_service.batches import Batch, QueueState
from delivery_service.breaker import Breakers
from delivery_service.dispatch import RecentResults, Route, plan, retry_key
from delivery_service.http_adapter import DeliveryResult, HttpAdapter
from delivery_service.ping import Pinger, ping_response
from delivery_service.recovery import AttemptLog
from delivery_service.runner import BatchRunner
from leadflow import kit
from leadflow.config import Buyer, Config, HttpDelivery
from leadflow.context import lead_context
from leadflow.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc
from leadflow.templates import TemplateError
from leadflow.wire import LeadData, from_proto, outcome_to_proto, to_proto

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_BATCH_STATUS = {
    "sending": delivery_service_pb2.BATCH_STATUS_SENDING,
    "delivered": delivery_service_pb2.BATCH_STATUS_DELIVERED,
    "failed": delivery_service_pb2.BATCH_STATUS_FAILED,
}
_BATCH_KIND = {
    "scheduled": delivery_service_pb2.BATCH_KIND_SCHEDULED,
    "manual": delivery_service_pb2.BATCH_KIND_MANUAL,
    "retry": delivery_service_pb2.BATCH_KIND_RETRY,
    "resend": delivery_service_pb2.BATCH_KIND_RESEND,
}

log = logging.getLogger(__name__)


class _NotRecorded(Exception):
    """The attempt could not be written before its request would leave: it is not sent."""


async def _record_answer(attempt_log: AttemptLog, event_id: str, result: DeliveryResult) -> None:
    try:
        await attempt_log.answered(event_id, result)
    except Exception:
        # The caller still gets the answer; recovery would resend (idempotent buyers) or drop it.
        log.exception("the answer to delivery %s was not recorded", event_id)


def _price(
    message: delivery_service_pb2.DeliverLeadRequest | delivery_service_pb2.PingBuyerRequest,
    name: str,
) -> Decimal | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    money: money_pb2.Money = getattr(message, name)
    return from_proto(money)


def result_to_proto(
    result: DeliveryResult, currency: str
) -> delivery_service_pb2.DeliverLeadResponse:
    response = delivery_service_pb2.DeliverLeadResponse(
        outcome=outcome_to_proto(result.outcome),
        reason=result.reason,
        reference=result.reference,
        attempts=[attempt.to_proto() for attempt in result.attempts],
    )
    if result.price is not None:
        response.price.CopyFrom(to_proto(result.price, currency))
    return response


class DeliveryServicer(delivery_service_pb2_grpc.DeliveryServiceServicer):
    """Checks a request, runs (or finds) its delivery and answers with the result."""

    def __init__(
        self,
        config: Config,
        adapters: Mapping[str, HttpAdapter],
        recent_results: int,
        runner: BatchRunner | None = None,
    ) -> None:
        self._config = config
        self._adapters = adapters
        self._runner = runner
        # Tasks, not results: a retry during the first call waits for it (dispatch.RecentResults).
        self._recent: RecentResults[asyncio.Task[DeliveryResult]] = RecentResults(recent_results)
        self._breakers = Breakers(
            {
                buyer.id: buyer.delivery.circuit_breaker
                for buyer in config.buyers
                if isinstance(buyer.delivery, HttpDelivery) and buyer.delivery.circuit_breaker
            }
        )
        # asyncio keeps only weak references to tasks; these must outlive a cancelled call.
        self._running: set[asyncio.Task[DeliveryResult]] = set()
        # Tasks that live as long as the server (closing a session it owns, for one).
        self.owned_tasks: set[asyncio.Task[None]] = set()
        # Set by the server once its HTTP session exists; None answers pings with an error.
        self.pinger: Pinger | None = None
        # Set by the server when there is storage: HTTP deliveries are recorded (SPEC 8.1).
        self.attempt_log: AttemptLog | None = None

    async def drain(self, grace_seconds: float) -> None:
        """Let deliveries still talking to buyers finish (bounded) before the session closes."""
        running = set(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d deliveries still running at shutdown", len(pending))
            await asyncio.wait(pending)

    async def DeliverLead(
        self,
        request: delivery_service_pb2.DeliverLeadRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> delivery_service_pb2.DeliverLeadResponse:
        if not request.buyer_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "buyer_id is required")
        buyer = self._config.buyers_by_id.get(request.buyer_id)
        if buyer is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown buyer {request.buyer_id!r}")
        assert buyer is not None
        problem, lead = self._read_lead(request)
        if lead is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        assert lead is not None
        key = retry_key(buyer.id, request.request_id)
        task = self._recent.get(key) if key is not None else None
        if task is None:
            if key is None:
                request.request_id = uuid.uuid4().hex
            task = asyncio.create_task(
                self._deliver(
                    buyer,
                    lead,
                    request.request_id,
                    sale_price=_price(request, "sale_price"),
                    purchase_price=_price(request, "purchase_price"),
                    bid_id=request.bid_id,
                    durable=request,
                )
            )
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if key is not None:
                self._recent.put(key, task)
        # A caller that gives up (deadline) must not cut the exchange with the buyer short.
        result = await asyncio.shield(task)
        if self.attempt_log is not None and buyer.id in self._adapters:
            attempt_log, event_id = self.attempt_log, request.request_id

            def answered(call: Any) -> None:
                # The answer reached a caller still waiting: nothing for recovery to settle.
                if not call.cancelled():
                    attempt_log.done(event_id)

            # The stubs declare the callback type as a class rather than a Protocol.
            context.add_done_callback(answered)  # type: ignore[arg-type]
        return result_to_proto(result, self._config.account.currency)

    async def redeliver(self, request: delivery_service_pb2.DeliverLeadRequest) -> DeliveryResult:
        """Recovery's resend of a recorded request to an idempotent buyer: the same event id,
        so the same `webhook-id`; not recorded again (recovery holds the attempt)."""
        buyer = self._config.buyers_by_id.get(request.buyer_id)
        problem, lead = self._read_lead(request)
        if buyer is None or lead is None:
            return DeliveryResult("error", problem or f"unknown buyer {request.buyer_id!r}")
        return await self._deliver(
            buyer,
            lead,
            request.request_id,
            sale_price=_price(request, "sale_price"),
            purchase_price=_price(request, "purchase_price"),
            bid_id=request.bid_id,
        )

    async def PingBuyer(
        self,
        request: delivery_service_pb2.PingBuyerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> delivery_service_pb2.PingBuyerResponse:
        """Ask a buyer for a bid (delivery_service.ping); a caller's deadline cancels it."""
        buyer = self._config.buyers_by_id.get(request.buyer_id)
        if buyer is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown buyer {request.buyer_id!r}")
        assert buyer is not None
        if self.pinger is None or not self.pinger.pings(buyer.id):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"buyer {buyer.id!r} has no HTTP ping"
            )
        assert self.pinger is not None
        problem, lead = self._read_lead(request)
        if lead is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        assert lead is not None
        result = await self.pinger.ping(
            buyer, lead, _price(request, "purchase_price"), request.request_id or uuid.uuid4().hex
        )
        return ping_response(result, self._config.account.currency)

    def _read_lead(
        self,
        request: delivery_service_pb2.DeliverLeadRequest | delivery_service_pb2.PingBuyerRequest,
    ) -> tuple[str, LeadData | None]:
        if not request.HasField("lead"):
            return "lead is required", None
        try:
            lead = LeadData.from_proto(request.lead)
        except ValueError:  # a stored lead's legacy JSON that is not JSON
            return "lead.legacy_fields_json is not valid JSON", None
        if lead.flow_id not in self._config.flows_by_id:
            return f"lead.flow_id: unknown flow {lead.flow_id!r}", None
        if lead.source_id not in self._config.sources_by_id:
            return f"lead.source_id: unknown source {lead.source_id!r}", None
        return "", lead

    async def _deliver(
        self,
        buyer: Buyer,
        lead: LeadData,
        message_id: str,
        *,
        sale_price: Decimal | None,
        purchase_price: Decimal | None,
        bid_id: str = "",
        durable: delivery_service_pb2.DeliverLeadRequest | None = None,
    ) -> DeliveryResult:
        """One delivery. With `durable` (the request, as the caller sent it) and an attempt log,
        an HTTP delivery is recorded before its request leaves and its answer before it is
        returned (SPEC 8.1); one that cannot be recorded is not sent."""
        adapter = self._adapters.get(buyer.id)
        kind = buyer.delivery.type if buyer.delivery is not None else "none"
        start = perf_counter()
        planned = plan(buyer, has_adapter=adapter is not None, has_queue=self._runner is not None)
        if planned.route is Route.NONE:
            result = DeliveryResult("error", planned.reason)
        elif planned.route is not Route.HTTP:
            result = await self._deliver_file(
                buyer, lead, message_id, planned.route, sale_price, purchase_price
            )
        elif (refusal := self._breakers.admit(buyer.id))[0] is not None:
            result = DeliveryResult("error", refusal[0])  # the buyer is not called at all
        else:
            assert adapter is not None
            probe, errored = refusal[1], None
            attempt_log = self.attempt_log if durable is not None else None
            try:
                if attempt_log is not None:
                    assert durable is not None
                    try:
                        await attempt_log.sent(buyer, durable, message_id)
                    except Exception as exc:
                        raise _NotRecorded from exc
                context = lead_context(
                    self._config,
                    lead,
                    buyer=buyer,
                    purchase_price=purchase_price,
                    sale_price=sale_price,
                    extra={"bid": {"id": bid_id}} if bid_id else None,  # auction post: {{bid.id}}
                )
                result = await adapter.deliver(lead.fields, context, message_id)
                errored = result.outcome == "error"  # 5xx, timeout, connection failure
                if attempt_log is not None:
                    await _record_answer(attempt_log, message_id, result)
            except _NotRecorded:
                log.exception(
                    "the delivery of lead %s to buyer %s was not recorded", lead.id, buyer.id
                )
                result = DeliveryResult("error", "the delivery could not be recorded: not sent")
            except TemplateError as exc:
                result = DeliveryResult("error", f"cannot build the request: {exc}")
            except Exception:
                # One broken delivery must not take the call down with an opaque status.
                log.exception("delivery of lead %s to buyer %s failed", lead.id, buyer.id)
                result = DeliveryResult("error", "internal error while delivering")
            finally:
                # Only the buyer's own answers move the circuit; a template error is ours.
                self._breakers.record(buyer.id, errored, probe)
        metrics.delivered(buyer.id, kind, result.outcome).inc()
        if result.outcome != "queued":  # queueing is a database write, not a delivery
            metrics.delivery_seconds(buyer.id, kind).observe(perf_counter() - start)
        log.debug(
            "lead %s to buyer %s: %s in %d attempt(s)",
            lead.id,
            buyer.id,
            result.outcome,
            len(result.attempts),
        )
        return result

    async def _deliver_file(
        self,
        buyer: Buyer,
        lead: LeadData,
        event_id: str,
        route: Route,
        sale_price: Decimal | None,
        purchase_price: Decimal | None,
    ) -> DeliveryResult:
        """SFTP and email buyers: a file or mail now (Route.FILE_NOW), else into the queue."""
        runner = self._runner
        assert runner is not None  # plan() routes files only when there is a queue
        price = sale_price or Decimal(0)
        try:
            if route is Route.FILE_NOW:
                return await runner.deliver_realtime(buyer, lead, event_id, price, purchase_price)
            return await runner.queue(buyer, lead, event_id, price, purchase_price)
        except Exception:
            log.exception("file delivery of lead %s to buyer %s failed", lead.id, buyer.id)
            return DeliveryResult("error", "internal error while delivering")

    @kit.grpc_errors()  # an unknown buyer or batch, a refused resend
    async def ListBatches(
        self,
        request: delivery_service_pb2.ListBatchesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> delivery_service_pb2.ListBatchesResponse:
        runner = await self._batch_runner(context)
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be positive")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        buyer_id = request.buyer_id or None
        batches = await runner.list_batches(buyer_id, size + 1, request.page_token or None)
        queues = await runner.queues(buyer_id)
        response = delivery_service_pb2.ListBatchesResponse(
            queues=[queue_to_proto(queue) for queue in queues],
            batches=[batch_to_proto(batch) for batch in batches[:size]],
        )
        if len(batches) > size:
            response.next_page_token = batches[size - 1].id
        return response

    @kit.grpc_errors()  # an unknown buyer or batch, a refused resend
    async def DeliverPending(
        self,
        request: delivery_service_pb2.DeliverPendingRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> delivery_service_pb2.DeliverPendingResponse:
        runner = await self._batch_runner(context)
        if not request.buyer_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "buyer_id is required")
        # Shielded: a caller giving up must not cut a file off halfway.
        batch = await asyncio.shield(
            runner.deliver_pending(request.buyer_id, "manual", request.request_id or None)
        )
        response = delivery_service_pb2.DeliverPendingResponse()
        if batch is not None:
            response.batch.CopyFrom(batch_to_proto(batch))
        return response

    @kit.grpc_errors()  # an unknown buyer or batch, a refused resend
    async def ResendBatch(
        self,
        request: delivery_service_pb2.ResendBatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> delivery_service_pb2.ResendBatchResponse:
        runner = await self._batch_runner(context)
        if not request.batch_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch_id is required")
        batch = await asyncio.shield(runner.resend(request.batch_id, request.request_id or None))
        return delivery_service_pb2.ResendBatchResponse(batch=batch_to_proto(batch))

    async def _batch_runner(self, context: grpc.aio.ServicerContext[Any, Any]) -> BatchRunner:
        if self._runner is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no batch queue: no storage")
        assert self._runner is not None
        return self._runner


def batch_to_proto(batch: Batch) -> delivery_service_pb2.Batch:
    message = delivery_service_pb2.Batch(
        id=batch.id,
        buyer_id=batch.buyer_id,
        status=_BATCH_STATUS[batch.status],
        kind=_BATCH_KIND[batch.kind],
        resend_of_batch_id=batch.resend_of or "",
        lead_count=batch.lead_count,
        file_name=batch.remote_name or batch.file_name,
        size_bytes=batch.size_bytes,
        reason=batch.reason,
        attempts=[attempt.to_proto() for attempt in batch.attempts],
        recipient_event_ids=list(batch.event_ids),
    )
    message.create_time.FromDatetime(batch.create_time)
    if batch.complete_time is not None:
        message.complete_time.FromDatetime(batch.complete_time)
    return message


def queue_to_proto(queue: QueueState) -> delivery_service_pb2.BatchQueue:
    message = delivery_service_pb2.BatchQueue(
        buyer_id=queue.buyer_id,
        schedule=queue.schedule,
        pending_leads=queue.pending,
        failures=queue.failures,
    )
    if queue.next_run_time is not None:
        message.next_run_time.FromDatetime(queue.next_run_time)
    if queue.retry_time is not None:
        message.retry_time.FromDatetime(queue.retry_time)
    return message
