"""The gateway's calls to the other four services: one channel each, a deadline on every call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leadflow import kit
from leadflow.config import Config, HttpDelivery
from leadflow.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from leadflow.money import to_proto
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from leadflow.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from leadflow.wire import LeadData

PRICING_DEADLINE_S = 3.0
ROUTING_DEADLINE_S = 3.0
LEDGER_DEADLINE_S = 10.0
HEALTH_DEADLINE_S = 1.0


def pricing_deadline(config: Config) -> float:
    """Long enough for the slowest configured pricing service to answer or time out, plus slack
    (a lead runs at most one service layer per quote)."""
    timeouts = [
        pricing.service.timeout_ms
        for pricing in config.pricing_blocks()
        if pricing is not None and pricing.service is not None
    ]
    return max(PRICING_DEADLINE_S, max(timeouts, default=0) / 1000 + 1.0)


def delivery_deadline(delivery: HttpDelivery | None) -> float:
    """Long enough for every attempt and backoff the buyer's retry policy allows, plus slack."""
    if delivery is None:
        return 30.0
    retry = delivery.retry
    attempts = retry.attempts if retry else 1
    backoff = retry.max_backoff_ms * (attempts - 1) if retry else 0
    return (delivery.timeout_ms * attempts + backoff) / 1000 + 5.0


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

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def unhealthy(self) -> list[str]:
        """Names of the services that do not answer SERVING."""
        down = []
        for name, channel in self._channels.items():
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
            except grpc.aio.AioRpcError:
                down.append(name)
                continue
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                down.append(name)
        return down

    async def purchase_price(
        self, lead: LeadData, override_price_text: str, deadline_s: float
    ) -> pricing_service_pb2.QuotePurchasePriceResponse:
        request = pricing_service_pb2.QuotePurchasePriceRequest(
            lead=lead.to_proto(), override_price_text=override_price_text
        )
        return await self.pricing.QuotePurchasePrice(request, timeout=deadline_s)

    async def sale_price(
        self,
        lead: LeadData,
        stage_index: int,
        step_index: int,
        purchase_price: Decimal,
        deadline_s: float,
    ) -> pricing_service_pb2.QuoteSalePriceResponse:
        request = pricing_service_pb2.QuoteSalePriceRequest(
            lead=lead.to_proto(),
            stage_index=stage_index,
            step_index=step_index,
            purchase_price=to_proto(purchase_price),
        )
        return await self.pricing.QuoteSalePrice(request, timeout=deadline_s)

    async def rank_stage(
        self, lead: LeadData, stage_index: int, sold_buyer_ids: Sequence[str]
    ) -> routing_service_pb2.RankStageResponse:
        request = routing_service_pb2.RankStageRequest(
            lead=lead.to_proto(), stage_index=stage_index, sold_buyer_ids=list(sold_buyer_ids)
        )
        return await self.routing.RankStage(request, timeout=ROUTING_DEADLINE_S)

    async def deliver(
        self,
        request_id: str,
        lead: LeadData,
        buyer_id: str,
        sale_price: Decimal,
        purchase_price: Decimal,
        deadline_s: float,
    ) -> delivery_service_pb2.DeliverLeadResponse:
        request = delivery_service_pb2.DeliverLeadRequest(
            request_id=request_id,
            lead=lead.to_proto(),
            buyer_id=buyer_id,
            sale_price=to_proto(sale_price),
            purchase_price=to_proto(purchase_price),
        )
        return await self.delivery.DeliverLead(request, timeout=deadline_s)

    async def record_lead(self, request: ledger_service_pb2.RecordLeadRequest) -> bool:
        reply = await self.ledger.RecordLead(request, timeout=LEDGER_DEADLINE_S)
        return bool(reply.created)

    async def get_lead(self, lead_id: str) -> ledger_service_pb2.GetLeadResponse:
        request = ledger_service_pb2.GetLeadRequest(lead_id=lead_id)
        return await self.ledger.GetLead(request, timeout=LEDGER_DEADLINE_S)
