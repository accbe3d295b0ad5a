"""External pricing services (SPEC 6.1): one POST, an answer within the timeout, or the fallback.

Pricing never blocks a lead: the whole exchange (connect, send, every byte of the answer) runs
under one deadline, so a service that hangs, drips bytes or drops the connection costs at most
its `timeout_ms` before the fallback price is used, and the audit says why.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from time import perf_counter
from typing import Any

import aiohttp
import orjson

from leadflow.config import PricingServiceSpec
from leadflow.money import cents, is_price, parse_amount
from pricing_service.pricing import ServiceAnswer

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024


class PricingServiceClient:
    """Calls pricing services over one pooled HTTP session (the domain's `QuoteService`)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def quote(self, spec: PricingServiceSpec, payload: dict[str, Any]) -> ServiceAnswer:
        started = perf_counter()
        status = 0

        def fallback(error: str) -> ServiceAnswer:
            latency = int((perf_counter() - started) * 1000)
            return ServiceAnswer(cents(spec.fallback_price), status, latency, error=error)

        body = orjson.dumps(payload, default=_decimal_as_number)
        headers = {"Content-Type": "application/json", **spec.headers}
        try:
            async with asyncio.timeout(spec.timeout_ms / 1000):
                async with self._session.post(spec.url, data=body, headers=headers) as response:
                    status = response.status
                    raw = await _read_capped(response, MAX_ANSWER_BYTES)
        except TimeoutError:
            return fallback(f"timeout after {spec.timeout_ms} ms")
        except aiohttp.ClientError as exc:
            return fallback(f"connection failed: {type(exc).__name__}")
        if not 200 <= status < 300:
            return fallback(f"HTTP {status}")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return fallback("answer is not JSON")
        price = parse_amount(answer.get("price")) if isinstance(answer, dict) else None
        if price is None or not is_price(price):
            shown = answer.get("price") if isinstance(answer, dict) else answer
            return fallback(f"answer is not a price from 0 to 1,000,000: {str(shown)[:40]!r}")
        reason = answer.get("reason")
        latency = int((perf_counter() - started) * 1000)
        return ServiceAnswer(cents(price), status, latency, reason=str(reason or "")[:200])


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer up to `limit` bytes; a longer one is cut (and then is no JSON price)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _decimal_as_number(value: object) -> object:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
