"""OpenTelemetry tracing (SPEC 10) through the suite as processes: with OTEL_EXPORTER_OTLP_ENDPOINT
set, one lead makes one trace that reaches every service and the buyer, exported over OTLP/HTTP
to a receiver that decodes it with the official protobufs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.e2e.harness import Suite, start_suite
from tests.e2e.telemetry import (
    LEAD,
    SECRETS,
    SERVICES,
    SOURCE_KEY,
    SUBMIT,
    FlakyBuyer,
    OtlpReceiver,
    ReceivedSpan,
    config_text,
)

SPAN_KIND_CLIENT = 3
# Spans the lead's trace must hold (each process exports on its own schedule: wait for all).
EXPECTED = {
    ("gateway", "POST /flows/{flow_id}/sources/{source_id}/submit"),
    ("gateway", "process lead"),
    ("pricing_service", "/leadflow.pricing.v1.PricingService/QuotePurchasePrice"),
    ("routing_service", "/leadflow.routing.v1.RoutingService/DistributeLead"),
    ("delivery_service", "/leadflow.delivery.v1.DeliveryService/DeliverLead"),
    ("delivery_service", "POST"),  # the buyer calls
    # The record reaches the ledger in a batch from the gateway's outbox: a span for the
    # batch in the first lead's trace carries the context on.
    ("gateway", "forward lead records"),
    ("gateway", "/leadflow.ledger.v1.LedgerService/RecordLeads"),
    ("ledger_service", "/leadflow.ledger.v1.LedgerService/RecordLeads"),
}


@dataclass
class Traced:
    suite: Suite
    receiver: OtlpReceiver
    buyer: FlakyBuyer
    lead_id: str


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    root = tmp_path_factory.mktemp("traced")
    receiver = OtlpReceiver()
    endpoint = receiver.start()
    buyer = FlakyBuyer()
    config = root / "leadflow.yaml"
    config.write_text(config_text(buyer.start()))
    suite = start_suite(
        config,
        root / "data",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "LEADFLOW_LOG_FORMAT": "json",
            "LEADFLOW_LOG_LEVEL": "INFO",
        },
    )
    try:
        status, _, body = suite.request(
            "POST",
            # PII in the query string: the gateway's request span must not show it.
            SUBMIT + f"?email={LEAD['email']}",
            orjson.dumps(LEAD),
            {"Content-Type": "application/json"},
            key=SOURCE_KEY,
        )
        answer = orjson.loads(body)
        assert (status, answer["outcome"]) == (201, "success"), body
        yield Traced(suite, receiver, buyer, answer["lead"]["id"])
    finally:
        assert suite.stop() == 0, "".join(suite.output)
        buyer.stop()
        receiver.stop()


def lead_trace(
    traced: Traced, lead_id: str | None = None, expected: set[tuple[str, str]] = EXPECTED
) -> tuple[str, list[ReceivedSpan]]:
    """The trace of the gateway's span for the lead, once the `expected` spans are in it."""
    wanted = lead_id or traced.lead_id

    def trace_id(spans: list[ReceivedSpan]) -> str | None:
        for span in spans:
            if span.attributes.get("leadflow.lead_id") == wanted:
                return span.trace_id
        return None

    def complete(spans: list[ReceivedSpan]) -> bool:
        found = trace_id(spans)
        return (
            found is not None
            and {(s.service, s.name) for s in spans if s.trace_id == found} >= expected
        )

    spans = traced.receiver.wait_for(complete)
    found = trace_id(spans)
    assert found is not None
    return found, [s for s in spans if s.trace_id == found]


def test_one_lead_makes_one_trace_across_all_five_services(traced: Traced) -> None:
    trace_id, spans = lead_trace(traced)
    assert {s.service for s in spans} == SERVICES
    # The ledger's SQL for the record is in it too (SQLAlchemy instrumentation).
    assert any(s.service == "ledger_service" and s.name.startswith("INSERT") for s in spans)
    # Every trace is a lead's: no background loop's query, no health probe makes one.
    everything = traced.receiver.snapshot()
    assert trace_id in {s.trace_id for s in everything}
    leads = {s.trace_id for s in everything if s.name == "process lead"}
    assert {s.trace_id for s in everything} == leads


def test_the_buyer_calls_are_in_the_lead_trace_with_its_context(traced: Traced) -> None:
    trace_id, spans = lead_trace(traced)
    # Both attempts (a 503, then the sale) are client spans of the delivery service...
    calls = [s for s in spans if s.service == "delivery_service" and s.kind == SPAN_KIND_CLIENT]
    assert len([s for s in calls if s.name == "POST"]) == 2
    # ...and the buyer was sent the same trace (W3C traceparent: 00-<trace id>-<span id>-01).
    sent = [h["traceparent"].split("-")[1] for h in traced.buyer.headers]
    assert sent.count(trace_id) == 2


def test_every_process_names_itself_and_spans_hold_no_pii_or_secret(traced: Traced) -> None:
    lead_trace(traced)  # wait for the lead's spans
    spans = traced.receiver.snapshot()
    assert {s.service for s in spans} == SERVICES  # service.name is each one's directory name
    text = repr([(s.name, s.attributes) for s in spans])
    for secret in SECRETS:
        assert secret not in text


def test_a_lead_submitted_asynchronously_is_processed_in_its_request_trace(
    traced: Traced,
) -> None:
    # The fixture's lead recorded first: records the outbox sends together go to the ledger in
    # one RecordLeads call, in the trace of the first of them, and this lead's must be its own.
    lead_trace(traced)
    status, _, body = traced.suite.request(
        "POST",
        SUBMIT,
        orjson.dumps(LEAD),
        {"Content-Type": "application/json", "Prefer": "respond-async"},
        key=SOURCE_KEY,
    )
    assert status == 202, body
    lead_id = orjson.loads(body)["lead"]["id"]
    # The 202's request span and the processing (by a worker, later) share one trace.
    request_span = ("gateway", "POST /flows/{flow_id}/sources/{source_id}/submit")
    lead_trace(traced, lead_id, EXPECTED | {request_span})


def test_log_lines_name_the_trace_and_span_they_were_written_in(traced: Traced) -> None:
    trace_id, _ = lead_trace(traced)
    deadline = time.monotonic() + 10
    retries: list[dict[str, Any]] = []
    while not retries and time.monotonic() < deadline:
        lines = [json.loads(line) for line in list(traced.suite.output) if line.startswith("{")]
        retries = [r for r in lines if "retrying" in r["message"]]
        time.sleep(0.1)
    [retry] = retries
    # The delivery service's line about the buyer's 503 names the lead's trace, and its span.
    assert (retry["service"], retry["lead_id"], retry["trace_id"]) == (
        "delivery_service",
        traced.lead_id,
        trace_id,
    )
    assert len(retry["span_id"]) == 16
