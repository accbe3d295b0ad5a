"""The transport's own CPU per lead: what a lead's hops cost with nothing done in them.

    .venv/bin/python -m bench.floor [--calls 4000] [--runs 3] [--concurrency 1 16]

A lead sold on its first offer crosses, in the suite: the vendor's HTTP request into the
gateway, QuotePurchasePrice (unary), DistributeLead (a stream of two round trips: the lead and
its offering, the acknowledgement and the outcome), DeliverLead (unary) and the delivery's HTTP
POST to the buyer. This measures each of those hops alone, between two processes of its own on
127.0.0.1 with empty handlers (grpc.aio and aiohttp on uvloop, as the services run them), and
prints the CPU microseconds each end spends per hop (`/proc/<pid>/stat`, median of `--runs`), so
that the suite's CPU per lead can be read against the floor its shape cannot go under. With one
call at a time every call pays a whole event-loop wake-up and poll at each end; with 16 at once
they share them, as a loaded suite's calls do. The
ledger's batches and the buyer's own work are left out; payloads are 600 bytes, a lead's size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
from collections.abc import Awaitable, Callable
from multiprocessing.queues import Queue
from typing import Any

import aiohttp
import grpc
import uvloop
from aiohttp import web

from bench.run import cpu_seconds, free_port

PAYLOAD = b"x" * 600


async def _grpc_server(port: int, ready: Queue[int]) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def stream(requests: Any, context: Any) -> None:
        # DistributeLead's shape: the lead in, the offering out, its ack in, the outcome out.
        await context.read()
        await context.write(PAYLOAD)
        await context.read()
        await context.write(PAYLOAD)

    handlers = grpc.method_handlers_generic_handler(
        "floor.Floor",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.put(os.getpid())
    await server.wait_for_termination()


async def _http_server(port: int, ready: Queue[int]) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=PAYLOAD, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    ready.put(os.getpid())
    await asyncio.Event().wait()


def _serve(kind: str, port: int, ready: Queue[int]) -> None:
    uvloop.run(_grpc_server(port, ready) if kind == "grpc" else _http_server(port, ready))


async def _measure(
    one: Callable[[], Awaitable[object]], calls: int, concurrency: int, server_pid: int
) -> tuple[float, float]:
    """CPU microseconds per call of this process (the client) and of the server."""
    for _ in range(200):
        await one()

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    client0, server0 = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    client1, server1 = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
    done = calls // concurrency * concurrency
    return 1e6 * (client1 - client0) / done, 1e6 * (server1 - server0) / done


async def _hops(
    grpc_port: int, http_port: int, grpc_pid: int, http_pid: int, calls: int, concurrency: int
) -> dict[str, tuple[float, float]]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    unary: Any = channel.unary_unary("/floor.Floor/Unary")
    stream: Any = channel.stream_stream("/floor.Floor/Stream")

    async def one_stream() -> None:
        call = stream()
        await call.write(PAYLOAD)
        await call.read()
        await call.write(PAYLOAD)
        await call.read()
        await call.done_writing()
        await call.read()

    url = f"http://127.0.0.1:{http_port}/"
    async with aiohttp.ClientSession() as session:

        async def one_post() -> None:
            async with session.post(url, data=PAYLOAD) as response:
                await response.read()

        def measured(one: Callable[[], Awaitable[object]], pid: int) -> Awaitable[Any]:
            return _measure(one, calls, concurrency, pid)

        results = {
            "gRPC unary call": await measured(lambda: unary(PAYLOAD), grpc_pid),
            "gRPC stream, two round trips": await measured(one_stream, grpc_pid),
            "HTTP POST (aiohttp)": await measured(one_post, http_pid),
        }
    await channel.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    grpc_port, http_port = free_port(), free_port()
    servers = [
        context.Process(target=_serve, args=("grpc", grpc_port, ready), daemon=True),
        context.Process(target=_serve, args=("http", http_port, ready), daemon=True),
    ]
    for server in servers:
        server.start()
        ready.get(timeout=30)  # one at a time: it is listening
    grpc_pid, http_pid = (server.pid for server in servers)
    assert grpc_pid is not None and http_pid is not None
    try:
        for concurrency in args.concurrency:
            runs = [
                uvloop.run(_hops(grpc_port, http_port, grpc_pid, http_pid, args.calls, concurrency))
                for _ in range(args.runs)
            ]
            report(runs, concurrency)
    finally:
        for server in servers:
            server.kill()


def report(runs: list[dict[str, tuple[float, float]]], concurrency: int) -> None:
    print(f"{concurrency} call(s) at once: CPU µs per hop, median of {len(runs)} runs")
    totals: dict[str, float] = {}
    for hop in runs[0]:
        caller = statistics.median(run[hop][0] for run in runs)
        callee = statistics.median(run[hop][1] for run in runs)
        totals[hop] = caller + callee
        print(f"  {hop:<30} client {caller:6.0f}  server {callee:6.0f}  both {totals[hop]:6.0f}")
    # The lead's path: two unary calls, the stream, the vendor's request and the buyer's POST.
    lead = (
        2 * totals["gRPC unary call"]
        + totals["gRPC stream, two round trips"]
        + 2 * totals["HTTP POST (aiohttp)"]
    )
    print(f"floor: concurrency={concurrency} transport_cpu_ms_per_lead={lead / 1000:.2f}")


if __name__ == "__main__":
    main()
