"""delivery_service through its real server and channel, to real HTTP buyers on loopback."""

from __future__ import annotations

import asyncio
import textwrap
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree

import grpc
import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, parse_config
from leadflow.delivery.v1 import delivery_service_pb2 as pb
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from leadflow.wire import from_proto
from tests.service.helpers_delivery import deliver_request, running_delivery

pytestmark = pytest.mark.timeout(30)

SUCCESS = lead_pb2.OUTCOME_SUCCESS
FAILURE = lead_pb2.OUTCOME_FAILURE
ERROR = lead_pb2.OUTCOME_ERROR
HANG_TIMEOUT_MS = 300
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIRy/aZ7RvxsaEgGdUwwgat8KNExTUPZkjXa7G144vRf"


@dataclass
class Buyers:
    """Real HTTP buyers on one loopback server; what each received, by path."""

    url: str = ""
    received: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    released: asyncio.Event = field(default_factory=asyncio.Event)


async def _record(buyers: Buyers, request: web.Request) -> dict[str, Any]:
    entry = {
        "method": request.method,
        "headers": dict(request.headers),
        "query": dict(request.query),
        "body": await request.read(),
    }
    buyers.received[request.path].append(entry)
    return entry


def _app(buyers: Buyers) -> web.Application:
    async def json_buyer(request: web.Request) -> web.Response:
        body = orjson.loads((await _record(buyers, request))["body"])
        accepted = body.get("state") == "CA"
        return web.json_response(
            {
                "status": "accepted" if accepted else "rejected",
                "id": "acme-77",
                "errors": [] if accepted else ["Wrong state", "Bad phone"],
            }
        )

    async def form_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        return web.Response(text="result=success")

    async def xml_buyer(request: web.Request) -> web.Response:
        entry = await _record(buyers, request)
        root = ElementTree.fromstring(entry["body"])
        if root.findtext("zip") == "78701":
            answer = "<result><outcome>accepted</outcome><ref>x-1</ref></result>"
        else:
            answer = (
                "<result><outcome>rejected</outcome><reason>Out of area</reason>"
                "<reason>Duplicate</reason></result>"
            )
        return web.Response(text=answer, content_type="application/xml")

    async def flaky_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        if len(buyers.received[request.path]) < 3:
            return web.Response(status=503, text="busy", headers={"Retry-After": "0"})
        return web.json_response({"status": "accepted"})

    async def slowdown_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        if len(buyers.received[request.path]) < 2:
            return web.Response(status=503, text="busy", headers={"Retry-After": "1"})
        return web.json_response({"status": "accepted"})

    async def busy_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        return web.Response(status=503, text="busy", headers={"Retry-After": "120"})

    async def hanging_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        await buyers.released.wait()
        return web.json_response({"status": "accepted"})

    async def priced_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        return web.json_response({"accepted": True, "bid": {"price": "17.25"}, "lead_id": 991})

    async def rejecting_buyer(request: web.Request) -> web.Response:
        await _record(buyers, request)
        return web.Response(status=422, text="nope")

    app = web.Application()
    app.router.add_post("/json", json_buyer)
    app.router.add_post("/form", form_buyer)
    app.router.add_post("/xml", xml_buyer)
    app.router.add_post("/flaky", flaky_buyer)
    app.router.add_post("/hang", hanging_buyer)
    app.router.add_post("/slowdown", slowdown_buyer)
    app.router.add_post("/busy", busy_buyer)
    app.router.add_post("/priced", priced_buyer)
    app.router.add_post("/reject", rejecting_buyer)
    return app


@pytest.fixture
async def buyers() -> AsyncIterator[Buyers]:
    state = Buyers()
    server = TestServer(_app(state), host="127.0.0.1", port=0)
    await server.start_server()
    state.url = f"http://127.0.0.1:{server.port}"
    try:
        yield state
    finally:
        state.released.set()
        await server.close()


def _config_text(url: str, allow_private: bool) -> str:
    return textwrap.dedent(
        f"""
        account:
          name: Test
          allow_private_network_delivery: {str(allow_private).lower()}
        sources: [{{id: vendor, name: Vendor, api_key: k}}]
        buyers:
          - id: json-buyer
            name: Json Buyer
            delivery:
              type: http
              url: {url}/json
              headers: {{X-Source: "{{{{source.id}}}}"}}
              auth: {{type: bearer, token: tok-secret-1}}
              mapping:
                phone: "{{{{lead.phone_1}}}}"
                state: "{{{{state}}}}"
                price: "{{{{sale_price}}}}"
              response:
                outcome_search_term: accepted
                outcome_search_path: status
                reason_path: errors
                reference_path: id
          - id: form-buyer
            name: Form Buyer
            delivery:
              type: http
              url: {url}/form
              format: form
              response: {{outcome_search_term: "result=success"}}
          - id: xml-buyer
            name: Xml Buyer
            delivery:
              type: http
              url: {url}/xml
              format: xml
              mapping: {{zip: "{{{{postal_code}}}}", phone: "{{{{phone_1}}}}"}}
              response:
                outcome_search_term: "^accepted$"
                outcome_search_path: /result/outcome
                reason_path: //reason
                reference_path: ref
          - id: flaky-buyer
            name: Flaky Buyer
            delivery:
              type: http
              url: {url}/flaky
              retry: {{attempts: 3, backoff_ms: 10, multiplier: 2, max_backoff_ms: 50}}
          - id: slowdown-buyer
            name: Slowdown Buyer
            delivery:
              type: http
              url: {url}/slowdown
              retry: {{attempts: 2, backoff_ms: 10, max_backoff_ms: 5000}}
          - id: busy-buyer
            name: Busy Buyer
            delivery:
              type: http
              url: {url}/busy
              retry: {{attempts: 3, backoff_ms: 10, max_backoff_ms: 5000}}
          - id: hanging-buyer
            name: Hanging Buyer
            delivery:
              type: http
              url: {url}/hang
              timeout_ms: {HANG_TIMEOUT_MS}
          - id: priced-buyer
            name: Priced Buyer
            delivery:
              type: http
              url: {url}/priced
              response:
                outcome_search_term: "^true$"
                outcome_search_path: accepted
                price_path: bid.price
                reference_path: lead_id
          - id: rejecting-buyer
            name: Rejecting Buyer
            delivery:
              type: http
              url: {url}/reject
              retry: {{attempts: 3, backoff_ms: 10}}
          - id: localhost-buyer
            name: Localhost Buyer
            delivery: {{type: http, url: "http://localhost:{url.rsplit(":", 1)[1]}/json"}}
        flows:
          - id: auto
            name: Auto
            sources: [{{source: vendor}}]
            stages: [{{name: one, steps: [{{buyer: json-buyer}}]}}]
        """
    )


@pytest.fixture
async def delivery(buyers: Buyers) -> AsyncIterator[pb_grpc.DeliveryServiceStub]:
    async with running_delivery(parse_config(_config_text(buyers.url, True), env={})) as stub:
        yield stub


@pytest.fixture
async def guarded_delivery(buyers: Buyers) -> AsyncIterator[pb_grpc.DeliveryServiceStub]:
    async with running_delivery(parse_config(_config_text(buyers.url, False), env={})) as stub:
        yield stub


async def test_json_buyer_receives_mapped_normalised_fields(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    await delivery.DeliverLead(deliver_request("json-buyer"))
    (received,) = buyers.received["/json"]
    assert orjson.loads(received["body"]) == {
        "phone": "5125551234",
        "state": "CA",
        "price": "12.50",
    }
    assert received["headers"]["Authorization"] == "Bearer tok-secret-1"
    assert received["headers"]["X-Source"] == "vendor"


async def test_json_buyer_accepting_is_success_with_its_reference(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    response = await delivery.DeliverLead(deliver_request("json-buyer"))
    assert (response.outcome, response.reason, response.reference) == (SUCCESS, "", "acme-77")
    assert not response.HasField("price")


async def test_json_buyer_rejecting_gives_its_reasons_sorted(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    response = await delivery.DeliverLead(deliver_request("json-buyer", state="TX"))
    assert (response.outcome, response.reason) == (FAILURE, "Bad phone, Wrong state")


async def test_attempt_records_the_exchange_with_the_token_masked(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    response = await delivery.DeliverLead(deliver_request("json-buyer"))
    (attempt,) = response.attempts
    assert attempt.number == 1 and attempt.status_code == 200 and attempt.error == ""
    assert attempt.request.startswith("POST http://127.0.0.1:")
    assert "Authorization: ***" in attempt.request
    assert "tok-secret-1" not in attempt.request
    assert '"phone":"5125551234"' in attempt.request
    assert attempt.response.startswith("HTTP/1.1 200 OK")
    assert '"status": "accepted"' in attempt.response or '"status":"accepted"' in attempt.response


async def test_form_buyer_receives_every_field_urlencoded(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    response = await delivery.DeliverLead(deliver_request("form-buyer"))
    assert response.outcome == SUCCESS
    (received,) = buyers.received["/form"]
    assert received["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert dict(parse_qsl(received["body"].decode())) == {
        "first_name": "Ada",
        "phone_1": "5125551234",
        "state": "CA",
        "postal_code": "78701",
    }


async def test_xml_buyer_accepting_by_xpath_is_success(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    response = await delivery.DeliverLead(deliver_request("xml-buyer"))
    assert (response.outcome, response.reference) == (SUCCESS, "x-1")
    root = ElementTree.fromstring(buyers.received["/xml"][0]["body"])
    assert (root.tag, root.findtext("phone")) == ("lead", "5125551234")


async def test_xml_buyer_rejecting_gives_xpath_reasons_sorted(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    response = await delivery.DeliverLead(deliver_request("xml-buyer", postal_code="10001"))
    assert (response.outcome, response.reason) == (FAILURE, "Duplicate, Out of area")


async def test_buyer_answering_503_twice_succeeds_on_the_third_attempt(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    response = await delivery.DeliverLead(deliver_request("flaky-buyer"))
    assert response.outcome == SUCCESS
    assert [a.status_code for a in response.attempts] == [503, 503, 200]
    assert [a.number for a in response.attempts] == [1, 2, 3]
    assert [a.error for a in response.attempts] == ["HTTP 503", "HTTP 503", ""]


async def test_retry_waits_as_long_as_retry_after_asks(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    response = await delivery.DeliverLead(deliver_request("slowdown-buyer"))
    assert response.outcome == SUCCESS
    assert [a.status_code for a in response.attempts] == [503, 200]
    assert loop.time() - start >= 1.0  # not the 10 ms backoff


async def test_retry_after_longer_than_max_backoff_ends_the_retries(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    response = await delivery.DeliverLead(deliver_request("busy-buyer"))
    assert (response.outcome, response.reason) == (
        ERROR,
        "HTTP 503; Retry-After 120 s is longer than max_backoff_ms",
    )
    assert len(buyers.received["/busy"]) == 1


async def test_failure_is_not_retried(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    response = await delivery.DeliverLead(deliver_request("rejecting-buyer"))
    assert (response.outcome, response.reason) == (FAILURE, "HTTP 422")
    assert len(buyers.received["/reject"]) == 1


async def test_hanging_buyer_is_an_error_after_its_timeout(
    delivery: pb_grpc.DeliveryServiceStub,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    response = await delivery.DeliverLead(deliver_request("hanging-buyer"))
    elapsed = loop.time() - start
    assert (response.outcome, response.reason) == (ERROR, f"timeout after {HANG_TIMEOUT_MS} ms")
    assert HANG_TIMEOUT_MS / 1000 <= elapsed < HANG_TIMEOUT_MS / 1000 + 1
    (attempt,) = response.attempts
    assert attempt.status_code == 0 and attempt.error == response.reason


async def test_price_in_the_answer_is_returned(delivery: pb_grpc.DeliveryServiceStub) -> None:
    response = await delivery.DeliverLead(deliver_request("priced-buyer"))
    assert response.outcome == SUCCESS
    assert from_proto(response.price) == Decimal("17.25")
    assert response.price.currency_code == "USD"
    assert response.reference == "991"


async def test_retried_request_id_returns_the_first_result_without_resending(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    first = await delivery.DeliverLead(deliver_request("form-buyer", request_id="evt-1"))
    again = await delivery.DeliverLead(deliver_request("form-buyer", request_id="evt-1"))
    assert again == first
    assert len(buyers.received["/form"]) == 1


async def test_concurrent_retries_of_one_request_id_send_once(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    calls = [
        delivery.DeliverLead(deliver_request("form-buyer", request_id="evt-2")) for _ in range(3)
    ]
    results = await asyncio.gather(*calls)
    assert all(result == results[0] for result in results)
    assert len(buyers.received["/form"]) == 1


async def test_different_request_ids_are_each_sent(
    delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    await delivery.DeliverLead(deliver_request("form-buyer", request_id="evt-3"))
    await delivery.DeliverLead(deliver_request("form-buyer", request_id="evt-4"))
    assert len(buyers.received["/form"]) == 2


async def test_ssrf_guard_refuses_a_loopback_address(
    guarded_delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    response = await guarded_delivery.DeliverLead(deliver_request("json-buyer"))
    assert (response.outcome, response.reason) == (
        ERROR,
        "refused: 127.0.0.1 is a private address (loopback)",
    )
    assert not buyers.received["/json"]
    (attempt,) = response.attempts
    assert attempt.status_code == 0 and attempt.error == response.reason


async def test_ssrf_guard_refuses_a_name_resolving_to_loopback(
    guarded_delivery: pb_grpc.DeliveryServiceStub, buyers: Buyers
) -> None:
    response = await guarded_delivery.DeliverLead(deliver_request("localhost-buyer"))
    assert response.outcome == ERROR
    assert response.reason.startswith("refused: localhost resolves to ")
    assert response.reason.endswith("a private address (loopback)")
    assert len(response.attempts) == 1
    assert not buyers.received["/json"]


async def test_unknown_buyer_is_not_found(delivery: pb_grpc.DeliveryServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delivery.DeliverLead(deliver_request("nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_request_without_a_lead_is_invalid(delivery: pb_grpc.DeliveryServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delivery.DeliverLead(pb.DeliverLeadRequest(buyer_id="json-buyer"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_batch_buyer_without_storage_is_an_error_not_a_crash(buyers: Buyers) -> None:
    tree = yaml.safe_load(_config_text(buyers.url, True))
    tree["buyers"].append(
        {
            "id": "sftp-buyer",
            "name": "Sftp Buyer",
            "delivery": {
                "type": "sftp",
                "host": "files.example",
                "password": "p",
                "host_key": HOST_KEY,
                "schedule": "0 * * * *",
            },
        }
    )
    # Served without a store (as these tests do) there is no queue to put the lead in.
    async with running_delivery(Config.model_validate(tree)) as stub:
        response = await stub.DeliverLead(deliver_request("sftp-buyer"))
    assert (response.outcome, response.reason) == (
        ERROR,
        "the batch queue is not available (no storage)",
    )
