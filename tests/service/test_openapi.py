"""`/openapi.json` and the posting instructions page against the real gateway wired to real
services (issue 16, acceptance 4): the document is valid OpenAPI 3.1, describes every route the
gateway serves, and schemathesis finds no 500 and no response that breaks it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from gateway.docs_page import TYPE_NOTES
from tests.conftest import Database
from tests.service.helpers_gateway import ADMIN, CONFIG, KEY, InProcessSuite, in_process_suite

BUYER_KEY = "buyer-key"
# The gateway suite's configuration plus what the docs page shows: a buyer that may send
# feedback, a custom field, acceptance rules, and a source whose name needs escaping.
DOCS_CONFIG = CONFIG.replace(
    "    name: First\n",
    f"    name: First\n    api_key: {BUYER_KEY}\n    returns: {{{{window_days: 30}}}}\n",
).replace(
    "    require_sale: true\n",
    "    require_sale: true\n"
    "    fields: {{loan_amount: number}}\n"
    "    acceptance: [{{lhv: state, op: is included in, rhv: [CA, TX]}},\n"
    "                 {{lhv: phone_1, op: format is valid}}]\n",
)
# Enough to meet every operation's edge cases without making the tier slow (about 20 s); more
# for a deeper hunt: LEADFLOW_SCHEMATHESIS_EXAMPLES=500.
EXAMPLES_PER_OPERATION = int(os.environ.get("LEADFLOW_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[InProcessSuite]:
    # The HTTP layer is what is under test here; storage runs on both databases elsewhere.
    database = Database(url=f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", schema="test")
    async with in_process_suite(database, DOCS_CONFIG) as running:
        yield running


async def _document(suite: InProcessSuite) -> dict[str, Any]:
    async with suite.http.get(suite.base_url + "/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document: dict[str, Any] = orjson.loads(await response.read())
        return document


async def test_openapi_json_is_a_valid_openapi_3_1_document_served_without_a_key(
    suite: InProcessSuite,
) -> None:
    document = await _document(suite)
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


async def test_every_route_of_the_gateway_is_described_and_nothing_else(
    suite: InProcessSuite,
) -> None:
    document = await _document(suite)
    app = suite.gateway.http.app
    samples = {"kind": "vendors"}
    described: set[tuple[str, str]] = set()
    for path, item in document["paths"].items():
        concrete = path
        for name in (
            "flow_id",
            "source_id",
            "lead_id",
            "buyer_id",
            "batch_id",
            "feedback_id",
            "event_id",
        ):
            concrete = concrete.replace("{" + name + "}", samples.get(name, "x1"))
        for method in item:
            if method == "parameters":
                continue
            match = await app.router.resolve(make_mocked_request(method.upper(), concrete))
            assert match.http_exception is None, f"{method.upper()} {path} is not served"
            described.add((method.upper(), match.route.resource.canonical))  # type: ignore[union-attr]
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served - described == set(), "routes missing from /openapi.json"


def _operations_with_keys(document: dict[str, Any]) -> list[tuple[Any, dict[str, str]]]:
    """Each operation and the key that gets past its authentication."""
    schema = schemathesis.openapi.from_dict(document)
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith(("/submit", "/ping")):
            key = KEY
        elif operation.path == "/feedback":
            key = BUYER_KEY
        else:
            key = ADMIN
        operations.append((operation, {"X-Api-Key": key}))
    return operations


def _fuzz(base_url: str, document: dict[str, Any], seen: set[tuple[str, int]]) -> list[str]:
    """Run schemathesis over every operation (blocking: the caller runs it in a thread); `seen`
    collects each operation's statuses."""
    failures: list[str] = []
    known = {"flow_id": "auto", "source_id": "vendor", "buyer_id": "first", "kind": "vendors"}
    for operation, headers in _operations_with_keys(document):
        fixed = {name: value for name, value in known.items() if "{" + name + "}" in operation.path}
        # Random ids meet the 404 paths; the configured ones reach the handlers' own checks,
        # with data the document allows (positive) and data it does not (negative).
        runs = [({}, GenerationMode.POSITIVE), (fixed, GenerationMode.NEGATIVE)]
        if fixed:
            runs.append((fixed, GenerationMode.POSITIVE))
        for path_parameters, mode in runs:
            strategy = operation.as_strategy(mode, path_parameters=path_parameters, headers=headers)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                response = case.call_and_validate(
                    base_url=base_url,
                    checks=[not_a_server_error, response_schema_conformance],
                    timeout=10,
                )
                seen.add((case.operation.label, response.status_code))

            try:
                check()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # no parameters or body to make invalid
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, at once
                failures.append(f"{operation.label} {path_parameters} {mode.value}: {exc}")
    return failures


@pytest.mark.timeout(240)
async def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(
    suite: InProcessSuite,
) -> None:
    document = await _document(suite)
    seen: set[tuple[str, int]] = set()
    failures = await asyncio.to_thread(_fuzz, suite.base_url, document, seen)
    assert not failures, "\n\n".join(failures)
    # The run got past authentication and routing into the handlers, not only their 4xx.
    for label in (
        "POST /flows/{flow_id}/sources/{source_id}/submit",
        "GET /flows/{flow_id}/sources/{source_id}/ping",
        "GET /reports/vendors",
        "GET /flows/{flow_id}/sources/{source_id}/docs",
    ):
        assert any(op == label and status < 300 for op, status in seen), (label, sorted(seen))


# --- Posting instructions --------------------------------------------------------------------

DOCS = "/flows/auto/sources/vendor/docs"


async def _docs(suite: InProcessSuite, path: str = DOCS, **headers: str) -> tuple[int, str]:
    async with suite.http.get(suite.base_url + path, headers=headers) as response:
        return response.status, await response.text()


async def test_docs_need_the_admin_key_or_the_sources_own_key(suite: InProcessSuite) -> None:
    assert (await _docs(suite))[0] == 401
    assert (await _docs(suite, **{"X-Api-Key": BUYER_KEY}))[0] == 401
    assert (await _docs(suite, **{"X-Api-Key": KEY}))[0] == 200
    assert (await _docs(suite, **{"X-Api-Key": ADMIN}))[0] == 200


async def test_docs_of_an_unknown_flow_or_source_are_404(suite: InProcessSuite) -> None:
    assert (await _docs(suite, "/flows/auto/sources/other/docs", **{"X-Api-Key": ADMIN}))[0] == 404
    assert (await _docs(suite, "/flows/other/sources/vendor/docs", **{"X-Api-Key": KEY}))[0] == 404


async def test_docs_show_url_fields_with_types_rules_and_samples(suite: InProcessSuite) -> None:
    status, page = await _docs(suite, **{"X-Api-Key": KEY})
    assert status == 200
    assert f"POST {suite.base_url}/flows/auto/sources/vendor/submit" in page
    assert "<code>loan_amount</code></td><td>number</td>" in page  # the flow's own field
    assert "<code>phone_1</code></td><td>phone</td>" in page
    assert page.count("<td>required</td>") == 1  # phone_1, by the acceptance rules
    assert (
        f"<code>phone_1</code></td><td>phone</td><td>{TYPE_NOTES['phone']}</td>"
        "<td>standard</td><td>required</td>"
    ) in page
    assert "state is included in CA, TX" in page
    assert "A lead is accepted only when a buyer buys it." in page
    assert "curl -u &#x27;API:YOUR_API_KEY&#x27;" in page
    assert KEY not in page  # the source's key is never printed
    assert "First" not in page  # nor who buys its leads


async def test_docs_escape_configured_text(tmp_path: Path) -> None:
    config = DOCS_CONFIG.replace("name: Vendor", 'name: "<script>alert(1)</script>"')
    database = Database(url=f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", schema="test")
    async with in_process_suite(database, config) as suite:
        status, page = await _docs(suite, **{"X-Api-Key": KEY})
    assert status == 200
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
