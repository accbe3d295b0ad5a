"""Harness for the e2e tier: the suite as processes (`leadflow up`), real buyer HTTP servers."""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

READY_TIMEOUT_S = 60


class ThreadedApp:
    """An aiohttp application served on 127.0.0.1 from a thread of its own, so that sync tests
    (and the suite's processes) can talk to it while the test blocks."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.port = 0

    def start(self) -> int:
        """Serve; returns the bound port."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=0.1)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            self.port = self._runner.addresses[0][1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "server did not start"
        return self.port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ThreadedApp:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class BuyerServer:
    """A buyer's HTTP endpoint in a thread of its own; records every request it receives.
    `delay_s` keeps each request waiting that long before its answer (without blocking the
    others), so that deliveries are in flight when a test needs them to be."""

    respond: Callable[[str, dict[str, Any]], dict[str, Any]]
    received: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    delay_s: float = 0.0

    def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if request.content_type == "application/json":
                data = await request.json()
            else:
                data = dict(await request.post())
            self.received.append(
                {
                    "path": request.path,
                    "headers": dict(request.headers),
                    "content_type": request.content_type,
                    "body": body,
                    "data": data,
                }
            )
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.json_response(self.respond(request.path, data))

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._server = ThreadedApp(app)
        self.port = self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def url(self, path: str = "/leads") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def ports_free(ports: list[int]) -> bool:
    """No socket listens on any of `ports`. SO_REUSEADDR, as the servers themselves bind: a
    connection of a stopped server lingering in TIME_WAIT does not make its port busy."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_base() -> tuple[int, int]:
    """A port base B with B+1..B+15 free, and a free HTTP port."""
    for _ in range(100):
        base = random.randrange(20000, 45000, 20)
        ports = [base + i for i in range(1, 16)] + [base + 19]
        if ports_free(ports):
            return base, base + 19
    raise RuntimeError("no free ports")


@dataclass
class Suite:
    process: subprocess.Popen[str]
    http_port: int
    port_base: int
    output: list[str]
    drain: threading.Thread | None = None

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Signal the supervisor as Ctrl-C (or kill) would; its exit code once everything stopped."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            if self.drain is not None:
                self.drain.join(10)
            assert self.process.stdout is not None
            self.process.stdout.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def child_pid(self, module: str) -> int:
        """The pid of the supervisor's child running `python -m <module>` now (a restarted
        service has a new one); LookupError while there is none."""
        listing = subprocess.run(
            ["ps", "--ppid", str(self.process.pid), "-o", "pid=,args="],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in listing.splitlines():
            pid, *args = line.split()
            if args[-2:] == ["-m", module]:
                return int(pid)
        raise LookupError(f"no {module} running under the supervisor")

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until GET /healthz answers 200 (every service SERVING)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:  # the gateway itself is restarting
                pass
            time.sleep(0.1)
        raise AssertionError(f"the suite is not healthy after {timeout_s:.0f}s")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["Authorization"] = (
                "Basic " + base64.b64encode(f"API:{key}".encode()).decode()
            )
        # http.client sends exactly these headers (urllib would add a form Content-Type).
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def start_suite(
    config_path: Path,
    data_dir: Path,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
) -> Suite:
    """`leadflow up` on SQLite files in `data_dir`, or on PostgreSQL at `database_url`; `env`
    is added to (and wins over) the environment the suite gets."""
    base, http_port = free_port_base()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leadflow",
            "up",
            "--config",
            str(config_path),
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http_port),
            "--port-base",
            str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "LEADFLOW_LOG_LEVEL": "WARNING",
            **({"LEADFLOW_DATABASE_URL": database_url} if database_url else {}),
            **(env or {}),
        },
    )
    output: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("leadflow ready "):
            assert line.strip() == f"leadflow ready http://127.0.0.1:{http_port}"
            drain = threading.Thread(target=_drain, args=(process, output), daemon=True)
            drain.start()
            return Suite(process, http_port, base, output, drain)
    process.send_signal(signal.SIGINT)  # stops the services it started, then itself
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()
    raise AssertionError("suite did not become ready:\n" + "".join(output))


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)


def default_buyer() -> Iterator[BuyerServer]:
    def respond(_path: str, data: dict[str, Any]) -> dict[str, Any]:
        if str(data.get("state", "")) == "NY":
            return {"status": "rejected", "message": "Not buying NY"}
        return {"status": "accepted", "id": f"B{len(server.received)}"}

    server = BuyerServer(respond)
    server.start()
    yield server
    server.stop()
