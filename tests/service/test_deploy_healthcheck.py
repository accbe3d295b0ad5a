"""deploy/healthcheck.py, the compose healthcheck, against a real kit server."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

from leadflow import kit

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_healthcheck_passes_while_serving_and_fails_once_shutting_down() -> None:
    check = _healthcheck().main
    server, port, health = await kit.start_server([], ["test.v1.Probe"], "127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    try:
        assert await asyncio.to_thread(check, [address]) == 0
        assert await asyncio.to_thread(check, [address, "--service", "test.v1.Probe"]) == 0
        assert await asyncio.to_thread(check, [address, "--service", "unknown.v1.X"]) == 1
        await health.enter_graceful_shutdown()
        assert await asyncio.to_thread(check, [address]) == 1
    finally:
        await server.stop(None)


async def test_healthcheck_fails_when_nothing_answers() -> None:
    server, port, _ = await kit.start_server([], [], "127.0.0.1:0")
    await server.stop(None)
    assert (
        await asyncio.to_thread(_healthcheck().main, [f"127.0.0.1:{port}", "--timeout", "0.5"]) == 1
    )
