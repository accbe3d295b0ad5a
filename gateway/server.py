"""gateway: what it runs on (open_deps) and its gRPC and HTTP servers (create_server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from gateway import access_log
from gateway.access_log import AccessLogger
from gateway.async_intake import WORKERS, AsyncIntake
from gateway.clients import Downstream
from gateway.config import Settings
from gateway.http_api import DRAINING_KEY, create_app
from gateway.http_server import GatewayRunner
from gateway.orchestrator import Orchestrator
from gateway.outbox import LINGER_S, LedgerOutbox
from gateway.rate_limit import RateLimiter
from gateway.servicer import GatewayServicer
from gateway.store import GatewayStore
from leadflow import db, kit
from leadflow.config import Config
from leadflow.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc

# How long a stopping gateway keeps answering on its open HTTP connections (_drain_http).
HTTP_DRAIN_S = 1.0
SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


@dataclass
class RunningGateway(kit.Running):
    """The gRPC and HTTP servers, and the background work that ends after them."""

    http: web.AppRunner
    http_port: int
    outbox: LedgerOutbox
    intake: AsyncIntake

    async def stop(self, grace: float | None = None) -> None:
        grace = self.grace if grace is None else grace
        await kit.stop_server(self.server, self.health, grace)
        await self.close(drain_s=min(grace, HTTP_DRAIN_S))

    async def after_stop(self) -> None:
        await self.close()

    async def close(self, drain_s: float = HTTP_DRAIN_S) -> None:
        """After the gRPC server stopped: the HTTP connections drain, requests in flight finish,
        then the asynchronous leads being processed, then the records waiting for the ledger
        are offered to it."""
        await self._drain_http(drain_s)
        await self.http.cleanup()
        await self.intake.stop()
        await self.outbox.stop()

    async def _drain_http(self, seconds: float) -> None:
        """Take no new connections, and for up to `seconds` go on answering on the open ones,
        each answer with `Connection: close`. A keep-alive client then drops its connection
        after an answer instead of sending its next lead on it just as the server closes it
        (the lead never processed, the vendor left unsure: ServerDisconnectedError)."""
        for site in list(self.http.sites):
            await site.stop()
        self.http.app[DRAINING_KEY].set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.http.server is not None and self.http.server.connections:
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Background:
    """The gateway's background work: asynchronous intake workers, how long records wait to
    share a call to the ledger, and how soon records and intakes left behind (by a ledger outage
    or a stopped gateway) are taken up again."""

    workers: int = WORKERS
    linger_s: float = LINGER_S
    sweep_interval_s: float = 1.0
    replay_after_s: float = 5.0
    unclaimed_after_s: float = 10.0
    lease_s: float = 600.0


@dataclass(frozen=True)
class Deps:
    """The configuration, the four services' stubs and the gateway's store (the caller owns
    them), and how the background work runs."""

    config: Config
    downstream: Downstream
    store: GatewayStore
    background: Background = Background()


async def create_server(settings: Settings, deps: Deps) -> RunningGateway:
    """Start the gRPC server on settings.address and the HTTP one on settings.http_address
    (port 0 picks a free one), then the background work."""
    config, downstream, store = deps.config, deps.downstream, deps.store
    background, http_limits = deps.background, settings.http_limits
    outbox = LedgerOutbox(
        store,
        downstream,
        sweep_interval_s=background.sweep_interval_s,
        replay_after_s=background.replay_after_s,
        linger_s=background.linger_s,
    )
    orchestrator = Orchestrator(config, downstream, outbox, store)
    intake = AsyncIntake(
        store,
        orchestrator,
        workers=background.workers,
        sweep_interval_s=background.sweep_interval_s,
        unclaimed_after_s=background.unclaimed_after_s,
        lease_s=background.lease_s,
    )
    # One budget per source whether it submits over HTTP or gRPC.
    rate_limiter = RateLimiter()
    servicer = GatewayServicer(config, orchestrator, store, rate_limiter)
    server, port, health_servicer = await kit.start_service(
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server,
        servicer,
        SERVICE_NAME,
        settings.address,
    )
    app = create_app(
        config,
        orchestrator,
        downstream,
        store,
        outbox,
        intake,
        rate_limiter,
        body_timeout_s=http_limits.body_timeout_s,
    )
    runner = GatewayRunner(
        app,
        http_limits,
        access_log_class=AccessLogger,
        access_log=access_log.LOGGER,
        # Bodies are decoded from their Content-Encoding by http_api.read_body, which answers
        # a body that does not decode with a 400 and an unknown coding with a 415.
        auto_decompress=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, *settings.http_address)
    try:
        await site.start()
    except OSError:  # the HTTP port is taken: stop the gRPC server before saying so
        await runner.cleanup()
        await server.stop(None)
        raise
    bound = runner.addresses[0][1]
    outbox.start()
    intake.start()
    return RunningGateway(server, port, health_servicer, runner, bound, outbox, intake)


@asynccontextmanager
async def open_deps(settings: Settings, config: Config) -> AsyncIterator[Deps]:
    url = db.database_url(settings.database_url, settings.data_dir, "gateway")
    engine = db.create_engine(url, settings.db_schema)
    store = GatewayStore(engine, settings.db_schema)
    downstream = None
    try:
        await store.create_schema()
        downstream = Downstream(settings.addresses)
        yield Deps(config, downstream, store)
    finally:
        if downstream is not None:
            await downstream.close()
        store.close()
        await engine.dispose()
