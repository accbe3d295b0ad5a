"""The gateway's calls to the other four services: one channel each, a deadline on every call.

The lead path's calls wait for their service to be ready (`wait_for_ready`) within their deadline
rather than failing the moment a channel is down: a service restarting, or one replica going away,
delays those leads instead of failing them. gRPC only waits for a call that was never sent, so a
delivery is still attempted at most once.

Pricing and routing calls are also tried again, within the same deadline, when the service went
away under them (UNAVAILABLE) or dropped them unstarted while stopping (CANCELLED: grpc.aio
cancels calls it has received but not yet handed to a handler, grpc/grpc#41785). That is safe
because quotes are pure and routing's reservations and settlements are idempotent per lead. A
delivery is never retried: the buyer may have the lead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leadflow import kit
from leadflow.deadlines import ROUTING_DEADLINE_S, DistributionDeadlines
from leadflow.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from leadflow.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from leadflow.wire import LeadData

LEDGER_DEADLINE_S = 10.0
HEALTH_DEADLINE_S = 1.0
# A report over a long window scans a lot of journal.
REPORT_DEADLINE_S = 60.0
LIST_BATCHES_DEADLINE_S = 10.0
# Sending a batch file now: connecting, uploading a large file, recording it.
SEND_BATCH_DEADLINE_S = 300.0


class MessageLate(grpc.aio.AioRpcError):
    """Routing said nothing for longer than the distribution allows between two messages."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            f"no message from routing in {waited_s:.1f}s",
        )


class StreamEnded(grpc.aio.AioRpcError):
    """A write to a stream that had already ended (the peer went away): its status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def _send(call: Any, message: Any) -> None:
    """Write to a stream call; one that ended meanwhile raises its own status, as a read would
    (grpc.aio raises InvalidStateError instead)."""
    try:
        await call.write(message)
    except asyncio.InvalidStateError:
        raise StreamEnded(await call.code(), await call.details() or "") from None


# RecordLeadsRequest's `records` (field 1, length-delimited), and a length as protobuf writes it.
_RECORDS_TAG = b"\x0a"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def record_leads_request(records: Sequence[bytes]) -> bytes:
    """A RecordLeadsRequest as protobuf encodes it, from its serialized records: each one as its
    `records` field (field 1, length-delimited). Neither decoded, copied into a message nor
    encoded again (that cost ~20 us a record on the gateway's event loop)."""
    return b"".join(_RECORDS_TAG + _varint(len(record)) + record for record in records)


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
RETRY_PAUSE_S = 0.1

Request = TypeVar("Request")
Response = TypeVar("Response")


async def _idempotent(
    method: Callable[..., Awaitable[Response]], request: Request, deadline_s: float
) -> Response:
    """Call, and call again while the service is restarting, until the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while True:
        try:
            return await method(
                request, timeout=max(deadline - loop.time(), 0.001), wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or loop.time() + RETRY_PAUSE_S >= deadline:
                raise
        await asyncio.sleep(RETRY_PAUSE_S)


@dataclass(frozen=True)
class Addresses:
    pricing: str
    routing: str
    delivery: str
    ledger: str


class Downstream:
    """Stubs for the four services the gateway orchestrates."""

    def __init__(self, addresses: Addresses) -> None:
        self._channels = {
            "pricing": kit.channel(addresses.pricing),
            "routing": kit.channel(addresses.routing),
            "delivery": kit.channel(addresses.delivery),
            "ledger": kit.channel(addresses.ledger),
        }
        self.pricing = pricing_service_pb2_grpc.PricingServiceStub(self._channels["pricing"])
        self.routing = routing_service_pb2_grpc.RoutingServiceStub(self._channels["routing"])
        self.delivery = delivery_service_pb2_grpc.DeliveryServiceStub(self._channels["delivery"])
        self.ledger = ledger_service_pb2_grpc.LedgerServiceStub(self._channels["ledger"])
        # RecordLeads taking its request already encoded (record_leads).
        self._record_leads: grpc.aio.UnaryUnaryMultiCallable[
            bytes, ledger_service_pb2.RecordLeadsResponse
        ] = self._channels["ledger"].unary_unary(
            "/leadflow.ledger.v1.LedgerService/RecordLeads",
            request_serializer=None,
            response_deserializer=ledger_service_pb2.RecordLeadsResponse.FromString,
        )
        # Streams are not bound by the channel's unary interceptor: bound them here.
        self._streams = asyncio.Semaphore(kit.MAX_IN_FLIGHT_PER_CHANNEL)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def unhealthy(self) -> list[str]:
        """Names of the services that do not answer SERVING (asked at once). On the leads' own
        channels: SERVING then also means the gateway's connection to it is up."""

        async def serving(channel: grpc.aio.Channel) -> bool:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        names = list(self._channels)
        answers = await asyncio.gather(*(serving(self._channels[name]) for name in names))
        return [name for name, up in zip(names, answers, strict=True) if not up]

    async def purchase_price(
        self, lead: LeadData, override_price_text: str, deadline_s: float
    ) -> pricing_service_pb2.QuotePurchasePriceResponse:
        """With the sale quotes of every step priced by rules alone (routing needs them)."""
        request = pricing_service_pb2.QuotePurchasePriceRequest(
            lead=lead.to_proto(), override_price_text=override_price_text, quote_sales=True
        )
        return await _idempotent(self.pricing.QuotePurchasePrice, request, deadline_s)

    async def distribute(
        self,
        request: routing_service_pb2.DistributeLeadRequest,
        deadlines: DistributionDeadlines,
    ) -> AsyncGenerator[routing_service_pb2.DistributeLeadResponse, None]:
        """The lead's distribution as routing streams it, each `offering` acknowledged before
        routing sends it to the buyer. Started again within the deadline when routing went
        away (UNAVAILABLE) or dropped the call unstarted (CANCELLED) before anything came
        back: no buyer can have the lead then, and admission is idempotent per lead. A message
        later than its deadline (routing hung) ends the call with DEADLINE_EXCEEDED."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadlines.total
        async with self._streams:
            while True:
                call = self.routing.DistributeLead(
                    timeout=max(deadline - loop.time(), 0.001), wait_for_ready=True
                )
                heard = False
                try:
                    await _send(call, request)
                    while True:
                        wait = deadlines.gap if heard else deadlines.first
                        try:
                            read = await asyncio.wait_for(call.read(), wait)
                        except TimeoutError:
                            call.cancel()
                            raise MessageLate(wait) from None
                        if read is grpc.aio.EOF:
                            return
                        response = cast(routing_service_pb2.DistributeLeadResponse, read)
                        heard = True
                        if response.done:
                            await call.done_writing()
                            yield response
                            return
                        yield response
                        if response.HasField("offering"):
                            await _send(
                                call,
                                routing_service_pb2.DistributeLeadRequest(
                                    acknowledged_id=response.offering.id
                                ),
                            )
                except grpc.aio.AioRpcError as exc:
                    if (
                        isinstance(exc, MessageLate)
                        or heard
                        or exc.code() not in RETRYABLE
                        or loop.time() + RETRY_PAUSE_S >= deadline
                    ):
                        raise
                finally:
                    call.cancel()  # a no-op once the call has ended
                await asyncio.sleep(RETRY_PAUSE_S)

    async def resolve_step(
        self, lead_id: str, stage_index: int, step_index: int, sold: bool
    ) -> routing_service_pb2.ResolveStepResponse:
        request = routing_service_pb2.ResolveStepRequest(
            lead_id=lead_id, stage_index=stage_index, step_index=step_index, sold=sold
        )
        return await _idempotent(self.routing.ResolveStep, request, ROUTING_DEADLINE_S)

    async def record_delivery_outcome(
        self, request: ledger_service_pb2.RecordDeliveryOutcomeRequest
    ) -> ledger_service_pb2.RecordDeliveryOutcomeResponse:
        return await self.ledger.RecordDeliveryOutcome(request, timeout=LEDGER_DEADLINE_S)

    async def list_unknown_offers(
        self, limit: int, before_lead_id: str
    ) -> ledger_service_pb2.ListUnknownOffersResponse:
        request = ledger_service_pb2.ListUnknownOffersRequest(
            limit=limit, before_lead_id=before_lead_id
        )
        return await self.ledger.ListUnknownOffers(request, timeout=LEDGER_DEADLINE_S)

    async def list_batches(
        self, buyer_id: str, page_size: int, page_token: str
    ) -> delivery_service_pb2.ListBatchesResponse:
        request = delivery_service_pb2.ListBatchesRequest(
            buyer_id=buyer_id, page_size=page_size, page_token=page_token
        )
        return await self.delivery.ListBatches(request, timeout=LIST_BATCHES_DEADLINE_S)

    async def deliver_pending(
        self, buyer_id: str, request_id: str
    ) -> delivery_service_pb2.DeliverPendingResponse:
        request = delivery_service_pb2.DeliverPendingRequest(
            buyer_id=buyer_id, request_id=request_id
        )
        return await self.delivery.DeliverPending(request, timeout=SEND_BATCH_DEADLINE_S)

    async def resend_batch(
        self, batch_id: str, request_id: str
    ) -> delivery_service_pb2.ResendBatchResponse:
        request = delivery_service_pb2.ResendBatchRequest(batch_id=batch_id, request_id=request_id)
        return await self.delivery.ResendBatch(request, timeout=SEND_BATCH_DEADLINE_S)

    async def record_leads(
        self, records: Sequence[bytes]
    ) -> ledger_service_pb2.RecordLeadsResponse:
        """RecordLeads with serialized RecordLeadRequests (the outbox keeps them so), sent as
        they are (record_leads_request)."""
        # No wait_for_ready: a ledger that is down fails the call at once and the outbox keeps
        # the records for its next sweep.
        return await self._record_leads(record_leads_request(records), timeout=LEDGER_DEADLINE_S)

    async def get_lead(self, lead_id: str) -> ledger_service_pb2.GetLeadResponse:
        request = ledger_service_pb2.GetLeadRequest(lead_id=lead_id)
        return await self.ledger.GetLead(request, timeout=LEDGER_DEADLINE_S)

    async def submit_feedback(
        self, request: ledger_service_pb2.SubmitFeedbackRequest
    ) -> ledger_service_pb2.SubmitFeedbackResponse:
        return await self.ledger.SubmitFeedback(request, timeout=LEDGER_DEADLINE_S)

    async def decide_return(
        self, feedback_id: str, approve: bool
    ) -> ledger_service_pb2.DecideReturnResponse:
        request = ledger_service_pb2.DecideReturnRequest(feedback_id=feedback_id, approve=approve)
        return await self.ledger.DecideReturn(request, timeout=LEDGER_DEADLINE_S)

    async def ledger_report(self, kind: str, request: Any) -> Any:
        """GetVendorReport, GetBuyerReport or GetMarginReport (kind: vendors|buyers|margin)."""
        method: Any = {
            "vendors": self.ledger.GetVendorReport,
            "buyers": self.ledger.GetBuyerReport,
            "margin": self.ledger.GetMarginReport,
        }[kind]
        return await method(request, timeout=REPORT_DEADLINE_S)
