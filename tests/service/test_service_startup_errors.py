"""`python -m <service>` refuses a bad configuration or environment with one clear line on
stderr and exit code 2, never a traceback (issue 16): what an operator reads in
`kubectl logs` or under `leadflow up`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SERVICES = ["gateway", "pricing_service", "routing_service", "delivery_service", "ledger_service"]

GOOD = """
account: {name: Test}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers: [{id: acme, name: Acme, delivery: {type: http, url: "http://127.0.0.1:9/"}}]
flows:
  - id: auto
    name: Auto
    sources: [{source: vendor}]
    stages: [{name: main, steps: [{buyer: acme}]}]
"""


def run(service: str, tmp_path: Path, config: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "leadflow.yaml"
    path.write_text(config)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")},
        "LEADFLOW_CONFIG": str(path),
        "LEADFLOW_DATA_DIR": str(tmp_path),
        "LEADFLOW_GRPC_PORT": "0",
        "LEADFLOW_METRICS_PORT": "0",
        "LEADFLOW_HTTP_PORT": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", service],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("service", SERVICES)
def test_a_bad_configuration_is_one_line_and_exit_2(service: str, tmp_path: Path) -> None:
    result = run(service, tmp_path, GOOD.replace("{buyer: acme}", "{buyer: acme2}"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{service}: invalid configuration {tmp_path}/leadflow.yaml")
    assert "unknown buyer 'acme2' (did you mean 'acme'?)" in lines[0]


@pytest.mark.parametrize("service", SERVICES)
def test_a_bad_grpc_port_is_one_line_and_exit_2(service: str, tmp_path: Path) -> None:
    result = run(service, tmp_path, GOOD, LEADFLOW_GRPC_PORT="fifty")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{service}: LEADFLOW_GRPC_PORT must be an integer from 0 to 65535, not 'fifty'"
    ]


def test_a_bad_log_level_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run("pricing_service", tmp_path, GOOD, LEADFLOW_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "pricing_service: LEADFLOW_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
        "not 'LOUD'"
    ]


def test_a_missing_configuration_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run("gateway", tmp_path, GOOD, LEADFLOW_CONFIG=str(tmp_path / "nowhere.yaml"))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "cannot read" in line


@pytest.mark.parametrize("url", ["garbage", "mysql://user:secret@db/leads"])
def test_an_unusable_database_url_is_one_line_without_the_url(tmp_path: Path, url: str) -> None:
    result = run("ledger_service", tmp_path, GOOD, LEADFLOW_DATABASE_URL=url)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ledger_service: LEADFLOW_DATABASE_URL must be a sqlite+aiosqlite:// or "
        "postgresql+asyncpg:// URL"
    ]


def test_an_http_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "gateway", tmp_path, GOOD, LEADFLOW_HOST="127.0.0.1", LEADFLOW_HTTP_PORT=str(port)
        )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("gateway: ") and "address already in use" in line


def test_leadflow_up_stops_with_exit_2_when_its_services_refuse_to_start(tmp_path: Path) -> None:
    path = tmp_path / "leadflow.yaml"
    path.write_text(GOOD)
    with socket.socket() as probe:  # a base whose ports nothing here uses: nothing binds anyway
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1] % 40000 + 20000
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leadflow",
            "up",
            "--config",
            str(path),
            "--data-dir",
            str(tmp_path),
            "--port-base",
            str(base),
            "--http-port",
            str(base + 30),
        ],
        env={**os.environ, "LEADFLOW_DATABASE_URL": "mysql://nowhere/db"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "LEADFLOW_DATABASE_URL must be a sqlite+aiosqlite://" in result.stderr
    assert "refused to start (exit 2); stopping the suite" in result.stderr
    assert "restarting" not in result.stderr


def test_leadflow_up_refuses_a_bad_log_level_itself_before_any_service_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "leadflow.yaml"
    path.write_text(GOOD)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leadflow",
            "up",
            "--config",
            str(path),
            "--data-dir",
            str(tmp_path),
        ],
        env={**os.environ, "LEADFLOW_LOG_LEVEL": "LOUD"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "leadflow: LEADFLOW_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not 'LOUD'"
    ]
