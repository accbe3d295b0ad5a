"""gateway: build the gRPC and HTTP servers (create_server) and run them as a process (main)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health

from gateway import access_log
from gateway.access_log import AccessLogger
from gateway.async_intake import WORKERS, AsyncIntake
from gateway.clients import Downstream
from gateway.config import settings_from_env
from gateway.http_api import DRAINING_KEY, create_app
from gateway.http_server import DEFAULT_LIMITS, GatewayRunner, HttpLimits
from gateway.orchestrator import Orchestrator
from gateway.outbox import LINGER_S, LedgerOutbox
from gateway.rate_limit import RateLimiter
from gateway.servicer import GatewayServicer
from gateway.store import GatewayStore
from leadflow import db, kit
from leadflow.config import Config, load_config
from leadflow.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc

# How long a stopping gateway keeps answering on its open HTTP connections (_drain_http).
HTTP_DRAIN_S = 1.0
SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


@dataclass
class RunningGateway:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    http: web.AppRunner
    http_port: int
    outbox: LedgerOutbox
    intake: AsyncIntake

    async def stop(self, grace: float = 10.0) -> None:
        await kit.stop_server(self.server, self.health, grace)
        await self.close(drain_s=min(grace, HTTP_DRAIN_S))

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


async def create_server(
    address: str,
    http_host: str,
    http_port: int,
    config: Config,
    downstream: Downstream,
    store: GatewayStore,
    background: Background = Background(),
    http_limits: HttpLimits = DEFAULT_LIMITS,
) -> RunningGateway:
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
        address,
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
    site = web.TCPSite(runner, http_host, http_port)
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


async def main() -> None:
    kit.bootstrap("gateway")
    settings = settings_from_env()
    config = load_config(settings.service.config_path)
    url = db.database_url(settings.service.database_url, settings.service.data_dir, "gateway")
    engine = db.create_engine(url, settings.schema)
    store = GatewayStore(engine, settings.schema)
    await store.create_schema()
    downstream = Downstream(settings.addresses)
    kit.serve_metrics(settings.service.metrics_port)
    gateway = await create_server(
        settings.service.address,
        settings.http_host,
        settings.http_port,
        config,
        downstream,
        store,
        http_limits=settings.http_limits,
    )

    async def close() -> None:
        await gateway.close()
        await downstream.close()
        store.close()
        await engine.dispose()

    await kit.run_until_terminated(gateway.server, gateway.health, on_stop=close)
