"""The suite in this process for gateway tests: the gateway's own create_server() wired to the
four real services on port 0, a real buyer HTTP server, and real storage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import orjson
from aiohttp import web

from delivery_service import server as delivery_server
from delivery_service.config import Settings as DeliverySettings
from gateway.clients import Addresses, Downstream
from gateway.http_server import DEFAULT_LIMITS, HttpLimits
from gateway.server import Background, RunningGateway
from gateway.server import create_server as create_gateway
from gateway.store import GatewayStore
from leadflow import db
from leadflow.config import Config, parse_config
from leadflow.kit import ServiceSettings
from ledger_service import server as ledger_server
from ledger_service.config import Settings as LedgerSettings
from ledger_service.store import LedgerStore
from pricing_service import server as pricing_server
from routing_service import server as routing_server
from routing_service.peers import Addresses as RoutingAddresses
from routing_service.peers import Peers as RoutingPeers
from routing_service.store import RoutingStore
from tests.conftest import Database

DEFAULTS = Background()
KEY = "source-key"
ADMIN = "admin-key"
SUBMIT = "/flows/auto/sources/vendor/submit"

CONFIG = """
account: {{name: Test, admin_api_key: {admin}, allow_private_network_delivery: true}}
sources: [{{id: vendor, name: Vendor, api_key: {key}}}]
buyers:
  - id: first
    name: First
    pricing: {{prices: [{{amount: 25}}]}}
    delivery: {{type: http, url: "{url}/first", timeout_ms: 2000}}
  - id: second
    name: Second
    pricing: {{prices: [{{amount: 18}}]}}
    delivery: {{type: http, url: "{url}/second", timeout_ms: 2000}}
flows:
  - id: auto
    name: Auto
    require_sale: true
    pricing: {{prices: [{{amount: 9.99}}]}}
    sources: [{{source: vendor}}]
    stages:
      - name: waterfall
        exclusive: true
        steps: [{{buyer: first}}, {{buyer: second}}]
"""


@dataclass
class Buyers:
    """Two buyer endpoints; each answers with the status its test sets."""

    statuses: dict[str, int] = field(default_factory=lambda: {"first": 200, "second": 200})
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.received.append((name, await request.json()))
        return web.json_response({"ok": True}, status=self.statuses[name])


@dataclass
class Ledger:
    """The ledger server, which a test may stop and start again on the same port and database."""

    database: Database
    port: int = 0
    server: grpc.aio.Server | None = None
    store: LedgerStore | None = None

    async def start(self) -> None:
        self.store = await LedgerStore.open(self.database.url, self.database.schema)
        settings = LedgerSettings(
            service=service_settings(f"127.0.0.1:{self.port}"), schema=self.database.schema
        )
        self.server, self.port, _ = await ledger_server.create_server(settings, self.store)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
        if self.store is not None:
            await self.store.close()
        self.server = self.store = None


@dataclass
class InProcessSuite:
    http: aiohttp.ClientSession
    base_url: str
    grpc_target: str
    buyers: Buyers
    config: Config
    ledger: Ledger
    gateway: RunningGateway
    store: GatewayStore
    downstream: Downstream

    async def restart_gateway(self, background: Background = DEFAULTS) -> None:
        """Stop the gateway and start another on the same database (another HTTP port)."""
        await self.gateway.stop(0)
        self.gateway = await create_gateway(
            "127.0.0.1:0", "127.0.0.1", 0, self.config, self.downstream, self.store, background
        )
        self.base_url = f"http://127.0.0.1:{self.gateway.http_port}"
        self.grpc_target = f"127.0.0.1:{self.gateway.port}"

    async def lead_view(self, lead_id: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(
            f"{self.base_url}/leads/{lead_id}", headers={"X-Api-Key": ADMIN}
        ) as response:
            return response.status, orjson.loads(await response.read())

    async def submit(self, lead: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            self.base_url + SUBMIT,
            json=lead,
            headers={"X-Api-Key": KEY, **headers},
        ) as response:
            return response.status, orjson.loads(await response.read())


def service_settings(address: str = "127.0.0.1:0") -> ServiceSettings:
    host, port = address.rsplit(":", 1)
    return ServiceSettings(
        config_path="", data_dir="", database_url=None, host=host, port=int(port), metrics_port=None
    )


@asynccontextmanager
async def in_process_suite(
    database: Database,
    config_text: str = CONFIG,
    background: Background = DEFAULTS,
    http_limits: HttpLimits = DEFAULT_LIMITS,
) -> AsyncIterator[InProcessSuite]:
    """The suite in this process; `config_text` is formatted with admin, key and the buyer url."""
    buyers = Buyers()
    app = web.Application()
    app.router.add_post("/{name}", buyers.handle)
    async with AsyncExitStack() as stack:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        config = parse_config(config_text.format(admin=ADMIN, key=KEY, url=url), {})

        ports = {}
        server, ports["pricing"], _ = await pricing_server.create_server("127.0.0.1:0", config)
        stack.push_async_callback(server.stop, None)
        server, ports["delivery"], _ = await delivery_server.create_server(
            DeliverySettings(service=service_settings()), config
        )
        stack.push_async_callback(server.stop, None)
        routing_store = await RoutingStore.open(database.url, database.schema)
        stack.push_async_callback(routing_store.close)
        # Routing offers the leads: it calls delivery (and pricing for service quotes).
        peers = RoutingPeers(
            RoutingAddresses(
                pricing=f"127.0.0.1:{ports['pricing']}", delivery=f"127.0.0.1:{ports['delivery']}"
            )
        )
        stack.push_async_callback(peers.close)
        server, ports["routing"], _ = await routing_server.create_server(
            "127.0.0.1:0", config, routing_store, peers
        )
        stack.push_async_callback(server.stop, None)
        ledger = Ledger(database)
        await ledger.start()
        stack.push_async_callback(ledger.stop)
        ports["ledger"] = ledger.port

        engine = db.create_engine(database.url, database.schema)
        stack.push_async_callback(engine.dispose)
        store = GatewayStore(engine, database.schema)
        stack.callback(store.close)
        await store.create_schema()
        downstream = Downstream(Addresses(**{k: f"127.0.0.1:{v}" for k, v in ports.items()}))
        stack.push_async_callback(downstream.close)
        gateway = await create_gateway(
            "127.0.0.1:0", "127.0.0.1", 0, config, downstream, store, background, http_limits
        )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        running = InProcessSuite(
            http,
            f"http://127.0.0.1:{gateway.http_port}",
            f"127.0.0.1:{gateway.port}",
            buyers,
            config,
            ledger,
            gateway,
            store,
            downstream,
        )
        try:
            yield running
        finally:
            await running.gateway.stop(0)


LEAD = {"first_name": "Ada", "phone_1": "512 555 0142", "state": "CA"}
