"""Submitting a lead, whichever transport carries it (HTTP submit, gRPC SubmitLead): the one
home of the source's authentication, its rate limit, reading the vendor's parameters and
idempotency. The transports only translate requests in and refusals and results out."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.async_intake import AsyncIntake, Submission
from gateway.intake import (
    BadRequest,
    SubmissionResult,
    override_text,
    redirect_target,
    rename_trustedform,
    vendor_fields,
)
from gateway.orchestrator import Orchestrator
from gateway.rate_limit import RateLimiter
from gateway.store import GatewayStore, KeyInProgress, StoredResponse
from leadflow.config import Config, Flow

MAX_IDEMPOTENCY_KEY = 255


class SubmitRefused(Exception):
    """A submission refused before a lead is made; each transport answers each kind its own way
    (HTTP 404/401/429/409; gRPC NOT_FOUND/UNAUTHENTICATED/RESOURCE_EXHAUSTED/ABORTED)."""


class UnknownSource(SubmitRefused, LookupError):
    def __init__(self) -> None:
        super().__init__("Unknown flow or source")


class Unauthorized(SubmitRefused):
    def __init__(self) -> None:
        super().__init__("Unauthorized source")


class RateLimited(SubmitRefused):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Rate limit exceeded; retry after {retry_after} s")
        self.retry_after = retry_after


class KeyInUse(SubmitRefused):
    def __init__(self) -> None:
        super().__init__("A request with this Idempotency-Key is still in progress")


@dataclass(frozen=True)
class VendorParameters:
    """A vendor's parameters read: the lead as the orchestrator takes it, and where to send the
    vendor once it is handled (`redir_url`, never a lead field)."""

    submission: Submission
    redirect: str | None


def read_vendor_parameters(data: Mapping[str, Any], *, ping: bool = False) -> VendorParameters:
    """The one reader of submit and ping parameters: dot keys unflattened, `redir_url`, `price`
    (the override, never a lead field) and `ping_id` (an inbound ping's, SPEC 5.2) taken out,
    TrustedForm's fields named as SPEC 5.1 says. BadRequest names what cannot be read."""
    fields = vendor_fields(data)
    redir_url = fields.pop("redir_url", None)
    redirect = None if redir_url is None else redirect_target(redir_url)
    rename_trustedform(fields, ping)
    override = override_text(fields.pop("price", None))
    ping_id = str(fields.pop("ping_id", "") or "")
    return VendorParameters(Submission(fields, override, ping_id), redirect)


def checked_idempotency_key(key: str | None, limit: int = MAX_IDEMPOTENCY_KEY) -> str | None:
    """An Idempotency-Key as given, or BadRequest when it is empty or too long to keep (`limit`
    leaves room for a transport's namespace prefix)."""
    if key is not None and not 0 < len(key) <= limit:
        raise BadRequest(f"Idempotency-Key must be 1 to {limit} characters")
    return key


class Submissions:
    """The submit use case; one per gateway, shared by its transports."""

    def __init__(
        self,
        config: Config,
        orchestrator: Orchestrator,
        store: GatewayStore,
        rate_limiter: RateLimiter,
        intake: AsyncIntake | None = None,
    ) -> None:
        self._config = config
        self._orchestrator = orchestrator
        self._store = store
        self._rate_limiter = rate_limiter
        self._intake = intake

    def admit(self, flow_id: str, source_id: str, api_key: str | None) -> Flow:
        """The flow a source may submit to now (SPEC 5.1: unknown, then unauthorized, then rate
        limited), or SubmitRefused."""
        flow = self._config.flows_by_id.get(flow_id)
        if flow is None or source_id not in flow.sources_by_id:
            raise UnknownSource()
        expected = self._config.sources_by_id[source_id].api_key
        if api_key is None or not hmac.compare_digest(api_key.encode(), expected.encode()):
            raise Unauthorized()
        # After authentication, so nobody without the key can spend a vendor's budget.
        source = self._config.sources_by_id[source_id]
        retry_after = self._rate_limiter.take(source_id, source.rate_limit)
        if retry_after is not None:
            raise RateLimited(retry_after)
        return flow

    async def once(
        self,
        source_id: str,
        key: str | None,
        answer: Callable[[], Awaitable[StoredResponse]],
    ) -> StoredResponse:
        """`answer()`, kept under the source's idempotency key when there is one: a repeated key
        gets the first response byte for byte; SubmitRefused while the first is still running."""
        if key is None:
            return await answer()
        try:
            first = await self._store.claim(source_id, key)
        except KeyInProgress:
            raise KeyInUse() from None
        if first is not None:
            return first
        try:
            response = await answer()
        except BaseException:
            await self._store.release(source_id, key)
            raise
        await self._store.complete(source_id, key, response)
        return response

    async def submit(self, flow_id: str, source_id: str, lead: Submission) -> SubmissionResult:
        """Process the lead now; returns once its record is durable."""
        return await self._orchestrator.submit(
            flow_id, source_id, lead.fields, lead.override_price, ping_id=lead.ping_id
        )

    async def accept(self, flow_id: str, source_id: str, lead: Submission) -> str:
        """Commit the lead for processing in the background; its lead id."""
        if self._intake is None:
            raise RuntimeError("this gateway takes no asynchronous submissions")
        return await self._intake.accept(flow_id, source_id, lead)
