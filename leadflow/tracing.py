"""OpenTelemetry tracing (SPEC section 10): off unless the standard OTEL_* variables ask for it,
then one trace per lead across the gateway, every service, their databases and every outbound
HTTP call, each process's spans under `service.name` = its directory name.

Off, it costs nothing: this module imports no OpenTelemetry, the kit adds no interceptor, the
gateway no middleware, and the helpers below return shared no-op values. On, it uses the
maintained instrumentations: grpc.aio interceptors on both sides, aiohttp client and server,
SQLAlchemy engines, with W3C trace context (`traceparent`) between processes.

Spans never carry a query string or URL credentials: vendors may submit a lead's fields in the
query string, and buyers' URLs may hold API keys there (_strip_queries_processor).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from leadflow import logs

# gRPC services every process answers that are not about a lead: probes would make a trace each.
UNTRACED_GRPC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
# Likewise for the gateway's HTTP paths (comma-separated, as OpenTelemetry's variable takes them).
UNTRACED_HTTP_PATHS = "/healthz,/metrics"
PROTOCOLS = ("http/protobuf", "grpc")
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")

_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Any = None  # an opentelemetry Tracer once set up; None means tracing is off


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces: an OTLP endpoint or a traces exporter,
    unless the SDK is disabled or the exporter is `none`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def enabled() -> bool:
    return _tracer is not None


def setup(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start tracing for this process when the environment asks for it (once, in main(),
    before any server, channel, session or engine is made); whether it did."""
    global _tracer
    env = os.environ if environ is None else environ
    if _tracer is not None or not requested(env):
        return _tracer is not None
    exporters = _exporters(env)  # checked before anything is installed

    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Our name wins over OTEL_SERVICE_NAME: `leadflow up` gives every child the same environment.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(_strip_queries_processor())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", UNTRACED_HTTP_PATHS)
    AioHttpServerInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument(url_filter=_without_query)
    _tracer = trace.get_tracer("leadflow")
    logs.set_trace_ids(_current_ids)
    return True


def _exporters(env: Mapping[str, str]) -> list[Any]:
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    exporters: list[Any] = []
    for name in filter(None, names):
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp" and protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "otlp" and protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            exporters.append(GrpcSpanExporter())
        elif name == "otlp":
            raise SystemExit(
                f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)}, "
                f"not {protocol!r}"
            )
        else:
            raise SystemExit(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    return exporters


def _current_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _without_query(url: object) -> str:
    """A URL or request target without its query, fragment and credentials."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _strip_queries_processor() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class StripQueries(SpanProcessor):
        """Rewrites URL attributes as each span starts, whichever instrumentation set them
        (the aiohttp server instrumentation records the whole request target)."""

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = span.attributes or {}
            for key in _URL_ATTRIBUTES:
                value = attributes.get(key)
                if isinstance(value, str) and ("?" in value or "@" in value or "#" in value):
                    span.set_attribute(key, _without_query(value))
            if attributes.get("url.query"):
                span.set_attribute("url.query", "")

    return StripQueries()


def server_interceptors() -> list[Any]:
    """For grpc.aio.server(interceptors=...): none when tracing is off."""
    if _tracer is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_traced_grpc_filter())]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """For grpc.aio.insecure_channel(interceptors=...): none when tracing is off."""
    if _tracer is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[Any] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        filter_=_traced_grpc_filter()
    )
    return interceptors


def _traced_grpc_filter() -> Any:
    from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_name

    return negate(any_of(*(service_name(name) for name in UNTRACED_GRPC_SERVICES)))


def instrument_engine(engine: Any) -> None:
    """SQL spans for an AsyncEngine's statements (the SQL with placeholders, never values)."""
    if _tracer is None:
        return
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    # The instrumentor's own entry point instruments once per process; a process may have
    # several engines (the ledger has a reader and a writer), so each gets its EngineTracer.
    usage = metrics.get_meter("leadflow.db").create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    tracer = _InTraceOnly(trace.get_tracer("leadflow.db"))
    EngineTracer(tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call]


class _InTraceOnly:
    """A tracer whose spans exist only inside a trace: SQL of a lead, or of an RPC, is traced,
    but a background loop's query (an outbox sweep every second, a scheduler's tick) would
    otherwise make a one-span trace of its own each time."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry import trace

        if not trace.get_current_span().get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracer, name)


def span(name: str, lead_id: str | None = None) -> AbstractContextManager[Any]:
    """A span around work on one lead (a child of the current one, or a new trace)."""
    if _tracer is None:
        return _NO_SPAN
    attributes = {"leadflow.lead_id": lead_id} if lead_id else None
    return _tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]


def current_context() -> object | None:
    """The current trace context, to carry work on to another task; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


@contextmanager
def continued(trace_context: object | None) -> Iterator[None]:
    """Go on, in this task, in a context taken with current_context() in another one."""
    if trace_context is None or _tracer is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(trace_context)  # type: ignore[arg-type]
    try:
        yield
    finally:
        context.detach(token)


@contextmanager
def batch_span(name: str, contexts: Sequence[object | None], **attributes: Any) -> Iterator[None]:
    """A span for one call on behalf of many leads: a child of the first lead's trace (so a
    lead's trace reaches the service the batch goes to) and linked to the others' traces."""
    if _tracer is None:
        yield
        return
    from opentelemetry import trace

    parents: list[Any] = [c for c in contexts if c is not None]
    links = [trace.Link(trace.get_current_span(c).get_span_context()) for c in parents[1:]]
    with _tracer.start_as_current_span(
        name,
        context=parents[0] if parents else None,
        links=links,
        attributes=attributes or None,
    ):
        yield
