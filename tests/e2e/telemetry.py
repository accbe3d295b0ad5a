"""Helpers for the e2e tests of logs and traces: a buyer that fails once then buys (so the
delivery service logs a retry about the lead), a configuration with secrets to look for, and an
OTLP/HTTP receiver decoding spans with the official protobufs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.e2e.harness import ThreadedApp

SOURCE_KEY = "telemetry-source-key-4f1c"
ADMIN_KEY = "telemetry-admin-key-9d2e"
BUYER_TOKEN = "telemetry-buyer-token-77ab"
BUYER_URL_SECRET = "telemetry-url-secret-3c5d"
SUBMIT = "/flows/auto/sources/vendor/submit"
SERVICES = {"gateway", "pricing_service", "routing_service", "delivery_service", "ledger_service"}

CONFIG = """
account:
  name: Telemetry Leads
  time_zone: America/Chicago
  admin_api_key: {admin}
  allow_private_network_delivery: true
sources:
  - {{id: vendor, name: Vendor, api_key: {key}}}
buyers:
  - id: acme
    name: Acme
    pricing: {{prices: [{{amount: 20}}]}}
    delivery:
      type: http
      url: {url}
      format: json
      auth: {{type: bearer, token: {token}}}
      retry: {{attempts: 3, backoff_ms: 10}}
      mapping:
        first: "{{{{lead.first_name}}}}"
        last: "{{{{lead.last_name}}}}"
        email: "{{{{lead.email}}}}"
        phone: "{{{{lead.phone_1}}}}"
      response:
        outcome_search_term: accepted
        outcome_search_path: status
        reference_path: id
flows:
  - id: auto
    name: Auto
    pricing: {{prices: [{{amount: 10}}]}}
    sources: [{{source: vendor}}]
    stages:
      - name: exclusive
        exclusive: true
        steps: [{{buyer: acme}}]
"""

LEAD = {
    "first_name": "Zephyrine",
    "last_name": "Quillfeather",
    "email": "zephyrine.quill@example.org",
    "phone_1": "(512) 555-0142",
    "state": "TX",
    "postal_code": "78701",
}
# What no log line and no span may contain: the lead's PII and every key and token.
SECRETS = (
    "Zephyrine",
    "Quillfeather",
    "zephyrine.quill",
    "555-0142",
    "5550142",
    SOURCE_KEY,
    ADMIN_KEY,
    BUYER_TOKEN,
    BUYER_URL_SECRET,
)


def config_text(buyer_url: str) -> str:
    return CONFIG.format(admin=ADMIN_KEY, key=SOURCE_KEY, url=buyer_url, token=BUYER_TOKEN)


@dataclass
class FlakyBuyer:
    """Answers its first request 503 and buys every later one; keeps each request's headers."""

    headers: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            self.headers.append(dict(request.headers))
            if len(self.headers) == 1:
                return web.json_response({"status": "busy"}, status=503)
            return web.json_response({"status": "accepted", "id": f"B{len(self.headers)}"})

        app = web.Application()
        app.router.add_post("/leads", handle)
        self._server = ThreadedApp(app)

    def start(self) -> str:
        """Serve; the URL to deliver to (its query holds a secret spans must not show)."""
        port = self._server.start()
        return f"http://127.0.0.1:{port}/leads?key={BUYER_URL_SECRET}"

    def stop(self) -> None:
        self._server.stop()


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    kind: int
    attributes: dict[str, Any]


class OtlpReceiver:
    """POST /v1/traces as an OpenTelemetry Collector takes it (OTLP/HTTP, protobuf)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

        async def traces(request: web.Request) -> web.Response:
            export = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
            received = []
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.append(
                            ReceivedSpan(
                                service=str(resource.get("service.name", "")),
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            )
                        )
            with self._lock:
                self.spans.extend(received)
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            return web.Response(body=body, content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        self._server = ThreadedApp(app)

    def start(self) -> str:
        """Serve; the value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self._server.start()}"

    def stop(self) -> None:
        self._server.stop()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30
    ) -> list[ReceivedSpan]:
        """Poll until `done(spans)`, or fail with what arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.snapshot()
            if done(spans):
                return spans
            time.sleep(0.1)
        spans = self.snapshot()
        summary = sorted({(s.service, s.name, s.trace_id) for s in spans})
        raise AssertionError(f"spans did not arrive in {timeout_s:.0f}s: {summary}")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
