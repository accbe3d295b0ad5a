"""The gateway's own create_server() wired to the four real services on port 0, a real buyer
HTTP server, and real storage (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest

from leadflow.common.v1 import lead_pb2
from leadflow.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from tests.conftest import Database
from tests.service.helpers_gateway import (
    ADMIN,
    CONFIG,
    KEY,
    LEAD,
    SUBMIT,
    InProcessSuite,
    in_process_suite,
)


@pytest.fixture
async def suite(database: Database) -> AsyncIterator[InProcessSuite]:
    async with in_process_suite(database) as running:
        yield running


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


async def test_a_repeated_grpc_idempotency_key_returns_the_first_answer(
    suite: InProcessSuite,
) -> None:
    request = gateway_service_pb2.SubmitLeadRequest(
        flow_id="auto",
        source_id="vendor",
        api_key=KEY,
        fields_json=orjson.dumps({**LEAD, "redir_url": "https://vendor.example/thanks"}),
        idempotency_key="g1",
    )
    async with grpc.aio.insecure_channel(suite.grpc_target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        first = await stub.SubmitLead(request, timeout=10)
        again = await stub.SubmitLead(request, timeout=10)
    assert again == first
    assert first.lead_id
    assert len(suite.buyers.received) == 1
    assert "redir_url" not in suite.buyers.received[0][1]  # read as HTTP reads it: no lead field


async def test_grpc_submission_to_an_unknown_source_is_not_found(suite: InProcessSuite) -> None:
    async with grpc.aio.insecure_channel(suite.grpc_target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitLead(
                gateway_service_pb2.SubmitLeadRequest(
                    flow_id="auto", source_id="nobody", api_key=KEY
                ),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_grpc_idempotency_key_too_long_to_keep_is_invalid(suite: InProcessSuite) -> None:
    # "grpc:" and 251 characters would not fit the 255 a key is stored in.
    async with grpc.aio.insecure_channel(suite.grpc_target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitLead(
                gateway_service_pb2.SubmitLeadRequest(
                    flow_id="auto",
                    source_id="vendor",
                    api_key=KEY,
                    fields_json=orjson.dumps(LEAD),
                    idempotency_key="k" * 251,
                ),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
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


# --- offers whose fate is unknown (SPEC 8.1) ---------------------------------------------------


async def _admin(
    suite: InProcessSuite, method: str, path: str, body: Any = None, key: str = ADMIN
) -> tuple[int, Any]:
    async with suite.http.request(
        method, suite.base_url + path, json=body, headers={"X-Api-Key": key}
    ) as response:
        return response.status, orjson.loads(await response.read())


async def _record_unknown(suite: InProcessSuite, lead_id: str) -> str:
    from tests.service.helpers_ledger import lead_record, recipient

    assert suite.ledger.store is not None
    event = recipient(f"{lead_id}-1", "first", "unknown", price="25.00")
    await suite.ledger.store.record(
        lead_record(lead_id, flow_id="auto", source_id="vendor", recipients=[event])
    )
    return event.id


async def test_an_operator_lists_and_resolves_unknown_offers_once(suite: InProcessSuite) -> None:
    event_id = await _record_unknown(suite, "U1")
    status, page = await _admin(suite, "GET", "/leads?outcome=unknown")
    assert status == 200
    assert [
        (i["id"], [o["recipient_event_id"] for o in i["unknown_offers"]]) for i in page["items"]
    ] == [("U1", [event_id])]

    status, body = await _admin(
        suite, "POST", f"/recipients/{event_id}/resolve", {"outcome": "success"}
    )
    assert (status, body["outcome"], body["created"]) == (200, "success", True)
    status, body = await _admin(
        suite, "POST", f"/recipients/{event_id}/resolve", {"outcome": "success"}
    )
    assert (status, body["created"]) == (200, False)
    status, body = await _admin(
        suite, "POST", f"/recipients/{event_id}/resolve", {"outcome": "failure"}
    )
    assert (status, body["reason"]) == (409, "Already resolved as success")
    assert (await _admin(suite, "GET", "/leads?outcome=unknown"))[1]["items"] == []
    status, view = await suite.lead_view("U1")
    assert [p["kind"] for p in view["postings"]] == ["purchase", "sale"]


@pytest.mark.parametrize(
    ("path", "body", "key", "expected"),
    [
        ("/recipients/U2-1/resolve", {"outcome": "success"}, "wrong", 401),
        ("/recipients/nope-1/resolve", {"outcome": "success"}, ADMIN, 404),
        ("/recipients/U2-9/resolve", {"outcome": "success"}, ADMIN, 404),
        ("/recipients/U2-1/resolve", {"outcome": "maybe"}, ADMIN, 422),
        ("/recipients/U2-1/resolve", ["success"], ADMIN, 422),
        ("/recipients/U2-1/resolve", {"outcome": "success", "reason": 7}, ADMIN, 422),
    ],
    ids=["no-admin", "no-lead", "no-event", "bad-outcome", "not-an-object", "bad-reason"],
)
async def test_a_resolve_that_cannot_apply_is_refused_with_its_status(
    suite: InProcessSuite, path: str, body: Any, key: str, expected: int
) -> None:
    await _record_unknown(suite, "U2")

    assert (await _admin(suite, "POST", path, body, key=key))[0] == expected


async def test_only_an_unknown_offer_can_be_resolved(suite: InProcessSuite) -> None:
    status, body = await suite.submit(LEAD)
    assert (status, body["outcome"]) == (201, "success")

    status, _ = await _admin(
        suite, "POST", f"/recipients/{body['lead']['id']}-1/resolve", {"outcome": "failure"}
    )

    assert status == 409


@pytest.mark.parametrize(
    "query", ["", "?outcome=success", "?outcome=unknown&limit=0", "?outcome=unknown&limit=x"]
)
async def test_the_lead_search_serves_only_unknown_and_checks_its_limit(
    suite: InProcessSuite, query: str
) -> None:
    assert (await _admin(suite, "GET", f"/leads{query}"))[0] == 400


PING = "/flows/auto/sources/vendor/ping"


async def _send(
    suite: InProcessSuite,
    path: str,
    body: bytes,
    content_type: str | None = "application/json",
    query: str = "",
    **headers: str,
) -> tuple[int, Any, bytes]:
    sent = {"X-Api-Key": KEY, **headers}
    if content_type is not None:
        sent["Content-Type"] = content_type
    url = suite.base_url + path + (f"?{query}" if query else "")
    async with suite.http.post(
        url, data=body, headers=sent, allow_redirects=False, skip_auto_headers={"Content-Type"}
    ) as response:
        return response.status, response.headers, await response.read()


@pytest.mark.parametrize("path", [SUBMIT, PING])
@pytest.mark.parametrize(
    ("body", "query"),
    [
        (
            b'{"first_name": "Ada", "state": "CA", "redir_url": "https://vendor.example/thanks?x=1"}',
            "",
        ),
        (
            b'{"first_name": "Ada", "state": "CA"}',
            "redir_url=https%3A%2F%2Fvendor.example%2Fthanks%3Fx%3D1",
        ),
        (  # given twice: the first, as LeadConduit
            b'{"first_name": "Ada", "state": "CA"}',
            "redir_url=https%3A%2F%2Fvendor.example%2Fthanks%3Fx%3D1&redir_url=http://b.example/",
        ),
    ],
)
async def test_redir_url_answers_303_to_it_after_the_lead_is_handled(
    suite: InProcessSuite, path: str, body: bytes, query: str
) -> None:
    status, headers, answer = await _send(suite, path, body, query=query)
    assert (status, headers["Location"]) == (303, "https://vendor.example/thanks?x=1"), answer
    assert orjson.loads(answer)["outcome"] == "success"  # the answer the lead would have had
    if path == SUBMIT:
        assert [name for name, _ in suite.buyers.received] == ["first"]
        assert "redir_url" not in suite.buyers.received[0][1]  # never a lead field


async def test_redir_url_outweighs_respond_async_and_is_kept_with_the_idempotent_answer(
    suite: InProcessSuite,
) -> None:
    body = b'{"first_name": "Ada", "state": "CA", "redir_url": "http://vendor.example/ok"}'
    headers = {"Prefer": "respond-async", "Idempotency-Key": "k1"}
    first = await _send(suite, SUBMIT, body, **headers)
    again = await _send(suite, SUBMIT, body, **headers)
    assert first[0] == again[0] == 303
    assert first[1]["Location"] == again[1]["Location"] == "http://vendor.example/ok"
    assert first[2] == again[2]
    assert len(suite.buyers.received) == 1


@pytest.mark.parametrize("path", [SUBMIT, PING])
@pytest.mark.parametrize(
    "query",
    [
        "redir_url=scooby.doo",
        "redir_url=ftp%3A%2F%2Fx.example%2F",
        "redir_url=ftp://a.example/&redir_url=http://b.example/",  # the first is the one
    ],
)
async def test_a_redir_url_that_is_no_http_url_is_a_400_and_no_lead(
    suite: InProcessSuite, path: str, query: str
) -> None:
    status, _, answer = await _send(suite, path, b'{"first_name": "Ada"}', query=query)
    assert status == 400, answer
    assert b"redir_url" in answer
    assert suite.buyers.received == []


async def test_trustedform_parameters_reach_the_lead_as_trustedform_cert_url(
    suite: InProcessSuite,
) -> None:
    body = b"first_name=Ada&state=CA&XXTRUSTEDFORMCERTURL=https://cert.trustedform.com/t1"
    status, _, answer = await _send(suite, SUBMIT, body, "application/x-www-form-urlencoded")
    assert status == 201, answer
    received = suite.buyers.received[0][1]
    assert received["trustedform_cert_url"] == "https://cert.trustedform.com/t1"
    assert not [name for name in received if name.lower() == "xxtrustedformcerturl"]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b'{"first_name": "Ada",\n "state": "C\tA"}', 201),  # read again
        ("application/json", b'{"first_name": "Ada"', 400),
        ("text/xml", b'<lead xmlns="urn:x"><first_name lang="en">Ada</first_name></lead>', 201),
        ("APPLICATION/JSON; charset=UTF-8", b'{"first_name": "Ada"}', 201),
        ("Text/XML", b"<lead><first_name>Ada</first_name></lead>", 201),
        (None, b"first_name=Ada", 415),  # a body without Content-Type
        ("", b"first_name=Ada", 415),
        ("text/plain", b"first_name=Ada", 406),  # LeadConduit's 406 for an unsupported type
        ("Monkies", b"first_name=Ada", 406),
        ("application/*", b"first_name=Ada", 406),
        ("multipart/form-data; boundary=x", b"--x--", 406),
        ("text/plain", b"   ", 201),  # no body: nothing to type
    ],
)
async def test_bodies_are_read_or_refused_as_spec_5_1_says(
    suite: InProcessSuite, content_type: str | None, body: bytes, status: int
) -> None:
    got, _, answer = await _send(suite, SUBMIT, body, content_type)
    assert got == status, answer
    if status == 406:
        assert b"Use only application/x-www-form-urlencoded" in answer


# The flow pays 7 for a lead whose trustedform_cert_url is a ping URL, 5 for a certificate URL.
TRUSTEDFORM_CONFIG = CONFIG.replace(
    "    pricing: {{prices: [{{amount: 9.99}}]}}\n    sources:",
    "    pricing: {{prices: [{{amount: 1}}, "
    "{{amount: 7, rule_set: [{{lhv: trustedform_cert_url.host, op: is equal to, rhv: ping.trustedform.com}}]}}, "
    "{{amount: 5, rule_set: [{{lhv: trustedform_cert_url.host, op: is equal to, rhv: cert.trustedform.com}}]}}]}}\n"
    "    sources:",
)
TF_PING = "https://ping.trustedform.com/" + "a" * 40
TF_CERT = "https://cert.trustedform.com/" + "b" * 40


@pytest.mark.parametrize(
    ("path", "body", "price"),
    [
        (PING, f"state=CA&xxTrustedFormPingUrl={TF_PING}".encode(), 7),
        (
            PING,
            f"state=CA&TRUSTEDFORM_PING_URL={TF_PING}&xxTrustedFormCertUrl={TF_CERT}".encode(),
            7,
        ),
        (PING, f"state=CA&xxtrustedformcerturl={TF_CERT}".encode(), 5),
        (
            SUBMIT,
            f"state=CA&xxTrustedFormPingUrl={TF_PING}&xxTrustedFormCertUrl={TF_CERT}".encode(),
            5,
        ),
        (SUBMIT, f"state=CA&xxTrustedFormPingUrl={TF_PING}".encode(), 1),  # dropped on a submit
    ],
)
async def test_a_ping_prices_the_trustedform_ping_url_and_a_submit_the_cert_url(
    database: Database, path: str, body: bytes, price: int
) -> None:
    assert "amount: 7" in TRUSTEDFORM_CONFIG
    async with in_process_suite(database, TRUSTEDFORM_CONFIG) as suite:
        status, _, answer = await _send(suite, path, body, "application/x-www-form-urlencoded")
    assert status in (200, 201), answer
    assert orjson.loads(answer)["price"] == price
