"""Logs (SPEC 10) of the suite as processes with LEADFLOW_LOG_FORMAT=json: every line a JSON object
naming its service, the lines about a lead carrying its id, and no PII or secret anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.e2e.harness import start_suite
from tests.e2e.telemetry import (
    ADMIN_KEY,
    LEAD,
    SECRETS,
    SERVICES,
    SOURCE_KEY,
    SUBMIT,
    FlakyBuyer,
    config_text,
)


@dataclass
class Logged:
    lines: list[str]  # everything `leadflow up` wrote, after the suite stopped
    lead_id: str


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("logged")
    buyer = FlakyBuyer()
    config = root / "leadflow.yaml"
    config.write_text(config_text(buyer.start()))
    suite = start_suite(
        config, root / "data", env={"LEADFLOW_LOG_FORMAT": "json", "LEADFLOW_LOG_LEVEL": "INFO"}
    )
    try:
        status, _, body = suite.request(
            "POST",
            SUBMIT + f"?email={LEAD['email']}",  # PII in the query string too: never logged
            orjson.dumps(LEAD),
            {"Content-Type": "application/json"},
            key=SOURCE_KEY,
        )
        answer = orjson.loads(body)
        assert (status, answer["outcome"]) == (201, "success"), body
        # An operator reads the lead with the admin key: the key is not logged either.
        suite.request("GET", "/leads/" + answer["lead"]["id"], headers={"X-Api-Key": ADMIN_KEY})
    finally:
        code = suite.stop()
        buyer.stop()
    assert code == 0, "".join(suite.output)
    yield Logged(list(suite.output), answer["lead"]["id"])


def records(logged: Logged) -> list[dict[str, Any]]:
    """Every line parsed (or failing), but the two that `leadflow up` itself prints on stdout:
    the configuration check's and the `leadflow ready` announcement."""
    parsed = []
    for line in logged.lines:
        if line.startswith("leadflow ready ") or line.endswith(
            ": ok (1 flows, 1 sources, 1 buyers)\n"
        ):
            continue
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


def test_every_line_of_every_service_is_a_json_object_naming_it(logged: Logged) -> None:
    parsed = records(logged)
    for record in parsed:
        assert {"time", "level", "service", "message"} <= record.keys(), record
    # Each service logged (its shutdown at least).
    assert {r["service"] for r in parsed} == SERVICES


def test_lines_about_the_lead_carry_its_id(logged: Logged) -> None:
    parsed = records(logged)
    # The buyer's 503 is retried, and the delivery service says so, about this lead.
    [retry] = [r for r in parsed if "retrying" in r["message"]]
    assert retry["service"] == "delivery_service"
    assert retry["lead_id"] == logged.lead_id
    # Every line naming the lead carries it: as `lead_id`, or among a batch's `lead_ids`.
    about_lead = [r for r in parsed if logged.lead_id in r["message"]]
    assert about_lead
    for record in about_lead:
        assert logged.lead_id in (record.get("lead_id"), *record.get("lead_ids", ())), record


def test_the_gateway_logs_each_request_without_query_or_key(logged: Logged) -> None:
    access = [r for r in records(logged) if r.get("logger") == "gateway.access"]
    submits = [r for r in access if r["http_path"] == SUBMIT]
    assert [(r["http_method"], r["http_status"]) for r in submits] == [("POST", 201)]
    [read] = [r for r in access if r["http_path"].startswith("/leads/")]
    assert (read["http_status"], read["lead_id"]) == (200, logged.lead_id)


def test_no_log_line_holds_pii_or_a_secret(logged: Logged) -> None:
    for line in logged.lines:
        for secret in SECRETS:
            assert secret not in line, line
