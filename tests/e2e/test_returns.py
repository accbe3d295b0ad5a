"""Returns end to end (issue 6, acceptance 1): leads sold to three buyers, returned approved,
pending then approved, pending then denied, outside the window, with a bad reason, over the
monthly percent and twice; every case gets the specified outcome, and the vendor and buyer
reports move by exactly the credited amounts. Also: conversions, the lead view's journal, and
the same reports from `leadflow report` (from storage and from the running ledger)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from tests.e2e.harness import BuyerServer, Suite, start_suite

SOURCE_KEY = "returns-source-key"
ADMIN_KEY = "returns-admin-key"
KEYS = {"acme": "acme-key", "beta": "beta-key", "gamma": "gamma-key"}
SUBMIT = "/flows/auto/sources/vendor/submit"

CONFIG = """
account:
  name: Returns E2E
  time_zone: UTC
  admin_api_key: {admin}
  allow_private_network_delivery: true
sources:
  - {{id: vendor, name: Vendor Inc, api_key: {source}}}
buyers:
  - id: acme
    name: Acme Insurance
    api_key: {acme}
    pricing: {{prices: [{{amount: 30}}]}}
    returns: {{window_days: 30, max_percent: 50, auto_approve: true,
              reasons: [Bad phone, Duplicate], return_to_source: true}}
    delivery: {delivery}
  - id: beta
    name: Beta Auto
    api_key: {beta}
    pricing: {{prices: [{{amount: 20}}]}}
    returns: {{window_days: 30, auto_approve: false, return_to_source: true}}
    delivery: {delivery}
  - id: gamma
    name: Gamma Cover
    api_key: {gamma}
    pricing: {{prices: [{{amount: 10}}]}}
    returns: {{window_days: 0, return_to_source: true}}
    delivery: {delivery}
  - id: nokey
    name: No Key Buyer
    delivery: {delivery}
flows:
  - id: auto
    name: Auto
    pricing: {{prices: [{{amount: 10}}]}}
    sources: [{{source: vendor}}]
    stages:
      - name: shared
        sell: 3
        steps: [{{buyer: acme}}, {{buyer: beta}}, {{buyer: gamma}}]
"""
DELIVERY = (
    '{{type: http, url: "{url}", response: {{outcome_search_term: accepted, '
    "outcome_search_path: status}}}}"
)


@dataclass
class Scenario:
    """Everything the suite answered while the scenario ran, for the tests to read."""

    suite: Suite
    config: Path
    data_dir: Path
    leads: list[str] = field(default_factory=list)
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    after: dict[str, dict[str, Any]] = field(default_factory=dict)

    def answer(self, name: str) -> dict[str, Any]:
        return self.answers[name][1]


def report_params(**extra: str) -> str:
    today = datetime.now(UTC).date()
    params = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=2))}
    params.update(extra)
    return urlencode(params)


def get_json(suite: Suite, path: str) -> tuple[int, dict[str, Any]]:
    status, _, body = suite.request("GET", path, key=ADMIN_KEY)
    return status, orjson.loads(body)


def rows_by(report: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in report["rows"]}


def feedback(
    suite: Suite,
    buyer: str | None,
    body: dict[str, Any],
    key: str | None = None,
    form: bool = False,
) -> tuple[int, dict[str, Any]]:
    if form:
        payload, media = urlencode(body).encode(), "application/x-www-form-urlencoded"
    else:
        payload, media = orjson.dumps(body), "application/json"
    status, _, raw = suite.request(
        "POST",
        "/feedback",
        payload,
        {"Content-Type": media},
        key or (KEYS[buyer] if buyer else None),
    )
    return status, orjson.loads(raw)


def decide(suite: Suite, feedback_id: str, action: str) -> tuple[int, dict[str, Any]]:
    status, _, raw = suite.request("POST", f"/returns/{feedback_id}/{action}", key=ADMIN_KEY)
    return status, orjson.loads(raw)


@pytest.fixture(scope="module")
def scenario(buyer: BuyerServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("returns")
    config = root / "leadflow.yaml"
    delivery = DELIVERY.format(url=buyer.url())
    config.write_text(CONFIG.format(admin=ADMIN_KEY, source=SOURCE_KEY, delivery=delivery, **KEYS))
    suite = start_suite(config, root / "data")
    run = Scenario(suite, config, root / "data")
    try:
        for n in range(4):
            status, _, body = suite.request(
                "POST",
                SUBMIT,
                orjson.dumps({"first_name": f"Lead{n}", "phone_1": "512-555-0142", "state": "TX"}),
                {"Content-Type": "application/json"},
                SOURCE_KEY,
            )
            assert status == 201, body
            answer = orjson.loads(body)
            assert answer["outcome"] == "success", answer
            run.leads.append(answer["lead"]["id"])
        for kind in ("vendors", "buyers"):
            run.before[kind] = get_json(suite, f"/reports/{kind}?{report_params()}")[1]
        l1, l2, l3, l4 = run.leads
        steps: list[tuple[str, Any]] = [
            (
                "acme-approved",
                lambda: feedback(
                    suite, "acme", {"lead_id": l1, "type": "return", "reason": "Bad phone"}
                ),
            ),
            (
                "acme-duplicate",
                lambda: feedback(
                    suite, "acme", {"lead_id": l1, "type": "return", "reason": "Duplicate"}
                ),
            ),
            (
                "acme-bad-reason",
                lambda: feedback(
                    suite,
                    "acme",
                    {"lead_id": l2, "type": "return", "reason": "Too expensive"},
                    form=True,
                ),
            ),
            (
                "acme-second",
                lambda: feedback(
                    suite,
                    "acme",
                    {"lead_id": l2, "type": "return", "reason": "duplicate"},
                    form=True,
                ),
            ),
            (
                "acme-over-percent",
                lambda: feedback(
                    suite, "acme", {"lead_id": l3, "type": "return", "reason": "Duplicate"}
                ),
            ),
            (
                "beta-pending",
                lambda: feedback(
                    suite, "beta", {"lead_id": l3, "type": "return", "reason": "No answer"}
                ),
            ),
            (
                "beta-to-deny",
                lambda: feedback(
                    suite, "beta", {"lead_id": l4, "type": "return", "reason": "No answer"}
                ),
            ),
            (
                "beta-second-chargeback",
                lambda: feedback(
                    suite,
                    "beta",
                    {"lead_id": l1, "type": "return", "reason": "No answer", "amount": "12.50"},
                ),
            ),
            (
                "gamma-outside-window",
                lambda: feedback(
                    suite, "gamma", {"lead_id": l4, "type": "return", "reason": "Late"}
                ),
            ),
            (
                "gamma-conversion",
                lambda: feedback(suite, "gamma", {"lead_id": l4, "type": "conversion"}),
            ),
            (
                "wrong-key",
                lambda: feedback(suite, None, {"lead_id": l1, "type": "return"}, key="nope"),
            ),
            ("no-key", lambda: feedback(suite, None, {"lead_id": l1, "type": "return"})),
            (
                "unknown-lead",
                lambda: feedback(suite, "acme", {"lead_id": "nope", "type": "return"}),
            ),
            ("bad-type", lambda: feedback(suite, "acme", {"lead_id": l1, "type": "refund"})),
        ]
        for name, step in steps:
            run.answers[name] = step()
        pending = run.answer("beta-pending")["feedback"]["id"]
        denied = run.answer("beta-to-deny")["feedback"]["id"]
        second = run.answer("beta-second-chargeback")["feedback"]["id"]
        run.answers["approve"] = decide(suite, pending, "approve")
        run.answers["approve-again"] = decide(suite, pending, "approve")
        run.answers["deny-approved"] = decide(suite, pending, "deny")
        run.answers["deny"] = decide(suite, denied, "deny")
        run.answers["approve-second"] = decide(suite, second, "approve")
        run.answers["decide-unknown"] = decide(suite, "nope", "approve")
        status, _, raw = suite.request("POST", f"/returns/{pending}/approve", key="not-admin")
        run.answers["decide-unauthorized"] = (status, orjson.loads(raw))
        for kind in ("vendors", "buyers"):
            run.after[kind] = get_json(suite, f"/reports/{kind}?{report_params()}")[1]
        yield run
    finally:
        assert suite.stop() == 0, "".join(suite.output)


@pytest.mark.parametrize(
    ("name", "http", "outcome", "status", "reason"),
    [
        ("acme-approved", 201, "success", "approved", None),
        ("acme-duplicate", 201, "failure", "denied", "Lead already returned"),
        (
            "acme-bad-reason",
            201,
            "failure",
            "denied",
            "Return reason must be one of: Bad phone, Duplicate",
        ),
        ("acme-second", 201, "success", "approved", None),
        ("acme-over-percent", 201, "failure", "denied", "Over 50% of this month's sales"),
        ("beta-pending", 201, "success", "pending", None),
        ("beta-to-deny", 201, "success", "pending", None),
        ("gamma-outside-window", 201, "failure", "denied", "Outside the 0-day return window"),
        ("gamma-conversion", 201, "success", "approved", None),
        ("approve", 200, "success", "approved", None),
        ("approve-again", 200, "success", "approved", None),
        ("deny", 200, "success", "denied", None),
    ],
)
def test_each_feedback_gets_its_specified_outcome(
    scenario: Scenario, name: str, http: int, outcome: str, status: str, reason: str | None
) -> None:
    code, body = scenario.answers[name]

    assert code == http, body
    assert body["outcome"] == outcome
    assert body.get("reason") == reason
    assert body["feedback"]["status"] == status
    assert body["feedback"]["id"]


@pytest.mark.parametrize(
    ("name", "http"),
    [
        ("wrong-key", 401),
        ("no-key", 401),
        ("unknown-lead", 404),
        ("bad-type", 400),
        ("deny-approved", 409),
        ("decide-unknown", 404),
        ("decide-unauthorized", 401),
    ],
)
def test_refused_requests_get_their_http_status(scenario: Scenario, name: str, http: int) -> None:
    code, body = scenario.answers[name]

    assert code == http, body
    assert body["outcome"] == "failure" and body["reason"]


def test_vendor_report_moves_by_exactly_the_chargebacks(scenario: Scenario) -> None:
    before = rows_by(scenario.before["vendors"], "source_id")["vendor"]
    after = rows_by(scenario.after["vendors"], "source_id")["vendor"]

    # L1 (acme, then beta: charged back once), L2 (acme), L3 (beta approved): 3 x $10.
    assert (before["leads"], before["accepted"], before["purchase_total"]) == (4, 4, 40)
    assert before["chargebacks"] == 0 and before["net_payable"] == 40
    assert after["purchase_total"] == 40
    assert after["chargebacks"] == 30
    assert after["net_payable"] == 10
    assert after["source_name"] == "Vendor Inc"


def test_buyer_report_moves_by_exactly_the_credits(scenario: Scenario) -> None:
    before = rows_by(scenario.before["buyers"], "buyer_id")
    after = rows_by(scenario.after["buyers"], "buyer_id")
    credits = {"acme": 60, "beta": 32.5, "gamma": 0, "nokey": 0}
    returns = {"acme": 2, "beta": 2, "gamma": 0, "nokey": 0}

    for buyer_id, credit in credits.items():
        assert before[buyer_id]["return_credits"] == 0
        assert after[buyer_id]["sales_total"] == before[buyer_id]["sales_total"]
        assert after[buyer_id]["return_credits"] == credit, buyer_id
        assert after[buyer_id]["returns"] == returns[buyer_id], buyer_id
        assert after[buyer_id]["net_receivable"] == before[buyer_id]["net_receivable"] - credit
    assert (after["acme"]["sold"], after["acme"]["sales_total"]) == (4, 120)
    assert scenario.after["buyers"]["totals"]["return_credits"] == 92.5


def test_lead_view_shows_the_feedback_and_the_journal(scenario: Scenario) -> None:
    status, view = get_json(scenario.suite, f"/leads/{scenario.leads[0]}")

    assert status == 200
    assert [(f["buyer_id"], f["status"]) for f in view["feedback"]] == [
        ("acme", "approved"),
        ("acme", "denied"),
        ("beta", "approved"),
    ]
    kinds = [posting["kind"] for posting in view["postings"]]
    assert sorted(kinds) == ["chargeback", "purchase", "return", "return", "sale", "sale", "sale"]
    [chargeback] = [p for p in view["postings"] if p["kind"] == "chargeback"]
    assert (chargeback["debit"], chargeback["credit"], chargeback["amount"]) == (
        "vendor_payable:vendor",
        "chargebacks:auto",
        10,
    )


def test_margin_report_groups_by_source_and_buyer(scenario: Scenario) -> None:
    status, margin = get_json(
        scenario.suite, f"/reports/margin?{report_params(group_by='source,buyer')}"
    )

    assert status == 200
    rows = rows_by(margin, "buyer_id")
    assert set(rows) == {"acme", "beta", "gamma"}
    assert rows["acme"]["revenue"] == 120 and rows["acme"]["credits"] == 60
    assert margin["totals"]["revenue"] == 240
    assert margin["totals"]["cost"] == 10  # $40 of purchases less $30 of chargebacks
    assert margin["totals"]["credits"] == 92.5
    assert margin["totals"]["margin"] == 137.5
    assert margin["totals"]["leads"] == 4


def test_csv_report_has_a_header_and_a_row_per_buyer(scenario: Scenario) -> None:
    status, headers, body = scenario.suite.request(
        "GET", f"/reports/buyers?{report_params(format='csv')}", key=ADMIN_KEY
    )

    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [row["buyer_id"] for row in rows] == ["acme", "beta", "gamma", "nokey"]
    assert rows[1]["return_credits"] == "32.50"


def test_reports_need_the_admin_key_and_good_dates(scenario: Scenario) -> None:
    unauthorized = scenario.suite.request("GET", f"/reports/vendors?{report_params()}")
    bad = get_json(scenario.suite, "/reports/vendors?from=2026-13-01&to=2026-12-01")

    assert unauthorized[0] == 401
    assert bad[0] == 400 and "from" in bad[1]["reason"]


def _cli(scenario: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "leadflow", "report", *args, "--config", str(scenario.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("via", ["storage", "ledger"])
def test_cli_report_prints_what_the_api_serves(scenario: Scenario, via: str) -> None:
    today = datetime.now(UTC).date()
    dates = ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=2))]
    where = (
        ["--data-dir", str(scenario.data_dir)]
        if via == "storage"
        else ["--ledger", f"127.0.0.1:{scenario.suite.port_base + 4}"]
    )

    as_json = _cli(scenario, "vendors", *dates, *where, "--format", "json")
    as_table = _cli(scenario, "buyers", *dates, *where)

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == scenario.after["vendors"]
    assert as_table.returncode == 0, as_table.stderr
    lines = as_table.stdout.splitlines()
    assert lines[-1].split()[0] == "TOTAL"
    assert lines[-1].split()[-3:-1] == ["92.50", "147.50"]  # return credits, net receivable


def test_cli_report_refuses_bad_dates(scenario: Scenario) -> None:
    result = _cli(scenario, "vendors", "--from", "yesterday", "--to", "2026-01-01")

    assert result.returncode == 2
    assert "from must be a date" in result.stderr
