"""GatewayService over gRPC: the vendor submission for callers inside the cluster."""

from __future__ import annotations

import hmac
from typing import Any

import grpc
import orjson

from gateway.intake import BadRequest, override_text, unflatten
from gateway.orchestrator import Orchestrator
from gateway.rate_limit import RateLimiter
from gateway.store import GatewayStore, KeyInProgress, StoredResponse
from leadflow.config import Config
from leadflow.gateway.v1 import gateway_service_pb2 as pb
from leadflow.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from leadflow.money import format_money
from leadflow.wire import from_proto, outcome_to_proto, to_proto

# gRPC and HTTP answers differ in form, so their idempotency keys live in separate namespaces.
KEY_PREFIX = "grpc:"
PROTO_CONTENT_TYPE = "application/x-protobuf"


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    def __init__(
        self,
        config: Config,
        orchestrator: Orchestrator,
        store: GatewayStore,
        rate_limiter: RateLimiter,
    ) -> None:
        self._config = config
        self._orchestrator = orchestrator
        self._store = store
        self._rate_limiter = rate_limiter

    async def SubmitLead(
        self, request: pb.SubmitLeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitLeadResponse:
        flow = self._config.flows_by_id.get(request.flow_id)
        if flow is None or request.source_id not in flow.sources_by_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown flow or source")
        source = self._config.sources_by_id[request.source_id]
        if not hmac.compare_digest(request.api_key.encode(), source.api_key.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Unauthorized source")
        retry_after = self._rate_limiter.take(source.id, source.rate_limit)
        if retry_after is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Rate limit exceeded; retry after {retry_after} s",
            )
        try:
            data: Any = orjson.loads(request.fields_json or b"{}")
            if not isinstance(data, dict):
                raise BadRequest("fields_json must be a JSON object")
            fields = unflatten(data)
        except (orjson.JSONDecodeError, BadRequest) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        key = KEY_PREFIX + request.idempotency_key if request.idempotency_key else None
        if key is not None:
            try:
                first = await self._store.claim(request.source_id, key)
            except KeyInProgress:
                await context.abort(grpc.StatusCode.ABORTED, "idempotency key still in progress")
            if first is not None:
                return pb.SubmitLeadResponse.FromString(first.body)
        try:
            override = (
                format_money(from_proto(request.override_price))
                if request.HasField("override_price")
                else override_text(fields.pop("price", None))
            )
            result = await self._orchestrator.submit(
                request.flow_id, request.source_id, fields, override
            )
        except BaseException:
            if key is not None:
                await self._store.release(request.source_id, key)
            raise
        response = pb.SubmitLeadResponse(
            outcome=outcome_to_proto(result.outcome),
            reason=result.reason or "",
            lead_id=result.lead_id or "",
            price=to_proto(result.price),
        )
        if key is not None:
            stored = StoredResponse(201, PROTO_CONTENT_TYPE, response.SerializeToString())
            await self._store.complete(request.source_id, key, stored)
        return response
