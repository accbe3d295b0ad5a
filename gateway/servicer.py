"""GatewayService over gRPC: the vendor submission for callers inside the cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NoReturn

import grpc
import orjson

from gateway.intake import BadRequest
from gateway.orchestrator import Orchestrator
from gateway.rate_limit import RateLimiter
from gateway.store import GatewayStore, StoredResponse
from gateway.submission import Submissions, SubmitRefused, read_vendor_parameters
from leadflow.config import Config
from leadflow.gateway.v1 import gateway_service_pb2 as pb
from leadflow.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from leadflow.money import format_money
from leadflow.wire import from_proto, outcome_to_proto, to_proto

KEY_PREFIX = "grpc:"
PROTO_CONTENT_TYPE = "application/x-protobuf"


_REFUSAL_CODES = {
    "unknown": grpc.StatusCode.NOT_FOUND,
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "in_progress": grpc.StatusCode.ABORTED,
}


class GatewayServicer(pb_grpc.GatewayServiceServicer):
    def __init__(
        self,
        config: Config,
        orchestrator: Orchestrator,
        store: GatewayStore,
        rate_limiter: RateLimiter,
    ) -> None:
        self._submissions = Submissions(config, orchestrator, store, rate_limiter)

    async def SubmitLead(
        self, request: pb.SubmitLeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitLeadResponse:
        submissions = self._submissions
        try:
            submissions.admit(request.flow_id, request.source_id, request.api_key)
            data: Any = orjson.loads(request.fields_json or b"{}")
            if not isinstance(data, dict):
                raise BadRequest("fields_json must be a JSON object")
            lead = read_vendor_parameters(data).submission  # a redirect is HTTP's alone
        except SubmitRefused as exc:
            await _abort_refused(context, exc)
        except (orjson.JSONDecodeError, BadRequest) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
        key = KEY_PREFIX + request.idempotency_key if request.idempotency_key else None
        try:
            stored = await submissions.once(request.source_id, key, answer)
        except SubmitRefused as exc:
            await _abort_refused(context, exc)
        return pb.SubmitLeadResponse.FromString(stored.body)


async def _abort_refused(
    context: grpc.aio.ServicerContext[Any, Any], exc: SubmitRefused
) -> NoReturn:
    message = str(exc)
    if exc.retry_after is not None:
        message = f"{message}; retry after {exc.retry_after} s"
    await context.abort(_REFUSAL_CODES[exc.kind], message)
    raise AssertionError("abort returned")  # it raises; this tells the type checker so
