"""RoutingService over gRPC: proto <-> domain translation and status codes only."""

from __future__ import annotations

from typing import Any

import grpc

from leadflow.config import Config
from leadflow.routing.v1 import routing_service_pb2 as pb
from leadflow.routing.v1 import routing_service_pb2_grpc as pb_grpc
from leadflow.wire import LeadData
from routing_service.routing import rank_stage


class RoutingServicer(pb_grpc.RoutingServiceServicer):
    def __init__(self, config: Config) -> None:
        self._config = config

    async def RankStage(
        self, request: pb.RankStageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RankStageResponse:
        lead = LeadData.from_proto(request.lead)
        if lead.flow_id not in self._config.flows_by_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown flow {lead.flow_id!r}")
        try:
            ranking = rank_stage(
                self._config, lead, request.stage_index, set(request.sold_buyer_ids)
            )
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.RankStageResponse(
            stage_name=ranking.stage.name,
            strategy=ranking.stage.strategy,
            candidates=[
                pb.Candidate(step_index=c.step_index, buyer_id=c.buyer_id)
                for c in ranking.candidates
            ],
            skipped=[
                pb.SkippedStep(step_index=s.step_index, buyer_id=s.buyer_id, reason=s.reason)
                for s in ranking.skipped
            ],
        )
