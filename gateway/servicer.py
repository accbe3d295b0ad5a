"""GatewayService over gRPC: the vendor submission for callers inside the cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import grpc
import orjson

from gateway.intake import BadRequest
from gateway.orchestrator import Orchestrator
from gateway.rate_limit import RateLimiter
from gateway.store import GatewayStore, StoredResponse
from gateway.submission import (
    MAX_IDEMPOTENCY_KEY,
    KeyInUse,
    RateLimited,
    Submissions,
    Unauthorized,
    checked_idempotency_key,
    read_vendor_parameters,
)
from leadflow import kit
from leadflow.config import Config
from leadflow.gateway.v1 import gateway_service_pb2 as pb
from leadflow.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from leadflow.money import format_money
from leadflow.wire import from_proto, outcome_to_proto, to_proto

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
        self._submissions = Submissions(config, orchestrator, store, rate_limiter)

    # An unknown source is a LookupError and unreadable fields a ValueError (kit's mapping).
    @kit.grpc_errors(
        {
            Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
            RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
            KeyInUse: grpc.StatusCode.ABORTED,
        }
    )
    async def SubmitLead(
        self, request: pb.SubmitLeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitLeadResponse:
        submissions = self._submissions
        submissions.admit(request.flow_id, request.source_id, request.api_key)
        data: Any = orjson.loads(request.fields_json or b"{}")
        if not isinstance(data, dict):
            raise BadRequest("fields_json must be a JSON object")
        lead = read_vendor_parameters(data).submission  # a redirect is HTTP's alone
        if request.HasField("override_price"):
            lead = replace(lead, override_price=format_money(from_proto(request.override_price)))

        async def answer() -> StoredResponse:
            result = await submissions.submit(request.flow_id, request.source_id, lead)
            response = pb.SubmitLeadResponse(
                outcome=outcome_to_proto(result.outcome),
                reason=result.reason or "",
                lead_id=result.lead_id or "",
                price=to_proto(result.price),
            )
            return StoredResponse(201, PROTO_CONTENT_TYPE, response.SerializeToString())

        # gRPC and HTTP answers differ in form, so their keys live in separate namespaces.
        given = checked_idempotency_key(
            request.idempotency_key or None, MAX_IDEMPOTENCY_KEY - len(KEY_PREFIX)
        )
        key = None if given is None else KEY_PREFIX + given
        stored = await submissions.once(request.source_id, key, answer)
        return pb.SubmitLeadResponse.FromString(stored.body)
