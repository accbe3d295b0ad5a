"""`make bench`: the suite against the one-process baseline, on SQLite and on PostgreSQL, on a
production-shaped flow and on the demo flow.

    .venv/bin/python -m bench.run [--databases sqlite,postgresql] [--flows production,demo]
                                  [--seconds 12] [--max-only]

Flows: `production` (bench/production.yaml: a daily cap on every buyer, a step with its own cap,
a duplicate check on email, pricing rules, acceptance, an exclusive two-buyer stage: what real
configurations have) and `demo` (examples/demo.yaml: no caps, no duplicate check), for comparison.

For each database: a local buyer (examples/demo_buyer.py, answering at once from memory), then
the suite (`leadflow up`, its buyers pointed at that buyer) once per flow and then the baseline
(bench/baseline.py), each driven through HTTP by bench/load.py from this process: a warm-up,
max throughput (32 clients, closed loop), then an open loop at half that maximum, whose p50/p99
are the latencies reported; they are end to end and include the buyer's own time (the bench
buyer answers from memory; "buyer alone" sends the same leads straight to it at the same rate,
so the suite's own overhead is at most p99_ms). PostgreSQL: a database `bench_leadflow` on
127.0.0.1:5432 (user postgres) created for each suite run and dropped after it.

During the max-throughput phase the bench also reads, per answered lead: the CPU time of each
process (`/proc/<pid>/stat`: the suite's five services, on PostgreSQL the server backends
connected to the bench database, and the buyer) and the gRPC calls the
services handled (`grpc_server_handled_total` on each service's metrics port, health checks
left out). `--max-only` skips the half-rate phase and the baseline (quick CPU comparisons).

Ends with one line per flow; where the two databases differ it reports the worst case:
throughputs and ratio of the database with the lower ratio, p50/p99 the higher of the two
databases' values, CPU and calls per lead of the database with the lower ratio.
`bench: flow=… suite_leads_per_s=… baseline_leads_per_s=… ratio=… p50_ms=… p99_ms=…
cpu_ms_per_lead=… grpc_calls_per_lead=…`
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.load import LoadResult, drive
from tests.e2e.harness import Suite, start_suite

ROOT = Path(__file__).resolve().parent.parent
FLOWS = {
    "production": ROOT / "bench" / "production.yaml",
    "demo": ROOT / "examples" / "demo.yaml",
}
SOURCE_KEY = "demo-source-key"
SUBMIT_PATH = "/flows/auto-insurance/sources/quality-leads/submit"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "bench_leadflow"
PG_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DB}"
CONCURRENCY = 32
# `leadflow up`'s children in port order: gRPC B+1.., metrics B+11.. (SPEC section 10).
SERVICES = ("pricing_service", "routing_service", "delivery_service", "ledger_service", "gateway")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """Per answered lead over one phase: CPU ms by process and gRPC calls by method."""

    cpu_ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)

    @property
    def suite_cpu_ms(self) -> float:
        return sum(self.cpu_ms.get(name.removesuffix("_service"), 0.0) for name in SERVICES)

    @property
    def total_calls(self) -> float:
        return sum(self.calls.values())

    def summary(self) -> str:
        cpu = " ".join(f"{name}={ms:.2f}" for name, ms in self.cpu_ms.items())
        calls = " ".join(f"{name}={n:.2f}" for name, n in sorted(self.calls.items()))
        return (
            f"cpu_ms_per_lead: suite={self.suite_cpu_ms:.2f} {cpu}\n"
            f"    grpc_calls_per_lead={self.total_calls:.2f}: {calls}"
        )


@dataclass
class Measured:
    """One system on one database: its max throughput and its latency at half that rate."""

    maximum: LoadResult
    half: LoadResult | None = None
    usage: Usage | None = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (0 when it has gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may hold spaces): utime and stime are the 12th and
    # 13th of them (fields 14 and 15 of proc(5)).
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def grpc_calls(port_base: int) -> Counter[str]:
    """grpc_server_handled_total of every service by `Service.Method`, health checks left out."""
    calls: Counter[str] = Counter()
    for i in range(len(SERVICES)):
        url = f"http://127.0.0.1:{port_base + 11 + i}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "grpc_server_handled":
                continue
            for sample in family.samples:
                service = sample.labels.get("grpc_service", "")
                if sample.name.endswith("_total") and "Health" not in service:
                    name = f"{service.rsplit('.', 1)[-1]}.{sample.labels.get('grpc_method')}"
                    calls[name] += int(sample.value)
    return calls


# Where a lead's time goes at half the maximum rate: each hop's histogram, on the process that
# measures it (SERVICES' index), and the hop it is nested in. Means add up (a hop's own time is
# its mean minus its inner hop's); p99s are read off the buckets, so they are only as fine as
# the buckets are.
HOPS = {
    # hop: (service index, metric, method label or "", inner hop)
    "lead": (4, "leadflow_lead_duration_seconds", "", ""),
    "pricing": (4, "grpc_client_handling_seconds", "QuotePurchasePrice", ""),
    "distribute": (1, "grpc_server_handling_seconds", "DistributeLead", "deliver"),
    "deliver": (2, "grpc_server_handling_seconds", "DeliverLead", "buyer"),
    "buyer": (2, "leadflow_delivery_duration_seconds", "", ""),
}


@dataclass
class Histogram:
    total: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def minus(self, other: Histogram) -> Histogram:
        return Histogram(
            self.total - other.total,
            self.count - other.count,
            {le: n - other.buckets.get(le, 0.0) for le, n in self.buckets.items()},
        )

    @property
    def mean_ms(self) -> float:
        return 1000 * self.total / self.count if self.count else float("nan")

    def quantile_ms(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
        if not self.count:
            return float("nan")
        rank, lower, below = q * self.count, 0.0, 0.0
        for le, cumulative in sorted(self.buckets.items()):
            if cumulative >= rank:
                if le == float("inf"):
                    return 1000 * lower
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                return 1000 * (lower + (le - lower) * share)
            lower, below = le, cumulative
        return 1000 * lower


def hop_histograms(port_base: int) -> dict[str, Histogram]:
    """The HOPS' histograms now, summed over their labels."""
    texts: dict[int, str] = {}
    hops: dict[str, Histogram] = {}
    for hop, (index, metric, method, _inner) in HOPS.items():
        if index not in texts:
            url = f"http://127.0.0.1:{port_base + 11 + index}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                texts[index] = response.read().decode()
        histogram = hops[hop] = Histogram()
        for family in text_string_to_metric_families(texts[index]):
            if family.name != metric:
                continue
            for sample in family.samples:
                if method and sample.labels.get("grpc_method") != method:
                    continue
                if sample.name.endswith("_sum"):
                    histogram.total += sample.value
                elif sample.name.endswith("_count"):
                    histogram.count += sample.value
                elif sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    histogram.buckets[le] = histogram.buckets.get(le, 0.0) + sample.value
    return hops


def hops_summary(before: dict[str, Histogram], after: dict[str, Histogram]) -> str:
    """Mean and p99 of each hop over a phase, and each hop's own mean (less its inner hop's)."""
    spent = {hop: after[hop].minus(before[hop]) for hop in HOPS}
    parts = []
    for hop, (_index, _metric, _method, inner) in HOPS.items():
        text = f"{hop} mean={spent[hop].mean_ms:.1f} p99~{spent[hop].quantile_ms(0.99):.0f}"
        if inner:
            text += f" own={spent[hop].mean_ms - spent[inner].mean_ms:.1f}"
        parts.append(text)
    gateway_own = spent["lead"].mean_ms - spent["pricing"].mean_ms - spent["distribute"].mean_ms
    parts.append(f"gateway own={gateway_own:.1f}")
    return "latency_ms_by_hop: " + "; ".join(parts)


def postgres_backends() -> list[int]:
    """The server processes connected to the bench database (its share of PostgreSQL's CPU)."""
    listing = subprocess.run(
        ["psql", PG_ADMIN, "-tAc", f"SELECT pid FROM pg_stat_activity WHERE datname = '{PG_DB}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(line) for line in listing.split()]


class Meter:
    """Reads the processes' CPU and the services' call counters before and after a phase."""

    def __init__(self, suite: Suite, buyer_pid: int, postgres: bool) -> None:
        self._suite = suite
        self._pids = {name.removesuffix("_service"): suite.child_pid(name) for name in SERVICES}
        self._pids["buyer"] = buyer_pid
        self._postgres = postgres

    def _read(self) -> tuple[dict[str, float], dict[int, float], Counter[str]]:
        cpu = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        backends = {pid: cpu_seconds(pid) for pid in postgres_backends()} if self._postgres else {}
        return cpu, backends, grpc_calls(self._suite.port_base)

    def start(self) -> None:
        self._before = self._read()

    def stop(self, leads: int) -> Usage:
        cpu0, backends0, calls0 = self._before
        cpu1, backends1, calls1 = self._read()
        per = 1000.0 / max(leads, 1)
        usage = Usage()
        for name in cpu1:
            usage.cpu_ms[name] = (cpu1[name] - cpu0[name]) * per
        if self._postgres:
            # A backend that started during the phase counts from 0; one that ended is lost
            # (the pools keep their connections, so there are few of either).
            spent = sum(t - backends0.get(pid, 0.0) for pid, t in backends1.items())
            usage.cpu_ms["postgres"] = spent * per
        usage.calls = {name: (calls1[name] - calls0[name]) / max(leads, 1) for name in calls1}
        usage.calls = {name: n for name, n in usage.calls.items() if n}
        return usage


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


def measure(
    url: str,
    seconds: float,
    label: str,
    meter: Meter | None = None,
    max_only: bool = False,
    port_base: int | None = None,
) -> Measured:
    """Warm-up, max throughput, then an open loop at half the max for `seconds` each."""
    drive(url, SOURCE_KEY, count=300, seconds=seconds, concurrency=8, seed=9)
    if meter is not None:
        meter.start()
    maximum = drive(url, SOURCE_KEY, count=100_000, seconds=seconds, concurrency=CONCURRENCY)
    usage = meter.stop(maximum.ok) if meter is not None else None
    print(f"  {label} {maximum.summary()}", flush=True)
    if usage is not None:
        print(f"    {usage.summary()}", flush=True)
    if max_only:
        return Measured(maximum, None, usage)
    rate = max(maximum.per_s / 2, 1.0)
    hops_before = hop_histograms(port_base) if port_base is not None else None
    half = drive(url, SOURCE_KEY, count=int(rate * seconds) + 1, seconds=seconds, rate=rate)
    print(f"  {label} {half.summary()}", flush=True)
    if port_base is not None and hops_before is not None:
        print(f"    {hops_summary(hops_before, hop_histograms(port_base))}", flush=True)
    return Measured(maximum, half, usage)


def psql(statement: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN, "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"},
    )


def bench_suite(
    flow: str,
    buyer: subprocess.Popen[bytes],
    buyer_url: str,
    database_url: str | None,
    seconds: float,
    max_only: bool,
) -> Measured:
    env_before = dict(os.environ)
    os.environ["DEMO_BUYER_URL"] = buyer_url
    os.environ.pop("LEADFLOW_DATABASE_URL", None)
    if database_url:
        os.environ["LEADFLOW_DATABASE_URL"] = database_url
        psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        psql(f"CREATE DATABASE {PG_DB}")
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            suite = start_suite(FLOWS[flow], Path(data_dir))
            try:
                meter = Meter(suite, buyer.pid, database_url is not None)
                return measure(
                    suite.base_url + SUBMIT_PATH,
                    seconds,
                    f"suite ({flow})",
                    meter,
                    max_only,
                    suite.port_base,
                )
            finally:
                suite.stop()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        if database_url:
            psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


def bench_baseline(buyer_url: str, database_url: str | None, seconds: float) -> Measured:
    port = free_port()
    command = [sys.executable, "-m", "bench.baseline", "--port", str(port)]
    command += ["--buyer-url", buyer_url]
    if database_url:
        command += ["--database-url", database_url]
        psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        psql(f"CREATE DATABASE {PG_DB}")
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_for_port(port, process)
        return measure(f"http://127.0.0.1:{port}/submit", seconds, "baseline")
    finally:
        stop(process)
        if database_url:
            psql(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


@dataclass
class Result:
    suites: dict[str, Measured]  # by flow
    baseline: Measured | None


def bench_database(name: str, flows: list[str], seconds: float, max_only: bool) -> Result:
    buyer_port = free_port()
    buyer = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo_buyer.py"), "--port", str(buyer_port)]
    )
    database_url = PG_URL if name == "postgresql" else None
    try:
        wait_for_port(buyer_port, buyer)
        buyer_url = f"http://127.0.0.1:{buyer_port}/leads"
        print(f"{name}:", flush=True)
        suites = {
            flow: bench_suite(flow, buyer, buyer_url, database_url, seconds, max_only)
            for flow in flows
        }
        if max_only:
            return Result(suites, None)
        # The buyer's own time, for reference: the same leads straight to it at the same rate.
        rate = max(suites[flows[0]].maximum.per_s / 2, 1.0)
        alone = drive(buyer_url, SOURCE_KEY, count=int(rate * 5) + 1, seconds=5, rate=rate)
        print(f"  buyer alone {alone.summary()}", flush=True)
        return Result(suites, bench_baseline(buyer_url, database_url, seconds))
    finally:
        stop(buyer)


def _ratio(suite: Measured, baseline: Measured | None) -> float:
    if baseline is None or not baseline.maximum.per_s:
        return 0.0
    return suite.maximum.per_s / baseline.maximum.per_s


def line(suite: Measured, baseline: Measured | None, p50: float, p99: float) -> str:
    text = f"suite_leads_per_s={suite.maximum.per_s:.1f}"
    if baseline is not None:
        text += (
            f" baseline_leads_per_s={baseline.maximum.per_s:.1f}"
            f" ratio={_ratio(suite, baseline):.2f} p50_ms={p50:.1f} p99_ms={p99:.1f}"
        )
    if suite.usage is not None:
        text += (
            f" cpu_ms_per_lead={suite.usage.suite_cpu_ms:.2f}"
            f" grpc_calls_per_lead={suite.usage.total_calls:.2f}"
        )
    return text


def quantile(measured: Measured, q: float) -> float:
    return measured.half.quantile_ms(q) if measured.half is not None else float("nan")


def python_loop_ms(runs: int = 5) -> float:
    """This machine's speed now: a fixed pure-Python loop, median of `runs` (milliseconds).
    Shared machines change speed between sessions and within one; CPU per lead is comparable
    across runs only beside this."""
    times = []
    for _ in range(runs):
        started = time.process_time()
        total = 0
        for i in range(2_000_000):
            total += i
        times.append((time.process_time() - started) * 1000)
    return sorted(times)[runs // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--flows", default="production,demo", help=f"of {', '.join(FLOWS)}")
    parser.add_argument("--seconds", type=float, default=12.0, help="per measured phase")
    parser.add_argument("--max-only", action="store_true", help="no half-rate phase, no baseline")
    args = parser.parse_args()
    flows = args.flows.split(",")
    unknown = set(flows) - set(FLOWS)
    if unknown:
        parser.error(f"unknown flows {sorted(unknown)}: choose from {', '.join(FLOWS)}")
    print(f"machine: python_loop_ms={python_loop_ms():.0f}", flush=True)
    results = {
        name: bench_database(name, flows, args.seconds, args.max_only)
        for name in args.databases.split(",")
    }
    for flow in flows:
        for name, result in results.items():
            suite = result.suites[flow]
            p50, p99 = quantile(suite, 0.5), quantile(suite, 0.99)
            print(f"{name} flow={flow}: " + line(suite, result.baseline, p50, p99))
    for flow in flows:
        worst = min(
            results.values(),
            key=lambda r: _ratio(r.suites[flow], r.baseline) or r.suites[flow].maximum.per_s,
        )
        p50 = max(quantile(r.suites[flow], 0.5) for r in results.values())
        p99 = max(quantile(r.suites[flow], 0.99) for r in results.values())
        print(f"bench: flow={flow} " + line(worst.suites[flow], worst.baseline, p50, p99))


if __name__ == "__main__":
    main()
