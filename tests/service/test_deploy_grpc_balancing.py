"""Scaling out on Kubernetes: a kit channel spreads calls over every address its target names
(a headless Service resolves to each ready pod), not only the first one it connected to."""

from __future__ import annotations

from typing import Any

import grpc

from leadflow import kit


def _counter(calls: list[int], index: int) -> kit.Registrar:
    async def echo(request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        calls[index] += 1
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.v1.EchoService",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo)},  # type: ignore[arg-type]
    )
    return lambda server: server.add_generic_rpc_handlers((handler,))


async def test_a_channel_round_robins_over_every_resolved_address() -> None:
    calls = [0, 0]
    servers = [
        await kit.start_server([_counter(calls, i)], ["test.v1.EchoService"], "127.0.0.1:0")
        for i in range(2)
    ]
    ports = [port for _, port, _ in servers]
    channel = kit.channel(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}")
    try:
        echo = channel.unary_unary("/test.v1.EchoService/Echo")
        await channel.channel_ready()
        for _ in range(20):
            assert await echo(b"x", timeout=5) == b"x"
    finally:
        await channel.close()
        for server, _, _ in servers:
            await server.stop(None)
    assert sum(calls) == 20
    assert min(calls) >= 5, calls
