"""The dashboards against real data: the suite (`leadflow up`) and Debian's Prometheus on loopback,
scraping it with deploy/prometheus/prometheus.yml (targets rewritten to 127.0.0.1) and its rules.

Traffic of every kind goes through the suite: sales, buyer rejections and failed acceptance,
delivery errors, retries, pricing fallbacks, returns with vendor chargebacks, and a batch file over
SFTP. Then every panel query of both dashboards must return data through Prometheus's HTTP API,
and the margin panel must agree with the ledger's margin report to the cent, flow by flow.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import yaml
from aiohttp import web

from tests.delivery_servers import SftpServer, ThreadedServers, read_csv
from tests.e2e.harness import Suite, ThreadedApp, start_suite

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ADMIN_KEY = "obs-admin-key"
ACME_KEY = "obs-acme-key"
SOURCE_KEYS = {"vendor": "obs-vendor-key", "partner": "obs-partner-key"}
TIME_ZONE = "America/Chicago"
NEVER = "0 0 1 1 *"  # the batch buyer's file goes when an operator asks
SCRAPE_SECONDS = 1
RATE_INTERVAL = "5s"  # what Grafana gives $__rate_interval at a 1 s scrape interval
SERVICE_OFFSETS = {"pricing": 11, "routing": 12, "delivery": 13, "ledger": 14, "gateway": 15}

CONFIG = """
account:
  name: Observability
  time_zone: {tz}
  admin_api_key: {admin}
  allow_private_network_delivery: true
sources:
  - {{id: vendor, name: Vendor, api_key: {vendor_key}}}
  - {{id: partner, name: Partner, api_key: {partner_key}}}
buyers:
  - id: acme
    name: Acme
    api_key: {acme_key}
    returns: {{window_days: 30, auto_approve: true, return_to_source: true}}
    pricing: {{prices: [{{amount: 20}}]}}
    delivery:
      type: http
      url: {buyers}/acme
      mapping: {{phone: "{{{{lead.phone_1}}}}", state: "{{{{lead.state}}}}"}}
      response: {{outcome_search_term: accepted, outcome_search_path: status, reason_path: message}}
  - id: flaky
    name: Flaky
    pricing: {{prices: [{{amount: 12.50}}]}}
    delivery:
      type: http
      url: {buyers}/flaky
      retry: {{attempts: 3, backoff_ms: 10}}
      response: {{outcome_search_term: accepted, outcome_search_path: status}}
  - id: dead
    name: Dead
    pricing: {{prices: [{{amount: 9}}]}}
    delivery: {{type: http, url: "http://127.0.0.1:{closed}/leads", timeout_ms: 500}}
  - id: files
    name: Files
    pricing: {{prices: [{{amount: 7.25}}]}}
    delivery:
      type: sftp
      host: 127.0.0.1
      port: {sftp_port}
      username: leads
      password: s3cret-pass
      host_key: "{host_key}"
      directory: /incoming
      schedule: "{never}"
      columns: {{Lead: "{{{{lead_id}}}}", Phone: "{{{{phone_1}}}}"}}
flows:
  - id: auto
    name: Auto
    acceptance:
      - {{lhv: phone_1, op: format is valid, reason: A valid phone is required}}
    pricing: {{prices: [{{amount: 10}}, {{amount: 15, rule_set: [{{lhv: state, op: is equal to, rhv: CA}}]}}]}}
    sources: [{{source: vendor}}, {{source: partner}}]
    stages:
      - name: waterfall
        exclusive: true
        steps: [{{buyer: dead}}, {{buyer: acme}}]
  - id: capped
    name: Capped
    caps: [{{max_leads: 1, per: day, reason: Daily cap reached}}]
    pricing: {{prices: [{{amount: 3}}]}}
    sources: [{{source: partner}}]
    stages: [{{name: only, steps: [{{buyer: acme}}]}}]
  - id: home
    name: Home
    pricing:
      service: {{url: "http://127.0.0.1:{closed}/price", timeout_ms: 300, fallback_price: 4.40}}
    sources: [{{source: vendor}}]
    stages:
      - name: shared
        sell: 2
        steps: [{{buyer: flaky}}, {{buyer: files}}]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Buyers:
    """acme accepts all but New York; flaky answers 503 to every other request (retried)."""

    def __init__(self) -> None:
        self.flaky_calls = 0
        self.port = 0

    def __enter__(self) -> Buyers:
        async def acme(request: web.Request) -> web.Response:
            lead = await request.json()
            if lead.get("state") == "NY":
                return web.json_response({"status": "rejected", "message": "Not buying NY"})
            return web.json_response({"status": "accepted"})

        async def flaky(_request: web.Request) -> web.Response:
            self.flaky_calls += 1
            if self.flaky_calls % 2:
                return web.json_response({"status": "busy"}, status=503)
            return web.json_response({"status": "accepted"})

        app = web.Application()
        app.router.add_post("/acme", acme)
        app.router.add_post("/flaky", flaky)
        self._server = ThreadedApp(app)
        self.port = self._server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.stop()


class Prometheus:
    """Debian's prometheus on loopback with a config generated from deploy/prometheus."""

    def __init__(self, root: Path, port_base: int) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus is needed (apt-get install prometheus; .ci/run does)"
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = f"{SCRAPE_SECONDS}s"
        config["global"]["evaluation_interval"] = f"{SCRAPE_SECONDS}s"
        config["rule_files"] = [
            str(DEPLOY / "prometheus" / rule_file) for rule_file in config["rule_files"]
        ]
        jobs = [job for job in config["scrape_configs"] if job["job_name"] == "leadflow"]
        for entry in jobs[0]["static_configs"]:
            offset = SERVICE_OFFSETS[entry["labels"]["service"]]
            entry["targets"] = [f"127.0.0.1:{port_base + offset}"]
        config["scrape_configs"] = jobs
        root.mkdir(parents=True, exist_ok=True)
        path = root / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (root / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited; see prometheus.log"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("prometheus did not become ready")

    def targets(self) -> list[dict[str, Any]]:
        return [
            target
            for target in self.get("/api/v1/targets")["data"]["activeTargets"]
            if target["labels"]["job"] == "leadflow"
        ]

    def wait_scraped_after(self, moment: float, timeout: float = 30) -> None:
        """Until every leadflow target has been scraped, successfully, after `moment`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.targets()
            if len(targets) == len(SERVICE_OFFSETS) and all(
                target["health"] == "up"
                and datetime.fromisoformat(target["lastScrape"]).timestamp() > moment
                for target in targets
            ):
                return
            time.sleep(0.1)
        raise AssertionError(f"targets not scraped: {self.targets()}")

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        reply = self.get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=str(SCRAPE_SECONDS),
        )
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def grafana_query(expr: str, range_seconds: int) -> str:
    """A panel query as Grafana sends it with every variable at All."""
    for variable in ("$flow", "$source", "$buyer", "$adapter"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{range_seconds}s")


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = []
    for series in result:
        points = series.get("values") or [series["value"]]
        values += [float(value) for _, value in points if math.isfinite(float(value))]
    return values


def panels(board: str) -> list[dict[str, Any]]:
    data = json.loads((DEPLOY / "grafana" / "dashboards" / board).read_text())
    return [panel for panel in data["panels"] if panel["type"] != "row"]


# --- Traffic ------------------------------------------------------------------------------------


def submit(suite: Suite, flow: str, source: str, lead: dict[str, str]) -> dict[str, Any]:
    status, _, body = suite.request(
        "POST",
        f"/flows/{flow}/sources/{source}/submit",
        orjson.dumps(lead),
        {"Content-Type": "application/json"},
        key=SOURCE_KEYS[source],
    )
    assert status == 201, body
    return dict(orjson.loads(body))


def operator(suite: Suite, method: str, path: str) -> Any:
    status, _, body = suite.request(method, path, key=ADMIN_KEY)
    assert status in (200, 201), (path, status, body)
    return orjson.loads(body)


def margin_report(suite: Suite) -> dict[str, dict[str, Decimal]]:
    today = datetime.now(ZoneInfo(TIME_ZONE)).date()
    query = urllib.parse.urlencode(
        {
            "from": (today - timedelta(days=1)).isoformat(),
            "to": (today + timedelta(days=2)).isoformat(),
            "group_by": "flow",
        }
    )
    status, _, body = suite.request("GET", f"/reports/margin?{query}", key=ADMIN_KEY)
    assert status == 200, body
    rows = orjson.loads(body)["rows"]
    return {
        row["flow_id"]: {
            name: Decimal(str(row[name])) for name in ("revenue", "cost", "credits", "margin")
        }
        for row in rows
    }


def lead(number: int, state: str, phone: str = "") -> dict[str, str]:
    return {
        "first_name": f"Lead{number}",
        "email": f"lead{number}@example.com",
        "phone_1": phone or f"(512) 555-{1000 + number:04d}",
        "state": state,
    }


def send_round(suite: Suite, first: int) -> list[str]:
    """One round of leads: sales, buyer rejections (NY), a failed acceptance, delivery errors
    (dead) and retries (flaky) in auto and home; the ids of acme's sales."""
    sold: list[str] = []
    number = first
    for source, states in (("vendor", ["CA", "TX", "NY", "CA"]), ("partner", ["CA", "NY", "TX"])):
        for state in states:
            number += 1
            reply = submit(suite, "auto", source, lead(number, state))
            assert reply["outcome"] == "success", reply
            if state != "NY":
                sold.append(reply["lead"]["id"])
    reply = submit(suite, "auto", "vendor", lead(number + 1, "CA", phone="12"))
    assert reply["outcome"] == "failure", reply
    for offset, state in enumerate(("TX", "CA", "AZ"), start=2):
        assert submit(suite, "home", "vendor", lead(number + offset, state))["outcome"] == "success"
    return sold


def send_traffic(suite: Suite, prometheus: Prometheus) -> list[str]:
    """Two rounds of leads with a scrape between them, so that rates see counters move (a series
    is born with its first increment, which no rate can see), then returns and a batch file."""
    sold = send_round(suite, 0)
    prometheus.wait_scraped_after(time.time())
    sold += send_round(suite, 100)
    # A flow cap: the first lead is sold, the second refused.
    assert submit(suite, "capped", "partner", lead(200, "TX"))["outcome"] == "success"
    refused = submit(suite, "capped", "partner", lead(201, "TX"))
    assert (refused["outcome"], refused["reason"]) == ("failure", "Daily cap reached")
    # Returns: acme takes back two of its sales (credit, and a chargeback to the vendor).
    for lead_id in sold[:2]:
        status, _, body = suite.request(
            "POST",
            "/feedback",
            orjson.dumps({"lead_id": lead_id, "type": "return", "reason": "Disconnected phone"}),
            {"Content-Type": "application/json"},
            key=ACME_KEY,
        )
        assert status == 201, body
        assert orjson.loads(body)["feedback"]["status"] == "approved", body
    # The batch goes once the backlog is on the dashboards' gauge.
    backlog = 'max(leadflow_batch_pending_leads{buyer="files"}) == 6'
    deadline = time.monotonic() + 30
    while not prometheus.query(backlog, time.time()):
        assert time.monotonic() < deadline, "the batch backlog never reached Prometheus"
        time.sleep(0.1)
    operator(suite, "POST", "/batches/files/deliver")
    return sold


# --- The test -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def buyers() -> Iterator[Buyers]:
    with Buyers() as running:
        yield running


@pytest.fixture(scope="module")
def sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    servers = ThreadedServers()
    server = SftpServer(tmp_path_factory.mktemp("sftp"))
    servers.start(server)
    (server.root / "incoming").mkdir(exist_ok=True)
    yield server
    servers.close()


@pytest.fixture(scope="module")
def observed(
    buyers: Buyers, sftp: SftpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The suite and Prometheus, traffic sent, every target scraped after it settled."""
    root = tmp_path_factory.mktemp("observability")
    config = root / "leadflow.yaml"
    config.write_text(
        CONFIG.format(
            tz=TIME_ZONE,
            admin=ADMIN_KEY,
            vendor_key=SOURCE_KEYS["vendor"],
            partner_key=SOURCE_KEYS["partner"],
            acme_key=ACME_KEY,
            buyers=f"http://127.0.0.1:{buyers.port}",
            closed=free_port(),
            sftp_port=sftp.port,
            host_key=sftp.host_key_line,
            never=NEVER,
        )
    )
    started = time.time()
    suite = start_suite(config, root / "data")
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus(root / "prometheus", suite.port_base)
        prometheus.wait_ready()
        prometheus.wait_scraped_after(time.time())
        sold = send_traffic(suite, prometheus)
        report = wait_for_batch_sales(suite, sftp)
        settled = time.time()
        prometheus.wait_scraped_after(settled + SCRAPE_SECONDS)
        yield {
            "suite": suite,
            "prometheus": prometheus,
            "report": report,
            "sold": sold,
            "start": started,
            "at": time.time(),
        }
    finally:
        if prometheus is not None:
            prometheus.stop()
        code = suite.stop()
        assert code == 0, "".join(suite.output)


def wait_for_batch_sales(suite: Suite, sftp: SftpServer) -> dict[str, dict[str, Decimal]]:
    """The margin report once the batch file is delivered and its sales are in the ledger."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = sftp.files("incoming")
        report = margin_report(suite)
        # home: flaky's six sales (12.50) and the six batch sales (7.25) once booked.
        if files and report.get("home", {}).get("revenue") == Decimal("118.50"):
            (content,) = files.values()
            assert len(read_csv(content)) == 6
            return report
        time.sleep(0.1)
    raise AssertionError(f"batch sales not booked: {margin_report(suite)}, files {sftp.files()}")


def test_traffic_covers_every_kind(observed: dict[str, Any]) -> None:
    prometheus: Prometheus = observed["prometheus"]
    at = observed["at"]

    def total(expr: str) -> float:
        return sum(finite_values(prometheus.query(f"sum({expr})", at)))

    assert total('leadflow_deliveries_total{buyer="acme", outcome="success"}') == 11
    assert total('leadflow_deliveries_total{buyer="acme", outcome="failure"}') == 4
    assert total('leadflow_deliveries_total{buyer="dead", outcome="error"}') == 14
    assert total('leadflow_deliveries_total{buyer="flaky", outcome="success"}') == 6
    assert total('leadflow_deliveries_total{buyer="files", outcome="queued"}') == 6
    assert total('leadflow_deliveries_total{buyer="files", outcome="success"}') == 6
    assert total('leadflow_delivery_retries_total{buyer="flaky"}') == 6
    assert total('leadflow_pricing_fallbacks_total{layer="flow_service"}') == 6
    assert total('leadflow_return_credits_dollars_total{buyer="acme"}') == 40
    assert total('leadflow_returns_dollars_total{kind="chargeback"}') > 0
    assert total('leadflow_leads_total{outcome="failure"}') == 3  # two invalid phones, a cap
    assert total("leadflow_cap_rejections_total") == 1
    assert total('leadflow_batch_pending_leads{buyer="files"}') == 0


@pytest.mark.parametrize("board", ["delivery.json", "margin.json"])
def test_every_panel_query_returns_data(observed: dict[str, Any], board: str) -> None:
    prometheus: Prometheus = observed["prometheus"]
    start, at = observed["start"], observed["at"]
    range_seconds = math.ceil(at - start) + 5
    empty = []
    for panel in panels(board):
        for target in panel["targets"]:
            expr = grafana_query(target["expr"], range_seconds)
            if target["instant"]:
                result = prometheus.query(expr, at)
            else:
                result = prometheus.query_range(expr, start, at)
            if not finite_values(result):
                empty.append(f"{panel['title']} [{target['refId']}]: {target['expr']}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_margin_panel_agrees_with_the_ledger_report_per_flow(observed: dict[str, Any]) -> None:
    prometheus: Prometheus = observed["prometheus"]
    report: dict[str, dict[str, Decimal]] = observed["report"]
    at = observed["at"]
    range_seconds = math.ceil(at - observed["start"]) + 5
    (panel,) = [panel for panel in panels("margin.json") if panel["title"] == "Margin by flow"]
    columns = {
        name: panel["targets"][int(ref) if ref.isdigit() else ord(ref[-1]) - ord("A")]["expr"]
        for ref, name in panel["transformations"][1]["options"]["renameByName"].items()
    }
    assert set(report) == {"auto", "capped", "home"}
    assert report["auto"]["credits"] == Decimal(40)  # the returns are in
    for column, field in (
        ("Revenue", "revenue"),
        ("Cost", "cost"),
        ("Return credits", "credits"),
        ("Margin", "margin"),
    ):
        result = prometheus.query(grafana_query(columns[column], range_seconds), at)
        by_flow = {series["metric"]["flow"]: Decimal(series["value"][1]) for series in result}
        for flow, line in report.items():
            if field == "credits" and line[field] == 0 and flow not in by_flow:
                continue  # no returns in this flow: no series, and a zero in the report
            assert abs(by_flow[flow] - line[field]) <= Decimal("0.01"), (column, flow, by_flow)
    # The numbers compared are the ones this traffic makes: 170.00 of auto leads bought, less
    # the chargebacks of the two returned leads (the first round's CA lead at 15.00 and TX lead
    # at 10.00).
    assert (report["auto"]["revenue"], report["auto"]["credits"]) == (Decimal(200), Decimal(40))
    assert report["auto"]["cost"] == Decimal(145)
    assert report["home"]["revenue"] == Decimal("118.50")


# Which services export each SPEC 11 metric (the histograms by their buckets); no traffic calls
# the gateway's own gRPC API, so it has client metrics only.
SPEC_METRICS = {
    "grpc_server_handled_total": {"pricing", "routing", "delivery", "ledger"},
    "grpc_server_handling_seconds_bucket": {"pricing", "routing", "delivery", "ledger"},
    "grpc_client_handled_total": {"gateway", "delivery"},
    "grpc_client_handling_seconds_bucket": {"gateway", "delivery"},
    "leadflow_leads_total": {"gateway"},
    "leadflow_lead_duration_seconds_bucket": {"gateway"},
    "leadflow_purchase_cost_dollars_total": {"ledger"},
    "leadflow_sale_revenue_dollars_total": {"ledger"},
    "leadflow_return_credits_dollars_total": {"ledger"},
    "leadflow_deliveries_total": {"delivery"},
    "leadflow_delivery_duration_seconds_bucket": {"delivery"},
    "leadflow_delivery_retries_total": {"delivery"},
    "leadflow_pricing_fallbacks_total": {"pricing"},
    "leadflow_cap_rejections_total": {"routing"},
    "leadflow_batch_pending_leads": {"delivery"},
}


def test_every_spec_metric_is_exported_by_the_service_that_owns_it(
    observed: dict[str, Any],
) -> None:
    prometheus: Prometheus = observed["prometheus"]
    for name, owners in SPEC_METRICS.items():
        result = prometheus.query(f'count by (service) ({{__name__="{name}"}})', observed["at"])
        exporters = {series["metric"]["service"] for series in result}
        assert owners <= exporters, (name, exporters)


def test_rules_evaluate_on_the_suites_metrics(observed: dict[str, Any]) -> None:
    prometheus: Prometheus = observed["prometheus"]
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) > 20
    broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not broken
    # dead never answers: every delivery to it is an error.
    (series,) = prometheus.query(
        'buyer:leadflow_delivery_error_ratio:rate5m{buyer="dead"}', observed["at"]
    )
    assert float(series["value"][1]) == 1.0
