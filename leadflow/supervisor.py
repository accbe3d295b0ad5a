"""`leadflow up`: every service as a supervised child process, on the ports of SPEC section 10."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import aiohttp
import orjson

from leadflow import logs
from leadflow.settings import LogSettings, SettingsError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
MAX_RESTART_DELAY_S = 30.0
# A child that ran this long was healthy: its next crash is restarted without delay.
HEALTHY_RUN_S = 10.0
# A service's exit code for a configuration or environment it cannot run with (kit.run_main).
REFUSED = 2
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The ledger's work is off the lead's path (records reach it in batches from the gateway's
# outbox), and a batch is a burst of CPU: at a lower priority, the services a lead is waiting
# for take the core first. Only for `leadflow up`, where all of them share one machine.
BACKGROUND_NICE = {"ledger_service": 10}
# Children's output is relayed in chunks of this size; a longer line is cut there.
RELAY_CHUNK_BYTES = 64 * 1024
PREFIX_WIDTH = len("delivery_service")  # the longest service name: prefixes line up


@dataclass(frozen=True)
class Child:
    module: str
    env: dict[str, str]
    nice: int = 0  # added to the supervisor's own niceness


def plan(
    config: Path, data_dir: Path, http_port: int, port_base: int, host: str = "127.0.0.1"
) -> list[Child]:
    """The five services with their ports: gRPC B+1..B+5, metrics B+11..B+15."""
    base_env = {
        **os.environ,
        "LEADFLOW_CONFIG": str(config.resolve()),
        "LEADFLOW_DATA_DIR": str(data_dir.resolve()),
        "LEADFLOW_HOST": host,
    }
    modules = [
        "pricing_service",
        "routing_service",
        "delivery_service",
        "ledger_service",
        "gateway",
    ]
    addresses = {
        f"LEADFLOW_{name.upper()}_ADDR": f"{host}:{port_base + i}"
        for i, name in enumerate(("pricing", "routing", "delivery", "ledger"), start=1)
    }
    children = []
    for i, module in enumerate(modules, start=1):
        env = {
            **base_env,
            "LEADFLOW_GRPC_PORT": str(port_base + i),
            "LEADFLOW_METRICS_PORT": str(port_base + 10 + i),
        }
        if module == "gateway":
            env.update(addresses, LEADFLOW_HTTP_PORT=str(http_port), LEADFLOW_HTTP_HOST=host)
        if module == "delivery_service":  # reports late outcomes to the ledger and routing
            env["LEADFLOW_LEDGER_ADDR"] = addresses["LEADFLOW_LEDGER_ADDR"]
            env["LEADFLOW_ROUTING_ADDR"] = addresses["LEADFLOW_ROUTING_ADDR"]
        if module == "routing_service":  # quotes (pricing), pings (delivery), stats (ledger)
            env.update({k: v for k, v in addresses.items() if "ROUTING" not in k})
        children.append(Child(module, env, BACKGROUND_NICE.get(module, 0)))
    return children


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL, so no
    service outlives it holding its ports (Linux; elsewhere children must be stopped by hand)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LineRelay:
    """A child's output, line by line, to the supervisor's own stream, each line marked with
    the child's service: `gateway          | ...` in text. In JSON (LEADFLOW_LOG_FORMAT=json)
    the child's JSON lines pass unchanged (they name their service) and any other line it
    writes (a C library's message, say) becomes a JSON object too, so that every line parses."""

    def __init__(self, service: str, out: BinaryIO, *, json_lines: bool, level: str) -> None:
        self._service = service
        self._out = out
        self._json = json_lines
        self._level = level
        self._prefix = f"{service:<{PREFIX_WIDTH}} | ".encode()

    def line(self, line: bytes) -> bytes:
        line = line.rstrip(b"\r")
        if not self._json:
            return self._prefix + line + b"\n"
        if line.startswith(b"{"):
            return line + b"\n"
        record = {
            "time": datetime.now(UTC).isoformat(),
            "level": self._level,
            "service": self._service,
            "message": line.decode(errors="replace"),
        }
        return orjson.dumps(record) + b"\n"

    async def relay(self, stream: asyncio.StreamReader) -> None:
        """Until the child closes its end; whole lines only, so services never interleave."""
        pending = b""
        while chunk := await stream.read(RELAY_CHUNK_BYTES):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) >= RELAY_CHUNK_BYTES:
                lines.append(pending)
                pending = b""
            self._write(b"".join(self.line(line) for line in lines))
        if pending:
            self._write(self.line(pending))

    def _write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._out.flush()


class Supervisor:
    def __init__(self, children: list[Child], ready_url: str, json_logs: bool = False) -> None:
        self._children = children
        self._ready_url = ready_url
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._exit_code = 0
        self._json_logs = json_logs

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        watchers = [asyncio.create_task(self._keep_running(child)) for child in self._children]
        ready = asyncio.create_task(self._announce_ready())
        await self._stopping.wait()
        ready.cancel()
        await self._stop_all()
        # Each watcher relays the last lines of its child, then returns.
        await asyncio.wait(watchers, timeout=STOP_TIMEOUT_S)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, ready, return_exceptions=True)
        return self._exit_code

    async def _start(self, child: Child) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.module,
            env=child.env,
            preexec_fn=_die_with_parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=RELAY_CHUNK_BYTES,
        )
        self._processes[child.module] = process
        if child.nice:
            with contextlib.suppress(ProcessLookupError):  # it died already: _keep_running sees
                priority = os.getpriority(os.PRIO_PROCESS, 0) + child.nice
                os.setpriority(os.PRIO_PROCESS, process.pid, priority)
        return process

    async def _keep_running(self, child: Child) -> None:
        """Restart a child that exits: at once after a healthy run (callers are waiting for it),
        with a back-off doubling to MAX_RESTART_DELAY_S while it keeps failing fast."""
        delay = 0.0
        loop = asyncio.get_running_loop()
        first = True
        while not self._stopping.is_set():
            started = loop.time()
            process = await self._start(child)
            relays = self._relay_output(child.module, process)
            code = await process.wait()
            await asyncio.gather(*relays)  # what it wrote before it exited
            if self._stopping.is_set():
                return
            if first and code == REFUSED:
                # It said why in one line; another start would say the same, forever.
                log.error("%s refused to start (exit %d); stopping the suite", child.module, code)
                self._exit_code = REFUSED
                self._stopping.set()
                return
            first = False
            if loop.time() - started >= HEALTHY_RUN_S:
                delay = 0.0
            log.error("%s exited with %s; restarting in %.0fs", child.module, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(max(delay * 2, 1.0), MAX_RESTART_DELAY_S)

    def _relay_output(
        self, service: str, process: asyncio.subprocess.Process
    ) -> list[asyncio.Task[None]]:
        assert process.stdout is not None and process.stderr is not None
        streams = [
            (process.stdout, sys.stdout.buffer, "INFO"),
            (process.stderr, sys.stderr.buffer, "WARNING"),
        ]
        return [
            asyncio.create_task(
                LineRelay(service, out, json_lines=self._json_logs, level=level).relay(stream)
            )
            for stream, out, level in streams
        ]

    async def _announce_ready(self) -> None:
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        self._ready_url, timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        if r.status == 200:
                            base = self._ready_url.removesuffix("/healthz")
                            print(f"leadflow ready {base}", flush=True)
                            return
                await asyncio.sleep(0.1)
        log.error("the suite did not become healthy within %.0fs", READY_TIMEOUT_S)

    async def _stop_all(self) -> None:
        """The gateway first (no new leads), then the services it calls."""
        for module in ["gateway", *[c.module for c in self._children if c.module != "gateway"]]:
            process = self._processes.get(module)
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                if module == "gateway":
                    await self._wait(process)
        for process in self._processes.values():
            await self._wait(process)

    async def _wait(self, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def up(config: Path, data_dir: Path, http_port: int, port_base: int) -> int:
    try:
        settings = LogSettings.from_env()
    except SettingsError as exc:
        # The same one line and exit code a service gives, before any child starts.
        print(f"leadflow: {exc}", file=sys.stderr)
        return REFUSED
    logs.configure("leadflow", settings.log_format, settings.log_level)
    children = plan(config, data_dir, http_port, port_base)
    ready_url = f"http://127.0.0.1:{http_port}/healthz"
    return await Supervisor(children, ready_url, settings.log_format == "json").run()
