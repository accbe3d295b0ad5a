"""PricingService over gRPC: proto <-> domain translation and status codes only."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from leadflow.config import Config
from leadflow.pricing.v1 import pricing_service_pb2 as pb
from leadflow.pricing.v1 import pricing_service_pb2_grpc as pb_grpc
from leadflow.wire import LeadData, from_proto, to_proto
from pricing_service.pricing import Pricer


class PricingServicer(pb_grpc.PricingServiceServicer):
    def __init__(self, config: Config, pricer: Pricer) -> None:
        self._config = config
        self._pricer = pricer
        self.closer: asyncio.Task[None] | None = None  # releases the HTTP session after stop

    async def _lead(self, message: Any, context: grpc.aio.ServicerContext[Any, Any]) -> LeadData:
        lead = LeadData.from_proto(message)
        flow = self._config.flows_by_id.get(lead.flow_id)
        if flow is None or lead.source_id not in flow.sources_by_id:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no source {lead.source_id!r} in flow {lead.flow_id!r}"
            )
        return lead

    async def QuotePurchasePrice(
        self, request: pb.QuotePurchasePriceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QuotePurchasePriceResponse:
        lead = await self._lead(request.lead, context)
        quote = await self._pricer.purchase(lead, request.override_price_text)
        response = pb.QuotePurchasePriceResponse(
            price=to_proto(quote.price), audit=quote.audit.to_proto()
        )
        if request.quote_sales:
            add = response.sales.add
            for stage, step, sale in self._pricer.rules_sales(lead, quote.price):
                add(
                    stage_index=stage,
                    step_index=step,
                    price=to_proto(sale.price),
                    audit=sale.audit.to_proto(),
                )
        return response

    async def QuoteSalePrice(
        self, request: pb.QuoteSalePriceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QuoteSalePriceResponse:
        lead = await self._lead(request.lead, context)
        try:
            quote = await self._pricer.sale(
                lead, request.stage_index, request.step_index, from_proto(request.purchase_price)
            )
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.QuoteSalePriceResponse(price=to_proto(quote.price), audit=quote.audit.to_proto())
