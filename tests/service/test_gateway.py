"""The gateway's own create_server() wired to the four real services on port 0, a real buyer
HTTP server, and real storage (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from aiohttp import web

from delivery_service import server as delivery_server
from delivery_service.config import Settings as DeliverySettings
from gateway.clients import Addresses, Downstream
from gateway.http_server import DEFAULT_LIMITS, HttpLimits
from gateway.server import Background, RunningGateway
from gateway.server import create_server as create_gateway
from gateway.store import GatewayStore
from leadflow import db
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, parse_config
from leadflow.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
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
            service=_settings(f"127.0.0.1:{self.port}"), schema=self.database.schema
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


def _settings(address: str = "127.0.0.1:0") -> ServiceSettings:
    host, port = address.rsplit(":", 1)
    return ServiceSettings(
        config_path="", data_dir="", database_url=None, host=host, port=int(port), metrics_port=None
    )


@pytest.fixture
async def suite(database: Database) -> AsyncIterator[InProcessSuite]:
    async with in_process_suite(database) as running:
        yield running


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
        routing_store = await RoutingStore.open(database.url, database.schema)
        stack.push_async_callback(routing_store.close)
        peers = RoutingPeers(RoutingAddresses())
        stack.push_async_callback(peers.close)
        server, ports["routing"], _ = await routing_server.create_server(
            "127.0.0.1:0", config, routing_store, peers
        )
        stack.push_async_callback(server.stop, None)
        server, ports["delivery"], _ = await delivery_server.create_server(
            DeliverySettings(service=_settings()), config
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


async def test_a_stopping_gateway_answers_on_open_connections_and_has_them_closed(
    suite: InProcessSuite,
) -> None:
    assert (await suite.submit(LEAD))[0] == 201  # the session keeps this connection alive
    closing = asyncio.create_task(suite.gateway.close(drain_s=10))
    await asyncio.sleep(0.2)  # it takes no new connections now
    started = asyncio.get_running_loop().time()
    async with suite.http.post(
        suite.base_url + SUBMIT, json=LEAD, headers={"X-Api-Key": KEY}
    ) as response:
        assert response.status == 201
        assert response.headers["Connection"] == "close"
    await closing
    # The drain ended as soon as the client dropped its connection, not after 10 s.
    assert asyncio.get_running_loop().time() - started < 5


async def test_first_buyer_buys_and_the_lead_is_recorded(suite: InProcessSuite) -> None:
    status, body = await suite.submit(LEAD)
    assert (status, body["outcome"], body["price"]) == (201, "success", 9.99)
    assert [name for name, _ in suite.buyers.received] == ["first"]
    _, view = await suite.lead_view(body["lead"]["id"])
    assert view["source_event"]["revenue"] == 25
    assert [e["outcome"] for e in view["recipient_events"]] == ["success"]


async def test_rejected_post_cascades_to_the_next_step(suite: InProcessSuite) -> None:
    suite.buyers.statuses["first"] = 422
    status, body = await suite.submit(LEAD)
    assert (status, body["outcome"]) == (201, "success")
    assert [name for name, _ in suite.buyers.received] == ["first", "second"]


async def test_require_sale_fails_the_lead_when_nobody_buys(suite: InProcessSuite) -> None:
    suite.buyers.statuses.update(first=422, second=400)
    status, body = await suite.submit(LEAD)
    assert (status, body["outcome"], body["reason"], body["price"]) == (
        201,
        "failure",
        "No buyer accepted the lead",
        0,
    )


async def test_concurrent_requests_with_one_idempotency_key_make_one_lead(
    suite: InProcessSuite,
) -> None:
    replies = await asyncio.gather(
        *(suite.submit(LEAD, **{"Idempotency-Key": "same"}) for _ in range(5))
    )
    assert len({reply[1]["lead"]["id"] for reply in replies}) == 1
    assert len(suite.buyers.received) == 1


async def test_idempotency_keys_are_per_source_and_key(suite: InProcessSuite) -> None:
    _, first = await suite.submit(LEAD, **{"Idempotency-Key": "a"})
    _, second = await suite.submit(LEAD, **{"Idempotency-Key": "b"})
    assert first["lead"]["id"] != second["lead"]["id"]


async def test_grpc_submission_runs_the_same_processing(suite: InProcessSuite) -> None:
    async with grpc.aio.insecure_channel(suite.grpc_target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        reply = await stub.SubmitLead(
            gateway_service_pb2.SubmitLeadRequest(
                flow_id="auto", source_id="vendor", api_key=KEY, fields_json=orjson.dumps(LEAD)
            ),
            timeout=10,
        )
    assert reply.outcome == lead_pb2.OUTCOME_SUCCESS
    assert (reply.price.units, reply.price.nanos) == (9, 990_000_000)
    assert suite.buyers.received[0][1]["phone_1"] == "5125550142"


async def test_grpc_submission_with_a_wrong_key_is_unauthenticated(suite: InProcessSuite) -> None:
    async with grpc.aio.insecure_channel(suite.grpc_target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitLead(
                gateway_service_pb2.SubmitLeadRequest(
                    flow_id="auto", source_id="vendor", api_key="x"
                ),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert suite.buyers.received == []


async def test_a_lead_sold_while_the_ledger_is_down_is_recorded_when_it_returns(
    suite: InProcessSuite,
) -> None:
    await suite.ledger.stop()
    status, body = await suite.submit(LEAD)
    assert (status, body["outcome"]) == (201, "success")
    lead_id = body["lead"]["id"]
    assert (await suite.lead_view(lead_id))[0] == 503

    await suite.ledger.start()
    deadline = asyncio.get_running_loop().time() + 20
    while (view := await suite.lead_view(lead_id))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "the parked record never arrived"
        await asyncio.sleep(0.1)
    assert view[1]["source_event"]["revenue"] == 25
    assert [e["outcome"] for e in view[1]["recipient_events"]] == ["success"]


HOSTILE = [
    ("application/json", b'{"a":' * 5000 + b"1" + b"}" * 5000),  # nesting deeper than parsers allow
    ("application/json", b'{"phone_1": null, "state": [1, {"x": 2}], "dob": true}'),
    ("application/json", b'{"a": 1e999999, "b": -0, "c": "\\u0000"}'),
    ("application/json", b"\xff\xfe{}"),
    ("application/json", b'{"": 1, ".": 2}'),
    ("application/json", b'{"a.b": 1, "a": {"c": 2}}'),
    ("application/json", b'{"a": 1, "a.b": 2}'),
    ("application/x-www-form-urlencoded", b"%ZZ=%%%&&&=="),
    ("application/x-www-form-urlencoded; charset=klingon", b"a=1"),
    ("application/x-www-form-urlencoded", b"a.=1"),
    ("application/xml", b"<lead><a>1</a><a>2</a><b><c/></b></lead>"),
    ("application/xml", b"<lead>unclosed"),
    ("text/xml", b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><lead><a>&e;</a></lead>'),
    ("application/xml", b"<lead>" + b"<f>x</f>" * 2000 + b"</lead>"),
    ("multipart/form-data; boundary=x", b"--x--"),
    ("application/json", b"   "),
]


@pytest.mark.parametrize(("content_type", "body"), HOSTILE)
async def test_nothing_a_client_sends_gives_a_server_error(
    suite: InProcessSuite, content_type: str, body: bytes
) -> None:
    async with suite.http.post(
        suite.base_url + SUBMIT,
        data=body,
        headers={"X-Api-Key": KEY, "Content-Type": content_type},
    ) as response:
        assert response.status < 500, await response.text()
        assert "reason" in orjson.loads(await response.read()) or response.status == 201
