"""Logs (SPEC 10): JSON lines with service and lead, `leadflow up`'s per-service prefixes, and
tracing that is off, at no cost, unless the OTEL_* variables ask for it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from leadflow import kit, logs, tracing
from leadflow.delivery.v1 import delivery_service_pb2
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.routing.v1 import routing_service_pb2
from leadflow.supervisor import LineRelay


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing JSON to a buffer (the root logger stays pytest's)."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logs.make_handler("routing_service", "json", stream)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_time_level_service_and_message(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.warning("routing %s", "started")
    [line] = lines(stream)
    assert line["level"] == "WARNING"
    assert line["service"] == "routing_service"
    assert line["message"] == "routing started"
    assert str(line["time"]).endswith("+00:00")
    assert "lead_id" not in line


def test_lines_inside_a_lead_scope_carry_its_id_and_only_those(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    with logs.lead_scope("L1"):
        logger.info("about the lead")
    logger.info("after it")
    about, after = lines(stream)
    assert about["lead_id"] == "L1"
    assert "lead_id" not in after


def test_an_explicit_lead_id_wins_over_the_scope(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    with logs.lead_scope("batch-first"):
        logger.info("one of the batch", extra={"lead_id": "L7"})
    assert lines(stream)[0]["lead_id"] == "L7"


def test_an_exception_stays_on_one_json_line(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    [line] = lines(stream)
    assert "ValueError: boom" in str(line["exc_info"])


def test_trace_ids_come_from_the_registered_getter(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logs.set_trace_ids(lambda: ("a" * 32, "b" * 16))
    try:
        logger.info("traced")
    finally:
        logs.set_trace_ids(None)
    logger.info("untraced")
    traced, untraced = lines(stream)
    assert (traced["trace_id"], traced["span_id"]) == ("a" * 32, "b" * 16)
    assert "trace_id" not in untraced


def test_text_is_the_default_format() -> None:
    assert logs.log_format({}) == "text"
    assert logs.log_format({"LEADFLOW_LOG_FORMAT": "JSON"}) == "json"


def test_an_unknown_log_format_or_level_is_a_clear_problem() -> None:
    assert logs.settings_problem({}) is None
    assert logs.settings_problem({"LEADFLOW_LOG_FORMAT": "xml"}) == (
        "LEADFLOW_LOG_FORMAT must be one of text, json, not 'xml'"
    )
    assert logs.settings_problem({"LEADFLOW_LOG_LEVEL": "loud"}) == (
        "LEADFLOW_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not 'LOUD'"
    )


@pytest.mark.parametrize(
    ("request_message", "lead_id"),
    [
        (delivery_service_pb2.DeliverLeadRequest(lead={"id": "L1"}), "L1"),
        (routing_service_pb2.DistributeLeadRequest(lead={"id": "L2"}), "L2"),
        (ledger_service_pb2.GetLeadRequest(lead_id="L3"), "L3"),
    ],
)
def test_the_kit_reads_the_lead_a_request_is_about(request_message: object, lead_id: str) -> None:
    reader = kit.lead_id_reader(request_message.DESCRIPTOR)  # type: ignore[attr-defined]
    assert reader is not None
    assert reader(request_message) == lead_id


def test_a_batch_request_is_about_no_one_lead() -> None:
    assert kit.lead_id_reader(ledger_service_pb2.RecordLeadsRequest.DESCRIPTOR) is None


async def relayed(relay: LineRelay, *chunks: bytes) -> None:
    stream = asyncio.StreamReader()
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    await relay.relay(stream)


async def test_leadflow_up_prefixes_each_text_line_with_its_service() -> None:
    out = io.BytesIO()
    relay = LineRelay("gateway", out, json_lines=False, level="WARNING")
    # A line split across reads is still written whole, and a last line without its newline too.
    await relayed(relay, b"first line\nsec", b"ond line\n", b"last")
    assert out.getvalue().decode().splitlines() == [
        "gateway          | first line",
        "gateway          | second line",
        "gateway          | last",
    ]


async def test_in_json_every_relayed_line_is_a_json_object_with_the_service() -> None:
    out = io.BytesIO()
    relay = LineRelay("ledger_service", out, json_lines=True, level="WARNING")
    child_line = b'{"message":"from the logger","service":"ledger_service"}'
    await relayed(relay, child_line + b"\n", b"E0000 a C library's line\n")
    passed, wrapped = (json.loads(line) for line in out.getvalue().splitlines())
    assert passed == {"message": "from the logger", "service": "ledger_service"}
    assert wrapped["service"] == "ledger_service"
    assert wrapped["message"] == "E0000 a C library's line"
    assert wrapped["level"] == "WARNING"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.requested(environ) is on


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("http://buyer.test/leads?api_key=s3cret", "http://buyer.test/leads"),
        ("https://user:pw@buyer.test:8443/a/b#frag", "https://buyer.test:8443/a/b"),
        ("/flows/f/sources/s/submit?email=jane@example.com", "/flows/f/sources/s/submit"),
    ],
)
def test_span_urls_lose_their_query_and_credentials(url: str, stripped: str) -> None:
    assert tracing._without_query(url) == stripped


def test_with_tracing_off_a_service_imports_no_opentelemetry() -> None:
    """Off costs nothing: no SDK, no instrumentation, no interceptor."""
    code = (
        "import sys\n"
        "from leadflow import kit, tracing\n"
        "import gateway.server\n"
        "kit.bootstrap('gateway')\n"
        "assert not tracing.enabled()\n"
        "assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PATH": "/usr/bin:/bin", "LEADFLOW_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
