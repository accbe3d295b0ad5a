"""Per-source rate limits (issue 8): a token bucket per source, held by each gateway replica."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.metrics import RATE_LIMITED
from leadflow.config import RateLimit


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`requests` tokens per `per`, refilled continuously; a full bucket allows a burst of
    `requests`. Per replica: N replicas behind a balancer admit up to N times the budget."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, source_id: str, limit: RateLimit | None) -> int | None:
        """None when the request may go ahead (a token is spent), else the whole seconds to wait
        before one token is back (the Retry-After value, at least 1)."""
        if limit is None:
            return None
        now = self._clock()
        rate = limit.requests / limit.seconds
        bucket = self._buckets.get(source_id)
        if bucket is None:
            bucket = self._buckets[source_id] = _Bucket(float(limit.requests), now)
        bucket.tokens = min(float(limit.requests), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        RATE_LIMITED.labels(source_id).inc()
        return max(1, math.ceil((1.0 - bucket.tokens) / rate))
