"""PricingService over gRPC: proto <-> domain translation and status codes only."""

from __future__ import annotations

from typing import Any

import grpc

from leadflow.config import Config
from leadflow.money import from_proto, to_proto
from leadflow.pricing.v1 import pricing_service_pb2 as pb
from leadflow.pricing.v1 import pricing_service_pb2_grpc as pb_grpc
from leadflow.wire import LeadData
from pricing_service.pricing import purchase_quote, sale_quote


async def _known_lead(
    lead: LeadData, config: Config, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    flow = config.flows_by_id.get(lead.flow_id)
    if flow is None or lead.source_id not in flow.sources_by_id:
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"no source {lead.source_id!r} in flow {lead.flow_id!r}"
        )


class PricingServicer(pb_grpc.PricingServiceServicer):
    def __init__(self, config: Config) -> None:
        self._config = config

    async def QuotePurchasePrice(
        self, request: pb.QuotePurchasePriceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QuotePurchasePriceResponse:
        lead = LeadData.from_proto(request.lead)
        await _known_lead(lead, self._config, context)
        quote = purchase_quote(self._config, lead)
        return pb.QuotePurchasePriceResponse(
            price=to_proto(quote.price), audit=quote.audit.to_proto()
        )

    async def QuoteSalePrice(
        self, request: pb.QuoteSalePriceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QuoteSalePriceResponse:
        lead = LeadData.from_proto(request.lead)
        await _known_lead(lead, self._config, context)
        try:
            quote = sale_quote(
                self._config,
                lead,
                request.stage_index,
                request.step_index,
                from_proto(request.purchase_price),
            )
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.QuoteSalePriceResponse(price=to_proto(quote.price), audit=quote.audit.to_proto())
