"""Sustained HTTP delivery throughput, and the latency delivery_service adds, against a local buyer.

    .venv/bin/python -m bench.delivery_bench [--leads 4000] [--concurrency 1 16 64]

Starts a buyer (an aiohttp server answering `{"status":"accepted"}`) and `python -m
delivery_service` as processes of their own on 127.0.0.1, then for each concurrency:

- baseline: the same JSON body POSTed straight to the buyer (aiohttp, pooled connections);
- delivery: DeliverLead over gRPC; the service renders the mapping, checks the address, POSTs,
  parses the answer with the buyer's response rules and records the attempt.

Prints leads/s and p50/p95/p99 latency of both, the delivery process's CPU ms per lead, and the
overhead (delivery minus baseline).
Traffic goes only to 127.0.0.1 and stops after `--leads` per run or `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import grpc
import orjson
import yaml
from aiohttp import web

from leadflow.delivery.v1 import delivery_service_pb2 as pb
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from leadflow.fields import parse_lead
from leadflow.wire import LeadData, to_proto

LEAD = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "phone_1": "(512) 555-0142",
    "state": "Texas",
    "postal_code": "78701",
}
MAPPING = {
    "first": "{{lead.first_name}}",
    "last": "{{lead.last_name}}",
    "email": "{{lead.email}}",
    "phone": "{{lead.phone_1}}",
    "state": "{{lead.state}}",
    "zip": "{{lead.postal_code}}",
    "price": "{{sale_price}}",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the buyer (its own process) -------------------------------------------------------------


def serve_buyer(port: int) -> None:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=b'{"status":"accepted","id":"B-1"}', content_type="application/json"
        )

    app = web.Application()
    app.router.add_post("/leads", accept)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    concurrency: int
    leads: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float | None = None  # the delivery process's CPU time during the run

    def line(self) -> str:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000

        cpu = (
            f"  cpu={self.cpu_seconds * 1000 / self.leads:5.2f} ms/lead"
            if self.cpu_seconds is not None
            else ""
        )
        return (
            f"{self.name:<9} c={self.concurrency:<3} leads={self.leads:<6} "
            f"rate={self.leads / self.seconds:8.0f}/s  p50={pct(0.50):6.2f} ms  "
            f"p95={pct(0.95):6.2f} ms  p99={pct(0.99):6.2f} ms{cpu}"
        )

    def p50(self) -> float:
        return sorted(self.latencies)[len(self.latencies) // 2] * 1000


async def drive(
    name: str,
    call: Callable[[int], Awaitable[None]],
    leads: int,
    concurrency: int,
    max_seconds: float,
) -> Result:
    """`leads` calls, `concurrency` at a time, stopping early after `max_seconds`."""
    latencies: list[float] = []
    next_index = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < leads and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, concurrency, len(latencies), time.perf_counter() - started, latencies)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lead_request(index: int) -> pb.DeliverLeadRequest:
    lead = LeadData(
        id=f"bench{index:08d}",
        flow_id="bench",
        source_id="vendor",
        fields=parse_lead(LEAD),
        submit_time=datetime.now(UTC),
    )
    return pb.DeliverLeadRequest(
        request_id=f"bench{index:08d}-1",
        lead=lead.to_proto(),
        buyer_id="buyer",
        sale_price=to_proto(Decimal("20.00")),
        purchase_price=to_proto(Decimal("10.00")),
    )


def config_text(buyer_url: str) -> str:
    tree = {
        "account": {"name": "Bench", "allow_private_network_delivery": True},
        "sources": [{"id": "vendor", "name": "Vendor", "api_key": "k"}],
        "buyers": [
            {
                "id": "buyer",
                "name": "Buyer",
                "delivery": {
                    "type": "http",
                    "url": buyer_url,
                    "headers": {"X-Token": "bench-token"},
                    "mapping": MAPPING,
                    "response": {
                        "outcome_search_term": "accepted",
                        "outcome_search_path": "status",
                        "reference_path": "id",
                    },
                },
            }
        ],
        "flows": [
            {
                "id": "bench",
                "name": "Bench",
                "sources": [{"source": "vendor"}],
                "stages": [{"name": "s", "steps": [{"buyer": "buyer"}]}],
            }
        ],
    }
    return yaml.safe_dump(tree)


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


async def measure(
    buyer_port: int,
    delivery_port: int,
    delivery_pid: int,
    leads: int,
    levels: list[int],
    max_seconds: float,
) -> list[Result]:
    buyer_url = f"http://127.0.0.1:{buyer_port}/leads"
    body = orjson.dumps({**{k: "x" for k in MAPPING}, "price": "20.00"})
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=100)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{delivery_port}") as channel,
    ):
        stub = pb_grpc.DeliveryServiceStub(channel)
        requests = [lead_request(i) for i in range(leads * (len(levels) + 1))]
        offset = 0

        async def direct(_index: int) -> None:
            async with session.post(
                buyer_url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()

        async def deliver(index: int) -> None:
            reply = await stub.DeliverLead(requests[offset + index], timeout=30)
            if reply.outcome != 1:
                raise RuntimeError(f"delivery failed: {reply.reason}")

        # Warm up both paths (connections, compiled templates, imports).
        await drive("warmup", direct, 200, 8, max_seconds)
        await drive("warmup", deliver, 200, 8, max_seconds)
        offset += 200
        for level in levels:
            results.append(await drive("baseline", direct, leads, level, max_seconds))
            before = cpu_seconds(delivery_pid)
            result = await drive("delivery", deliver, leads, level, max_seconds)
            result.cpu_seconds = cpu_seconds(delivery_pid) - before
            results.append(result)
            offset += leads
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=4000, help="per run (at most 100000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per run")
    parser.add_argument("--serve-buyer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_buyer:
        serve_buyer(args.serve_buyer)
        return
    leads = min(args.leads, 100_000)
    buyer_port, delivery_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(config_text(f"http://127.0.0.1:{buyer_port}/leads"))
        env = {
            **os.environ,
            "LEADFLOW_CONFIG": str(config),
            "LEADFLOW_DATA_DIR": tmp,
            "LEADFLOW_HOST": "127.0.0.1",
            "LEADFLOW_GRPC_PORT": str(delivery_port),
            "LEADFLOW_METRICS_PORT": "0",
            "LEADFLOW_LOG_LEVEL": "WARNING",
        }
        env.pop("LEADFLOW_DATABASE_URL", None)
        buyer = subprocess.Popen(
            [sys.executable, "-m", "bench.delivery_bench", "--serve-buyer", str(buyer_port)]
        )
        delivery = subprocess.Popen([sys.executable, "-m", "delivery_service"], env=env)
        try:
            wait_for_port(buyer_port, buyer)
            wait_for_port(delivery_port, delivery)
            results = asyncio.run(
                measure(
                    buyer_port,
                    delivery_port,
                    delivery.pid,
                    leads,
                    args.concurrency,
                    args.max_seconds,
                )
            )
        finally:
            for process in (delivery, buyer):
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    print(f"HTTP delivery to a local buyer, {os.cpu_count()} CPUs, {leads} leads per run")
    for result in results:
        print(result.line())
    for base, via in zip(results[::2], results[1::2], strict=True):
        print(
            f"overhead  c={via.concurrency:<3} p50 +{via.p50() - base.p50():.2f} ms "
            f"({via.leads / via.seconds:.0f} leads/s delivered)"
        )


if __name__ == "__main__":
    main()
