"""Per-source token buckets: burst, refill, Retry-After, configuration."""

from __future__ import annotations

import pytest

from gateway.rate_limit import RateLimiter
from leadflow.config import ConfigError, RateLimit, parse_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_a_burst_of_requests_then_refuses() -> None:
    limiter = RateLimiter(Clock())
    limit = RateLimit(requests=3, per="second")
    assert [limiter.take("v", limit) for _ in range(4)] == [None, None, None, 1]


def test_tokens_come_back_at_the_configured_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limit = RateLimit(requests=6, per="minute")  # one token per 10 s
    for _ in range(6):
        assert limiter.take("v", limit) is None
    assert limiter.take("v", limit) == 10
    clock.now += 4
    assert limiter.take("v", limit) == 6
    clock.now += 6
    assert limiter.take("v", limit) is None
    assert limiter.take("v", limit) == 10


def test_sources_have_separate_buckets_and_no_limit_means_unlimited() -> None:
    limiter = RateLimiter(Clock())
    limit = RateLimit(requests=1, per="second")
    assert limiter.take("a", limit) is None
    assert limiter.take("a", limit) == 1
    assert limiter.take("b", limit) is None
    assert all(limiter.take("c", None) is None for _ in range(1000))


BASE = """
account: {{name: T}}
sources: [{{id: v, name: V, api_key: k, rate_limit: {limit}}}]
buyers: []
flows: []
"""


def test_a_source_rate_limit_is_read_from_configuration() -> None:
    config = parse_config(BASE.format(limit="{requests: 5, per: minute}"), {})
    assert config.sources[0].rate_limit == RateLimit(requests=5, per="minute")


@pytest.mark.parametrize(
    "limit", ["{requests: 0, per: second}", "{requests: 5, per: hour}", "{requests: 5}", "5"]
)
def test_a_bad_rate_limit_is_a_configuration_error(limit: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(BASE.format(limit=limit), {})
