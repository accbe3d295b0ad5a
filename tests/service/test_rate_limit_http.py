"""Per-source rate limits through the real gateway: 429 with Retry-After, after authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from tests.conftest import Database
from tests.service.helpers_gateway import (
    CONFIG,
    KEY,
    LEAD,
    SUBMIT,
    InProcessSuite,
    in_process_suite,
)

SOURCES = "sources: [{{id: vendor, name: Vendor, api_key: {key}}}]"
LIMITED = CONFIG.replace(
    SOURCES,
    "sources: [{{id: vendor, name: Vendor, api_key: {key}, "
    "rate_limit: {{requests: 2, per: minute}}}}]",
)
PING = "/flows/auto/sources/vendor/ping"


@pytest.fixture
async def suite(database: Database) -> AsyncIterator[InProcessSuite]:
    assert LIMITED != CONFIG
    async with in_process_suite(database, LIMITED) as running:
        yield running


async def _post(suite: InProcessSuite, path: str, key: str) -> tuple[int, str | None, bytes]:
    async with suite.http.post(
        suite.base_url + path, json=LEAD, headers={"X-Api-Key": key}
    ) as response:
        return response.status, response.headers.get("Retry-After"), await response.read()


async def test_submissions_over_the_source_budget_get_429_with_retry_after(
    suite: InProcessSuite,
) -> None:
    first = [await _post(suite, SUBMIT, KEY) for _ in range(2)]
    assert [status for status, _, _ in first] == [201, 201]
    status, retry_after, body = await _post(suite, SUBMIT, KEY)
    assert status == 429
    assert retry_after is not None and 1 <= int(retry_after) <= 30  # 2 per minute: 30 s a token
    assert orjson.loads(body) == {"outcome": "failure", "reason": "Rate limit exceeded"}
    assert len(suite.buyers.received) == 2  # the refused lead went nowhere


async def test_pings_spend_the_same_budget(suite: InProcessSuite) -> None:
    assert (await _post(suite, PING, KEY))[0] == 200
    assert (await _post(suite, SUBMIT, KEY))[0] == 201
    assert (await _post(suite, PING, KEY))[0] == 429


async def test_requests_without_the_key_do_not_spend_the_vendors_budget(
    suite: InProcessSuite,
) -> None:
    for _ in range(5):
        assert (await _post(suite, SUBMIT, "wrong"))[0] == 401
    assert [(await _post(suite, SUBMIT, KEY))[0] for _ in range(3)] == [201, 201, 429]
