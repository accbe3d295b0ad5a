"""One lead all the way through the suite as processes: gateway, pricing, routing, delivery, ledger."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.harness import BuyerServer, Suite, ports_free, start_suite

SOURCE_KEY = "e2e-source-key"
ADMIN_KEY = "e2e-admin-key"
SUBMIT = "/flows/auto/sources/vendor/submit"

CONFIG = """
account:
  name: E2E Leads
  time_zone: America/Chicago
  admin_api_key: {admin}
  allow_private_network_delivery: true
sources:
  - {{id: vendor, name: Vendor, api_key: {key}}}
buyers:
  - id: acme
    name: Acme
    pricing: {{prices: [{{amount: 20}}, {{amount: 31.50, rule_set: [{{lhv: state, op: is equal to, rhv: CA}}]}}]}}
    delivery:
      type: http
      url: {url}
      format: {format}
      mapping:
        first: "{{{{lead.first_name}}}}"
        phone: "{{{{lead.phone_1}}}}"
        state: "{{{{lead.state}}}}"
        price: "{{{{sale_price}}}}"
      response:
        outcome_search_term: accepted
        outcome_search_path: status
        reason_path: message
        reference_path: id
flows:
  - id: auto
    name: Auto
    acceptance:
      - {{lhv: phone_1, op: format is valid, reason: A valid phone is required}}
    pricing: {{prices: [{{amount: 10}}, {{amount: 15, rule_set: [{{lhv: state, op: is equal to, rhv: CA}}]}}]}}
    sources: [{{source: vendor}}]
    stages:
      - name: exclusive
        exclusive: true
        steps: [{{buyer: acme}}]
"""

LEAD = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "phone_1": "(512) 555-0142",
    "state": "California",
    "postal_code": "90210",
}


@pytest.fixture(scope="module")
def suite(buyer: BuyerServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    root = tmp_path_factory.mktemp("suite")
    config = root / "leadflow.yaml"
    config.write_text(
        CONFIG.format(admin=ADMIN_KEY, key=SOURCE_KEY, url=buyer.url(), format="json")
    )
    running = start_suite(config, root / "data")
    yield running
    assert running.stop() == 0, "".join(running.output)


def submit_json(
    suite: Suite, lead: dict[str, object], **headers: str
) -> tuple[int, dict[str, object]]:
    status, _, body = suite.request(
        "POST",
        SUBMIT,
        orjson.dumps(lead),
        {"Content-Type": "application/json", **headers},
        SOURCE_KEY,
    )
    return status, orjson.loads(body)


def test_json_submission_sells_with_normalised_fields(suite: Suite, buyer: BuyerServer) -> None:
    before = len(buyer.received)
    status, body = submit_json(suite, LEAD)
    assert status == 201
    assert body["outcome"] == "success"
    assert body["price"] == 15  # flow rule for CA: last match wins
    sent = buyer.received[before:]
    assert len(sent) == 1
    assert sent[0]["data"] == {
        "first": "Ada",
        "phone": "5125550142",
        "state": "CA",
        "price": "31.50",
    }


def test_form_submission_sells(suite: Suite, buyer: BuyerServer) -> None:
    before = len(buyer.received)
    form = b"first_name=Grace&phone_1=512-555-0199&state=nevada"
    status, _, raw = suite.request(
        "POST", SUBMIT, form, {"Content-Type": "application/x-www-form-urlencoded"}, SOURCE_KEY
    )
    assert status == 201
    assert orjson.loads(raw)["outcome"] == "success"
    assert buyer.received[before]["data"]["state"] == "NV"
    assert buyer.received[before]["data"]["phone"] == "5125550199"


def test_xml_submission_sells_and_answers_in_xml(suite: Suite, buyer: BuyerServer) -> None:
    before = len(buyer.received)
    xml = b"<lead><first_name>Alan</first_name><phone_1>+1 (415) 555-0100</phone_1><state>TX</state></lead>"
    status, headers, raw = suite.request(
        "POST",
        SUBMIT,
        xml,
        {"Content-Type": "application/xml", "Accept": "application/xml"},
        SOURCE_KEY,
    )
    assert status == 201
    assert headers["Content-Type"].startswith("application/xml")
    assert b"<outcome>success</outcome>" in raw
    assert buyer.received[before]["data"]["phone"] == "4155550100"


def test_acceptance_failure_returns_the_rule_reason_without_calling_the_buyer(
    suite: Suite, buyer: BuyerServer
) -> None:
    before = len(buyer.received)
    status, body = submit_json(suite, {**LEAD, "phone_1": "12"})
    assert (status, body["outcome"], body["reason"]) == (
        201,
        "failure",
        "A valid phone is required",
    )
    assert body["price"] == 0
    assert len(buyer.received) == before


def test_buyer_rejection_fails_the_step_with_its_reason(suite: Suite) -> None:
    status, body = submit_json(suite, {**LEAD, "state": "NY"})
    assert (status, body["outcome"]) == (201, "success")  # accepted lead; no buyer required
    status, _, raw = suite.request("GET", f"/leads/{body['lead']['id']}", key=ADMIN_KEY)  # type: ignore[index]
    [event] = orjson.loads(raw)["recipient_events"]
    assert (event["outcome"], event["reason"]) == ("failure", "Not buying NY")


@pytest.mark.parametrize(
    ("path", "headers", "body", "key", "status"),
    [
        (SUBMIT, {"Content-Type": "application/json"}, b"{}", "wrong-key", 401),
        (SUBMIT, {"Content-Type": "application/json"}, b"{}", None, 401),
        (
            "/flows/nope/sources/vendor/submit",
            {"Content-Type": "application/json"},
            b"{}",
            SOURCE_KEY,
            404,
        ),
        (
            "/flows/auto/sources/nope/submit",
            {"Content-Type": "application/json"},
            b"{}",
            SOURCE_KEY,
            404,
        ),
        (SUBMIT, {}, b"first_name=Ada", SOURCE_KEY, 415),
        (SUBMIT, {"Content-Type": "application/pdf"}, b"%PDF", SOURCE_KEY, 406),
        (SUBMIT, {"Content-Type": "application/json"}, b'{"first_name": ', SOURCE_KEY, 400),
        (
            SUBMIT,
            {"Content-Type": "application/json", "Accept": "image/png"},
            b"{}",
            SOURCE_KEY,
            406,
        ),
        (
            SUBMIT,
            {"Content-Type": "application/json"},
            b'{"a": "' + b"x" * (1024 * 1024) + b'"}',
            SOURCE_KEY,
            413,
        ),
    ],
)
def test_client_errors_get_their_status_and_a_reason(
    suite: Suite, path: str, headers: dict[str, str], body: bytes, key: str | None, status: int
) -> None:
    got, _, raw = suite.request("POST", path, body, headers, key)
    assert got == status
    assert orjson.loads(raw)["reason"]


def test_other_methods_are_not_allowed(suite: Suite) -> None:
    status, headers, _ = suite.request(
        "PUT", SUBMIT, b"{}", {"Content-Type": "application/json"}, SOURCE_KEY
    )
    assert status == 405
    assert "POST" in headers["Allow"]


def test_get_submission_reads_the_query_string(suite: Suite, buyer: BuyerServer) -> None:
    before = len(buyer.received)
    status, _, raw = suite.request(
        "GET", SUBMIT + "?first_name=Q&phone_1=5125550111&state=AZ", key=SOURCE_KEY
    )
    assert (status, orjson.loads(raw)["outcome"]) == (201, "success")
    assert buyer.received[before]["data"]["state"] == "AZ"


def test_lead_view_shows_source_and_recipient_events(suite: Suite) -> None:
    _, body = submit_json(suite, LEAD)
    lead_id = body["lead"]["id"]  # type: ignore[index]
    status, _, raw = suite.request("GET", f"/leads/{lead_id}", key=ADMIN_KEY)
    assert status == 200
    view = orjson.loads(raw)
    assert view["lead"]["fields"]["phone_1"]["raw"] == "(512) 555-0142"
    assert view["lead"]["fields"]["phone_1"]["normal"] == "5125550142"
    source = view["source_event"]
    assert (source["outcome"], source["purchase_price"], source["revenue"]) == ("success", 15, 31.5)
    assert source["pricing"]["layer"] == "flow_rules"
    [recipient] = view["recipient_events"]
    assert (recipient["buyer_id"], recipient["outcome"], recipient["sale_price"]) == (
        "acme",
        "success",
        31.5,
    )
    assert recipient["reference"]
    assert recipient["attempts"][0]["status_code"] == 200


def test_lead_view_needs_the_admin_key(suite: Suite) -> None:
    assert suite.request("GET", "/leads/whatever", key=SOURCE_KEY)[0] == 401
    assert suite.request("GET", "/leads/whatever", key=ADMIN_KEY)[0] == 404


def test_repeated_idempotency_key_returns_the_first_response_and_sells_once(
    suite: Suite, buyer: BuyerServer
) -> None:
    before = len(buyer.received)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "order-77"}
    first = suite.request("POST", SUBMIT, orjson.dumps(LEAD), headers, SOURCE_KEY)
    again = suite.request(
        "POST", SUBMIT, orjson.dumps({**LEAD, "first_name": "Other"}), headers, SOURCE_KEY
    )
    assert first[0] == again[0] == 201
    assert first[2] == again[2]  # byte for byte
    assert len(buyer.received) == before + 1


def test_healthz_and_metrics_are_served(suite: Suite) -> None:
    assert suite.request("GET", "/healthz")[0] == 200
    headers = {"Content-Type": "application/json"}
    assert suite.request("POST", SUBMIT, orjson.dumps(LEAD), headers, SOURCE_KEY)[0] == 201
    series = b'leadflow_leads_total{flow="auto",outcome="success",source="vendor"}'
    # The metrics port (B+15), which Prometheus scrapes: everything, no key.
    url = f"http://127.0.0.1:{suite.port_base + 15}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert series in response.read()
    # The vendor-facing port: revenue by buyer is not public (SPEC 5.4, issue 13).
    for key in (None, SOURCE_KEY):
        status, _, raw = suite.request("GET", "/metrics", key=key)
        assert status == 401, raw
        assert b"leadflow_" not in raw
    status, _, raw = suite.request("GET", "/metrics", key=ADMIN_KEY)
    assert status == 200
    assert series in raw


def test_the_ledger_runs_at_a_lower_cpu_priority_than_the_lead_path(suite: Suite) -> None:
    modules = ["gateway", "pricing_service", "routing_service", "delivery_service"]
    lead_path = {os.getpriority(os.PRIO_PROCESS, suite.child_pid(m)) for m in modules}
    assert lead_path == {os.getpriority(os.PRIO_PROCESS, suite.process.pid)}
    ledger = os.getpriority(os.PRIO_PROCESS, suite.child_pid("ledger_service"))
    assert ledger == min(lead_path) + 10


def test_sigterm_of_the_supervisor_stops_every_service(buyer: BuyerServer, tmp_path: Path) -> None:
    config = tmp_path / "leadflow.yaml"
    config.write_text(
        CONFIG.format(admin=ADMIN_KEY, key=SOURCE_KEY, url=buyer.url(), format="json")
    )
    running = start_suite(config, tmp_path / "data")
    assert running.stop(signal.SIGTERM) == 0, "".join(running.output)
    grpc_ports = [running.port_base + i for i in range(1, 6)]
    assert ports_free([*grpc_ports, running.http_port]), "a service outlived the supervisor"


def test_services_stop_when_the_supervisor_is_killed(buyer: BuyerServer, tmp_path: Path) -> None:
    config = tmp_path / "leadflow.yaml"
    config.write_text(
        CONFIG.format(admin=ADMIN_KEY, key=SOURCE_KEY, url=buyer.url(), format="json")
    )
    running = start_suite(config, tmp_path / "data")
    running.stop(signal.SIGKILL)
    ports = [running.port_base + i for i in range(1, 6)]
    deadline = time.monotonic() + 20
    while not ports_free([*ports, running.http_port]):
        assert time.monotonic() < deadline, "a service outlived its killed supervisor"
        time.sleep(0.1)
