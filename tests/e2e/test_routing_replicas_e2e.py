"""Caps and duplicates with two routing replicas on ONE PostgreSQL, as real processes.

The suite runs as `leadflow up` against a fresh PostgreSQL database (created here, dropped at
the end). Beside it run a second `python -m routing_service` and a second `python -m gateway`
wired to that second routing replica, with the same pricing, delivery and ledger. Half of each
burst of concurrent submissions goes through each gateway, so the two routing processes decide
against each other in the database: nothing but PostgreSQL is shared between them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from tests.conftest import TEST_DATABASE_URL
from tests.e2e.harness import BuyerServer, Suite, start_suite

pytestmark = [pytest.mark.timeout(180), pytest.mark.postgres]

SOURCE_KEY = "replica-source-key"
ADMIN_KEY = "replica-admin-key"
CONFIG = """
account: {{name: Replicas, admin_api_key: {admin}, allow_private_network_delivery: true}}
sources: [{{id: vendor, name: Vendor, api_key: {key}}}]
buyers:
  - id: capped
    name: Capped
    caps: [{{max_leads: 10, per: day}}]
    delivery:
      type: http
      url: {url}/capped
      response: {{outcome_search_term: accepted, outcome_search_path: status}}
  - id: open
    name: Open
    delivery:
      type: http
      url: {url}/open
      response: {{outcome_search_term: accepted, outcome_search_path: status}}
flows:
  - id: buyercap
    name: Buyer cap
    sources: [{{source: vendor}}]
    stages: [{{name: main, steps: [{{buyer: capped}}]}}]
  - id: flowcap
    name: Flow cap
    caps: [{{max_leads: 10, per: day}}]
    sources: [{{source: vendor}}]
    stages: [{{name: main, steps: [{{buyer: open}}]}}]
  - id: dupes
    name: Dupes
    duplicates: {{fields: [email], within_days: 1}}
    sources: [{{source: vendor}}]
    stages: [{{name: main, steps: [{{buyer: open}}]}}]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _admin_dsn() -> str:
    return TEST_DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://")


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Replicas:
    suite: Suite
    second_gateway: str  # base URL of the gateway that uses the second routing replica
    routing_metrics: list[str]  # both routing replicas' /metrics
    paths: list[str]
    lock: threading.Lock

    def submit(self, index: int, flow: str, lead: dict[str, Any]) -> dict[str, Any]:
        base = self.suite.base_url if index % 2 == 0 else self.second_gateway
        request = urllib.request.Request(
            f"{base}/flows/{flow}/sources/vendor/submit",
            data=orjson.dumps(lead),
            headers={"Content-Type": "application/json", "X-Api-Key": SOURCE_KEY},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201
            result: dict[str, Any] = orjson.loads(response.read())
            return result


def _spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became healthy:\n{log.read_text()}")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    database = f"leadflow_e2e_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_create_database(database))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {TEST_DATABASE_URL} is needed: {exc}", pytrace=False)
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + "/" + database
    paths: list[str] = []
    lock = threading.Lock()

    def respond(path: str, _data: dict[str, Any]) -> dict[str, Any]:
        with lock:
            paths.append(path)
        return {"status": "accepted"}

    buyer = BuyerServer(respond)
    buyer.start()
    config = root / "leadflow.yaml"
    config.write_text(
        CONFIG.format(admin=ADMIN_KEY, key=SOURCE_KEY, url=f"http://127.0.0.1:{buyer.port}")
    )
    extra: list[subprocess.Popen[bytes]] = []
    suite = None
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LEADFLOW_DATABASE_URL", url)
            suite = start_suite(config, root / "data")
        base = suite.port_base
        common = {
            **os.environ,
            "LEADFLOW_CONFIG": str(config),
            "LEADFLOW_DATA_DIR": str(root / "data"),
            "LEADFLOW_DATABASE_URL": url,
            "LEADFLOW_HOST": "127.0.0.1",
            "LEADFLOW_METRICS_PORT": "0",
            "LEADFLOW_LOG_LEVEL": "WARNING",
            "LEADFLOW_PRICING_ADDR": f"127.0.0.1:{base + 1}",
            "LEADFLOW_DELIVERY_ADDR": f"127.0.0.1:{base + 3}",
            "LEADFLOW_LEDGER_ADDR": f"127.0.0.1:{base + 4}",
        }
        routing_port = free_port()
        routing_metrics = free_port()
        routing_log = root / "routing2.log"
        extra.append(
            _spawn(
                "routing_service",
                {
                    **common,
                    "LEADFLOW_GRPC_PORT": str(routing_port),
                    "LEADFLOW_METRICS_PORT": str(routing_metrics),
                },
                routing_log,
            )
        )
        http_port = free_port()
        gateway_log = root / "gateway2.log"
        extra.append(
            _spawn(
                "gateway",
                {
                    **common,
                    "LEADFLOW_GRPC_PORT": str(free_port()),
                    "LEADFLOW_HTTP_PORT": str(http_port),
                    "LEADFLOW_HTTP_HOST": "127.0.0.1",
                    "LEADFLOW_ROUTING_ADDR": f"127.0.0.1:{routing_port}",
                },
                gateway_log,
            )
        )
        second = f"http://127.0.0.1:{http_port}"
        # Healthy means every service the second gateway calls answers SERVING, the second
        # routing replica included.
        _wait_healthy(f"{second}/healthz", extra[1], gateway_log)
        assert extra[0].poll() is None, routing_log.read_text()
        metrics = [f"http://127.0.0.1:{p}/metrics" for p in (base + 12, routing_metrics)]
        yield Replicas(suite, second, metrics, paths, lock)
    finally:
        for process in reversed(extra):
            _stop(process)
        if suite is not None:
            suite.stop()
        buyer.stop()
        asyncio.run(_drop_database(database))


def burst(replicas: Replicas, flow: str, leads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All at once: every submission waits at a barrier, then half go to each gateway."""
    barrier = threading.Barrier(len(leads))

    def one(index: int) -> dict[str, Any]:
        barrier.wait()
        return replicas.submit(index, flow, leads[index])

    with ThreadPoolExecutor(len(leads)) as pool:
        return list(pool.map(one, range(len(leads))))


def test_fifty_concurrent_leads_sell_exactly_ten_to_a_buyer_capped_at_ten(
    replicas: Replicas,
) -> None:
    with replicas.lock:
        before = replicas.paths.count("/capped")
    leads = [{"email": f"buyer{i}@example.com", "state": "TX"} for i in range(50)]
    results = burst(replicas, "buyercap", leads)
    assert Counter(r["outcome"] for r in results) == {"success": 50}  # accepted, sold or not
    with replicas.lock:
        assert replicas.paths.count("/capped") - before == 10


def test_fifty_concurrent_leads_pass_a_flow_cap_of_ten_exactly_ten_times(
    replicas: Replicas,
) -> None:
    leads = [{"email": f"flow{i}@example.com", "state": "TX"} for i in range(50)]
    results = burst(replicas, "flowcap", leads)
    assert Counter(r["outcome"] for r in results) == {"success": 10, "failure": 40}
    assert {r.get("reason") for r in results if r["outcome"] == "failure"} == {"Cap reached"}


def test_twenty_identical_leads_on_two_replicas_are_accepted_once(replicas: Replicas) -> None:
    results = burst(replicas, "dupes", [{"email": "same@example.com", "state": "TX"}] * 20)
    assert Counter(r["outcome"] for r in results) == {"success": 1, "failure": 19}
    assert {r.get("reason") for r in results if r["outcome"] == "failure"} == {"Duplicate lead"}


def test_both_routing_replicas_made_decisions(replicas: Replicas) -> None:
    burst(replicas, "dupes", [{"email": f"m{i}@example.com"} for i in range(10)])
    for url in replicas.routing_metrics:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        admitted = [
            line
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total")
            and 'grpc_method="DistributeLead"' in line
            and 'grpc_code="OK"' in line
        ]
        assert admitted and float(admitted[0].rsplit(" ", 1)[1]) >= 5, url
