"""HTTP delivery end to end (issue 5, acceptance 1 and 5): the suite as processes selling to real
loopback buyers that answer in JSON, form and XML, fail twice, hang, or name their own price;
and, with the network guard on, a buyer whose name resolves to 127.0.0.1 refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import orjson
import pytest
import yaml
from aiohttp import web

from tests.delivery_servers import ThreadedServers
from tests.e2e.harness import Suite, start_suite

pytestmark = pytest.mark.timeout(180)

SOURCE_KEY = "delivery-source-key"
ADMIN_KEY = "delivery-admin-key"
HANG_TIMEOUT_MS = 400


class Buyers:
    """Loopback buyers, one path each, recording what they received."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.port = 0

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.received.setdefault(request.path, []).append(
            {
                "headers": dict(request.headers),
                "body": body,
                "content_type": request.content_type,
            }
        )
        return body

    async def json_buyer(self, request: web.Request) -> web.Response:
        data = orjson.loads(await self._record(request))
        if data.get("state") == "NY":
            return web.json_response({"status": "rejected", "errors": ["Not NY", "Bad area"]})
        return web.json_response({"status": "accepted", "id": "J-1"})

    async def form_buyer(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="result=success&ref=F-9")

    async def xml_buyer(self, request: web.Request) -> web.Response:
        root = ElementTree.fromstring(await self._record(request))
        if root.findtext("state") == "CA":
            answer = "<response><status>Accepted</status><leadId>X-5</leadId></response>"
        else:
            answer = (
                "<response><status>Rejected</status><errors><error>Out of area</error>"
                "<error>Duplicate</error></errors></response>"
            )
        return web.Response(text=answer, content_type="text/xml")

    async def flaky_buyer(self, request: web.Request) -> web.Response:
        await self._record(request)
        if len(self.received[request.path]) < 3:
            return web.Response(status=503, text="try later", headers={"Retry-After": "0"})
        return web.json_response({"status": "accepted"})

    async def hanging_buyer(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(60)
        return web.json_response({"status": "accepted"})

    async def priced_buyer(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"status": "accepted", "payout": "17.25"})

    async def html_buyer(self, request: web.Request) -> web.Response:
        await self._record(request)
        response = web.Response(
            text='<html><body><p class="msg"> Thank you </p><p>Lead id: H-42</p></body></html>',
            content_type="text/html",
        )
        response.headers.add("Set-Cookie", "tracking=1; path=/")
        response.headers.add("Set-Cookie", "Session_id=678; path=/; secure")
        return response

    async def start(self) -> None:
        app = web.Application()
        for path, handler in {
            "/json": self.json_buyer,
            "/form": self.form_buyer,
            "/xml": self.xml_buyer,
            "/flaky": self.flaky_buyer,
            "/hang": self.hanging_buyer,
            "/priced": self.priced_buyer,
            "/html": self.html_buyer,
        }.items():
            app.router.add_route("*", path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()


ACCEPTED = {"outcome_search_term": "accepted", "outcome_search_path": "status"}


def config_text(port: int, *, guard: bool = False) -> str:
    url = f"http://127.0.0.1:{port}"
    buyers = [
        {
            "id": "json-buyer",
            "name": "Json",
            "delivery": {
                "type": "http",
                "url": f"{url}/json",
                "auth": {"type": "bearer", "token": "json-token-123"},
                "mapping": {
                    "first": "{{first_name}}",
                    "state": "{{state}}",
                    "price": "{{sale_price}}",
                },
                "response": {**ACCEPTED, "reason_path": "errors", "reference_path": "id"},
            },
        },
        {
            "id": "form-buyer",
            "name": "Form",
            "delivery": {
                "type": "http",
                "url": f"{url}/form",
                "method": "PUT",
                "format": "form",
                "auth": {"type": "basic", "username": "u", "password": "form-pass-456"},
                "response": {"outcome_search_term": "result=success"},
            },
        },
        {
            "id": "xml-buyer",
            "name": "Xml",
            "delivery": {
                "type": "http",
                "url": f"{url}/xml",
                "format": "xml",
                "mapping": {"first": "{{first_name}}", "state": "{{state}}"},
                "response": {
                    "outcome_search_term": "^accepted$",
                    "outcome_search_path": "/response/status",
                    "reason_path": "//errors/error",
                    "reference_path": "/response/leadId",
                },
            },
        },
        {
            "id": "flaky-buyer",
            "name": "Flaky",
            "delivery": {
                "type": "http",
                "url": f"{url}/flaky",
                "retry": {"attempts": 3, "backoff_ms": 50, "multiplier": 2, "max_backoff_ms": 500},
                "response": ACCEPTED,
            },
        },
        {
            "id": "hanging-buyer",
            "name": "Hanging",
            "delivery": {"type": "http", "url": f"{url}/hang", "timeout_ms": HANG_TIMEOUT_MS},
        },
        {
            "id": "priced-buyer",
            "name": "Priced",
            "pricing": {"prices": [{"amount": 10}]},
            "delivery": {
                "type": "http",
                "url": f"{url}/priced",
                "response": {**ACCEPTED, "price_path": "payout"},
            },
        },
        {
            "id": "html-buyer",
            "name": "Html",
            "delivery": {
                "type": "http",
                "url": f"{url}/html",
                "response": {
                    "outcome_search_term": "/^thank you$/",
                    "outcome_search_path": "p.msg",
                    "reason_path": "p.msg",
                    "cookie_search_term": "session_id",
                    "capture": {"lead_id": "Lead id: ([\\w-]+)"},
                },
            },
        },
        {
            "id": "named-buyer",
            "name": "Named",
            "delivery": {"type": "http", "url": f"http://localhost:{port}/json"},
        },
    ]

    def flow(flow_id: str, *buyer_ids: str) -> dict[str, Any]:
        return {
            "id": flow_id,
            "name": flow_id,
            "sources": [{"source": "vendor"}],
            "stages": [
                {
                    "name": "waterfall",
                    "exclusive": True,
                    "steps": [
                        {"buyer": b, "pricing": {"prices": [{"amount": 20}]}}
                        if b != "priced-buyer"
                        else {"buyer": b}
                        for b in buyer_ids
                    ],
                }
            ],
        }

    tree = {
        "account": {
            "name": "Delivery E2E",
            "admin_api_key": ADMIN_KEY,
            "allow_private_network_delivery": not guard,
        },
        "sources": [{"id": "vendor", "name": "Vendor", "api_key": SOURCE_KEY}],
        "buyers": buyers,
        "flows": [
            flow("json", "json-buyer"),
            flow("form", "form-buyer"),
            flow("xml", "xml-buyer"),
            flow("flaky", "flaky-buyer"),
            flow("hang", "hanging-buyer", "json-buyer"),
            flow("priced", "priced-buyer"),
            flow("named", "named-buyer"),
            flow("html", "html-buyer"),
        ],
    }
    return yaml.safe_dump(tree, sort_keys=False)


LEAD = {"first_name": "Ada", "phone_1": "(512) 555-0142", "state": "California"}


@pytest.fixture(scope="module")
def buyers() -> Iterator[Buyers]:
    servers = ThreadedServers()
    state = Buyers()
    servers.run(state.start())
    try:
        yield state
    finally:
        servers.run(state.stop())
        servers.close()


def _suite(root: Path, text: str) -> Suite:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "leadflow.yaml"
    config.write_text(text)
    return start_suite(config, root / "data")


@pytest.fixture(scope="module")
def suite(buyers: Buyers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    running = _suite(tmp_path_factory.mktemp("http"), config_text(buyers.port))
    yield running
    assert running.stop() == 0, "".join(running.output)


def submit(suite: Suite, flow: str, lead: dict[str, str]) -> dict[str, Any]:
    status, _, raw = suite.request(
        "POST",
        f"/flows/{flow}/sources/vendor/submit",
        orjson.dumps(lead),
        {"Content-Type": "application/json"},
        SOURCE_KEY,
    )
    assert status == 201, raw
    body: dict[str, Any] = orjson.loads(raw)
    return body


def recipients(suite: Suite, lead_id: str) -> list[dict[str, Any]]:
    status, _, raw = suite.request("GET", f"/leads/{lead_id}", key=ADMIN_KEY)
    assert status == 200, raw
    events: list[dict[str, Any]] = orjson.loads(raw)["recipient_events"]
    return events


def test_json_buyer_gets_mapped_fields_and_its_acceptance_is_a_sale(
    suite: Suite, buyers: Buyers
) -> None:
    body = submit(suite, "json", LEAD)
    (event,) = recipients(suite, body["lead"]["id"])
    assert (event["outcome"], event["reference"], event["sale_price"]) == ("success", "J-1", 20)
    sent = buyers.received["/json"][-1]
    assert orjson.loads(sent["body"]) == {"first": "Ada", "state": "CA", "price": "20.00"}
    assert sent["headers"]["Authorization"] == "Bearer json-token-123"
    (attempt,) = event["attempts"]
    assert "json-token-123" not in attempt["request"] and "Authorization: ***" in attempt["request"]


def test_json_buyer_rejection_gives_its_reasons_sorted(suite: Suite) -> None:
    body = submit(suite, "json", {**LEAD, "state": "NY"})
    (event,) = recipients(suite, body["lead"]["id"])
    assert (event["outcome"], event["reason"], event["sale_price"]) == (
        "failure",
        "Bad area, Not NY",
        20,
    )


def test_form_buyer_gets_every_field_urlencoded_with_basic_auth(
    suite: Suite, buyers: Buyers
) -> None:
    body = submit(suite, "form", LEAD)
    (event,) = recipients(suite, body["lead"]["id"])
    assert event["outcome"] == "success"
    sent = buyers.received["/form"][-1]
    assert sent["content_type"] == "application/x-www-form-urlencoded"
    assert sent["body"] == b"first_name=Ada&phone_1=5125550142&state=CA"
    assert sent["headers"]["Authorization"].startswith("Basic ")
    assert event["attempts"][0]["request"].startswith("PUT http://127.0.0.1:")
    assert "form-pass-456" not in event["attempts"][0]["request"]


def test_xml_buyer_outcome_and_reasons_come_from_xpath(suite: Suite, buyers: Buyers) -> None:
    sold = submit(suite, "xml", LEAD)
    (event,) = recipients(suite, sold["lead"]["id"])
    assert (event["outcome"], event["reference"]) == ("success", "X-5")
    root = ElementTree.fromstring(buyers.received["/xml"][-1]["body"])
    assert (root.tag, root.findtext("first"), root.findtext("state")) == ("lead", "Ada", "CA")
    refused = submit(suite, "xml", {**LEAD, "state": "Texas"})
    (event,) = recipients(suite, refused["lead"]["id"])
    assert (event["outcome"], event["reason"]) == ("failure", "Duplicate, Out of area")


def test_buyer_answering_503_twice_is_a_sale_on_attempt_3(suite: Suite) -> None:
    body = submit(suite, "flaky", LEAD)
    (event,) = recipients(suite, body["lead"]["id"])
    assert event["outcome"] == "success"
    assert [(a["number"], a["status_code"]) for a in event["attempts"]] == [
        (1, 503),
        (2, 503),
        (3, 200),
    ]
    assert [a["error"] for a in event["attempts"]] == ["HTTP 503", "HTTP 503", None]


def test_hanging_buyer_is_an_error_after_its_timeout_and_the_next_step_is_tried(
    suite: Suite,
) -> None:
    body = submit(suite, "hang", LEAD)
    hung, fallback = recipients(suite, body["lead"]["id"])
    assert (hung["buyer_id"], hung["outcome"], hung["reason"]) == (
        "hanging-buyer",
        "error",
        f"timeout after {HANG_TIMEOUT_MS} ms",
    )
    assert HANG_TIMEOUT_MS <= hung["attempts"][0]["ms"] < HANG_TIMEOUT_MS + 1000
    assert (fallback["buyer_id"], fallback["outcome"]) == ("json-buyer", "success")


def test_price_in_the_buyers_answer_is_the_sale_price(suite: Suite) -> None:
    body = submit(suite, "priced", LEAD)
    (event,) = recipients(suite, body["lead"]["id"])
    assert (event["outcome"], event["sale_price"]) == ("success", 17.25)
    assert event["pricing"]["layer"] == "response"


def test_html_answer_keeps_its_reason_cookie_and_captures_on_the_event(suite: Suite) -> None:
    body = submit(suite, "html", LEAD)
    (event,) = recipients(suite, body["lead"]["id"])
    assert (event["outcome"], event["reason"]) == ("success", "Thank you")
    (attempt,) = event["attempts"]
    assert attempt["captured"] == {"cookie": "Session_id=678; path=/; secure", "lead_id": "H-42"}


def test_guard_refuses_a_buyer_whose_name_resolves_to_loopback(
    buyers: Buyers, tmp_path: Path
) -> None:
    running = _suite(tmp_path, config_text(buyers.port, guard=True))
    try:
        before = len(buyers.received.get("/json", []))
        body = submit(running, "named", LEAD)
        (event,) = recipients(running, body["lead"]["id"])
        assert event["outcome"] == "error"
        assert event["reason"].startswith("refused: localhost resolves to ")
        assert "127.0.0.1" in event["reason"] or "::1" in event["reason"]
        assert event["reason"].endswith("a private address (loopback)")
        assert len(buyers.received.get("/json", [])) == before
    finally:
        assert running.stop() == 0, "".join(running.output)
