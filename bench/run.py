"""`make bench`: the suite against the one-process baseline, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.run [--databases sqlite,postgresql] [--seconds 12]

For each database: a local buyer (examples/demo_buyer.py, answering at once from memory), then
the suite (`leadflow up` on examples/demo.yaml, its buyers pointed at that buyer) and then the
baseline (bench/baseline.py), each driven through HTTP by bench/load.py from this process:
a warm-up, max throughput (32 clients, closed loop), then an open loop at half that maximum,
whose p50/p99 are the latencies reported; they are end to end and include the buyer's own time
(the bench buyer answers from memory; "buyer alone" sends the same leads straight to it at the
same rate, so the suite's own overhead is at most p99_ms). PostgreSQL: a database
`bench_leadflow` on 127.0.0.1:5432 (user postgres) created for the run and dropped after it.

Ends with one line; where the two databases differ it reports the worst case: throughputs and
ratio of the database with the lower ratio, p50/p99 the higher of the two databases' values.
`bench: suite_leads_per_s=… baseline_leads_per_s=… ratio=… p50_ms=… p99_ms=…`
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, drive
from tests.e2e.harness import start_suite

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "demo.yaml"
SOURCE_KEY = "demo-source-key"
SUBMIT_PATH = "/flows/auto-insurance/sources/quality-leads/submit"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "bench_leadflow"
PG_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DB}"
CONCURRENCY = 32


@dataclass
class Measured:
    """One system on one database: its max throughput and its latency at half that rate."""

    maximum: LoadResult
    half: LoadResult


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(url: str, seconds: float, label: str) -> Measured:
    """Warm-up, max throughput, then an open loop at half the max for `seconds` each."""
    drive(url, SOURCE_KEY, count=300, seconds=seconds, concurrency=8, seed=9)
    maximum = drive(url, SOURCE_KEY, count=100_000, seconds=seconds, concurrency=CONCURRENCY)
    print(f"  {label} {maximum.summary()}", flush=True)
    rate = max(maximum.per_s / 2, 1.0)
    half = drive(url, SOURCE_KEY, count=int(rate * seconds) + 1, seconds=seconds, rate=rate)
    print(f"  {label} {half.summary()}", flush=True)
    return Measured(maximum, half)


def bench_suite(buyer_url: str, database_url: str | None, seconds: float) -> Measured:
    env_before = dict(os.environ)
    os.environ["DEMO_BUYER_URL"] = buyer_url
    os.environ.pop("LEADFLOW_DATABASE_URL", None)
    if database_url:
        os.environ["LEADFLOW_DATABASE_URL"] = database_url
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            suite = start_suite(CONFIG, Path(data_dir))
            try:
                return measure(suite.base_url + SUBMIT_PATH, seconds, "suite")
            finally:
                suite.stop()
    finally:
        os.environ.clear()
        os.environ.update(env_before)


def bench_baseline(buyer_url: str, database_url: str | None, seconds: float) -> Measured:
    port = free_port()
    command = [sys.executable, "-m", "bench.baseline", "--port", str(port)]
    command += ["--buyer-url", buyer_url]
    if database_url:
        command += ["--database-url", database_url]
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_for_port(port, process)
        return measure(f"http://127.0.0.1:{port}/submit", seconds, "baseline")
    finally:
        stop(process)


def psql(statement: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN, "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
    )


def bench_database(name: str, seconds: float) -> tuple[Measured, Measured]:
    buyer_port = free_port()
    buyer = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo_buyer.py"), "--port", str(buyer_port)]
    )
    database_url = PG_URL if name == "postgresql" else None
    try:
        wait_for_port(buyer_port, buyer)
        buyer_url = f"http://127.0.0.1:{buyer_port}/leads"
        if database_url:
            psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            psql(f"CREATE DATABASE {PG_DB}")
        try:
            print(f"{name}:", flush=True)
            suite = bench_suite(buyer_url, database_url, seconds)
            # The buyer's own time, for reference: the same leads straight to it at the same rate.
            rate = max(suite.maximum.per_s / 2, 1.0)
            alone = drive(buyer_url, SOURCE_KEY, count=int(rate * 5) + 1, seconds=5, rate=rate)
            print(f"  buyer alone {alone.summary()}", flush=True)
            baseline = bench_baseline(buyer_url, database_url, seconds)
        finally:
            if database_url:
                psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        return suite, baseline
    finally:
        stop(buyer)


def line(suite: Measured, baseline: Measured, p50: float, p99: float) -> str:
    ratio = suite.maximum.per_s / baseline.maximum.per_s if baseline.maximum.per_s else 0.0
    return (
        f"suite_leads_per_s={suite.maximum.per_s:.1f} "
        f"baseline_leads_per_s={baseline.maximum.per_s:.1f} ratio={ratio:.2f} "
        f"p50_ms={p50:.1f} p99_ms={p99:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=12.0, help="per measured phase")
    args = parser.parse_args()
    results = {name: bench_database(name, args.seconds) for name in args.databases.split(",")}
    for name, (suite, baseline) in results.items():
        p50, p99 = suite.half.quantile_ms(0.5), suite.half.quantile_ms(0.99)
        print(f"{name}: " + line(suite, baseline, p50, p99))
    worst_name = min(
        results,
        key=lambda n: results[n][0].maximum.per_s / max(results[n][1].maximum.per_s, 1e-9),
    )
    p50 = max(suite.half.quantile_ms(0.5) for suite, _ in results.values())
    p99 = max(suite.half.quantile_ms(0.99) for suite, _ in results.values())
    print("bench: " + line(*results[worst_name], p50, p99))


if __name__ == "__main__":
    main()
