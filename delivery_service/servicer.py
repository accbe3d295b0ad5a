"""DeliverLead over gRPC: proto <-> domain, status codes, and replies to retried requests."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from decimal import Decimal
from time import perf_counter
from typing import Any

import grpc
import orjson
from google.type import money_pb2

from delivery_service import metrics
from delivery_service.http_adapter import DeliveryResult, HttpAdapter
from leadflow.config import Buyer, Config
from leadflow.context import lead_context
from leadflow.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc
from leadflow.money import from_proto, to_proto
from leadflow.templates import TemplateError
from leadflow.wire import LeadData, outcome_to_proto

log = logging.getLogger(__name__)

Key = tuple[str, str]


class RecentResults:
    """The latest deliveries by (buyer, request id), oldest forgotten first.

    Holding the task rather than its result means a retry that arrives while the first call is
    still talking to the buyer waits for that call instead of sending the lead again.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: OrderedDict[Key, asyncio.Task[DeliveryResult]] = OrderedDict()

    def get(self, key: Key) -> asyncio.Task[DeliveryResult] | None:
        task = self._items.get(key)
        if task is not None:
            self._items.move_to_end(key)
        return task

    def put(self, key: Key, task: asyncio.Task[DeliveryResult]) -> None:
        self._items[key] = task
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _price(message: delivery_service_pb2.DeliverLeadRequest, name: str) -> Decimal | None:
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
        self, config: Config, adapters: Mapping[str, HttpAdapter], recent_results: int
    ) -> None:
        self._config = config
        self._adapters = adapters
        self._recent = RecentResults(recent_results)
        # asyncio keeps only weak references to tasks; these must outlive a cancelled call.
        self._running: set[asyncio.Task[DeliveryResult]] = set()
        # Tasks that live as long as the server (closing a session it owns, for one).
        self.owned_tasks: set[asyncio.Task[None]] = set()

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
        key = (buyer.id, request.request_id)
        task = self._recent.get(key) if request.request_id else None
        if task is None:
            task = asyncio.create_task(
                self._deliver(
                    buyer,
                    lead,
                    request.request_id or uuid.uuid4().hex,
                    sale_price=_price(request, "sale_price"),
                    purchase_price=_price(request, "purchase_price"),
                )
            )
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if request.request_id:
                self._recent.put(key, task)
        # A caller that gives up (deadline) must not cut the exchange with the buyer short.
        result = await asyncio.shield(task)
        return result_to_proto(result, self._config.account.currency)

    def _read_lead(
        self, request: delivery_service_pb2.DeliverLeadRequest
    ) -> tuple[str, LeadData | None]:
        if not request.HasField("lead"):
            return "lead is required", None
        try:
            lead = LeadData.from_proto(request.lead)
        except (orjson.JSONDecodeError, ValueError, OverflowError):
            return "lead.fields_json is not valid JSON", None
        if not isinstance(lead.fields, dict):
            return "lead.fields_json must be a JSON object", None
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
    ) -> DeliveryResult:
        adapter = self._adapters.get(buyer.id)
        kind = buyer.delivery.type if buyer.delivery is not None else "none"
        start = perf_counter()
        if adapter is None:
            what = "no delivery" if buyer.delivery is None else f"{kind} delivery"
            result = DeliveryResult("error", f"{what} is not supported yet")
        else:
            try:
                context = lead_context(
                    self._config,
                    lead,
                    buyer=buyer,
                    purchase_price=purchase_price,
                    sale_price=sale_price,
                )
                result = await adapter.deliver(lead.fields, context, message_id)
            except TemplateError as exc:
                result = DeliveryResult("error", f"cannot build the request: {exc}")
            except Exception:
                # One broken delivery must not take the call down with an opaque status.
                log.exception("delivery of lead %s to buyer %s failed", lead.id, buyer.id)
                result = DeliveryResult("error", "internal error while delivering")
        metrics.DELIVERIES.labels(buyer.id, kind, result.outcome).inc()
        metrics.DELIVERY_SECONDS.labels(buyer.id, kind).observe(perf_counter() - start)
        log.debug(
            "lead %s to buyer %s: %s in %d attempt(s)",
            lead.id,
            buyer.id,
            result.outcome,
            len(result.attempts),
        )
        return result
