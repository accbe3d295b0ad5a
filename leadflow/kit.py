"""The service kit: one way to build, run and stop every gRPC service (health, reflection,
go-grpc-prometheus metrics on both sides, graceful shutdown on SIGTERM, logging and tracing)."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import inspect
import logging
import os
import signal
import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from time import perf_counter
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram, start_http_server

from leadflow import logs, tracing
from leadflow.config import Config, ConfigError, load_config
from leadflow.errors import InvalidField, RuleRefused

log = logging.getLogger(__name__)

SERVER_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
SERVER_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Server RPC latency.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLIENT_STARTED = Counter(
    "grpc_client_started_total",
    "RPCs started by clients.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "RPCs completed by clients, by code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
CLIENT_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Client RPC latency.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
_SERVER_METRICS = (SERVER_STARTED, SERVER_HANDLED, SERVER_SECONDS)
_CLIENT_METRICS = (CLIENT_STARTED, CLIENT_HANDLED, CLIENT_SECONDS)
# Beyond ~1000 concurrent streams on one channel gRPC core starts cancelling calls.
MAX_IN_FLIGHT_PER_CHANNEL = 500
# A lead with many recipients carries every attempt's request and response text: more than
# gRPC's default 4 MiB is possible, so both sides accept up to this.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_MESSAGE_LIMITS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


# The status each kind of error means (ARCHITECTURE "Status codes"); a service adds its own
# (a conflict, an unauthenticated caller) with `grpc_errors(extra)`. An error's class is looked
# up along its MRO, so the most specific listed class wins.
STANDARD_ERROR_CODES: Mapping[type[BaseException], grpc.StatusCode | None] = {
    LookupError: grpc.StatusCode.NOT_FOUND,
    # A missing key or index is a bug of ours, not an unknown id: it stays UNKNOWN and logged.
    KeyError: None,
    IndexError: None,
    ValueError: grpc.StatusCode.INVALID_ARGUMENT,
    RuleRefused: grpc.StatusCode.FAILED_PRECONDITION,
}

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def error_code(
    exc: BaseException, codes: Mapping[type[BaseException], grpc.StatusCode | None]
) -> grpc.StatusCode | None:
    """The status `exc` answers with under `codes`, or None when it is no caller's error."""
    for cls in type(exc).__mro__:
        if cls in codes:
            return codes[cls]
    return None


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, exc: BaseException
) -> NoReturn:
    """End the call with `code` and the error's message; an InvalidField also names its field
    in a google.rpc.BadRequest, for clients that read details."""
    log.info("refused (%s): %s", code.name, exc)
    if not isinstance(exc, InvalidField):
        await context.abort(code, str(exc))
        raise AssertionError("abort returned")  # it raises; this tells the type checker so
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=exc.field, description=exc.description
    )
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


def grpc_errors(
    extra: Mapping[type[BaseException], grpc.StatusCode | None] | None = None,
) -> Callable[[_Method], _Method]:
    """Decorate a unary servicer method `(self, request, context)`: an error it raises that
    STANDARD_ERROR_CODES or `extra` lists ends the call with that status and its message;
    any other error propagates (UNKNOWN, logged by grpc)."""
    codes = {**STANDARD_ERROR_CODES, **(extra or {})}

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        async def call(self: Any, request: Any, context: Any) -> Any:
            try:
                return await method(self, request, context)
            except Exception as exc:
                code = error_code(exc, codes)
                if code is None:
                    raise
                await abort(context, code, exc)

        return cast("_Method", call)

    return decorate


# go-grpc-prometheus labels codes with Go's names (codes.Code.String()), so dashboards and alerts
# written for Go services read ours too.
GO_CODE_NAMES = {
    code: "OK"
    if code is grpc.StatusCode.OK
    else "Canceled"
    if code is grpc.StatusCode.CANCELLED
    else code.name.title().replace("_", "")
    for code in grpc.StatusCode
}


def _code_label(code: object) -> str:
    return GO_CODE_NAMES.get(code, "Unknown") if isinstance(code, grpc.StatusCode) else "Unknown"


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


class _MethodMetrics:
    """One unary method's metric children, looked up once: `labels()` hashes its values and
    takes a lock on every call."""

    def __init__(
        self,
        metrics: tuple[Counter, Counter, Histogram],
        service: str,
        method: str,
        kind: str = "unary",
    ) -> None:
        started, self._handled, seconds = metrics
        self._kind = kind
        self._started = started.labels(kind, service, method)
        self._seconds = seconds.labels(kind, service, method)
        self._service = service
        self._method = method
        self._by_code: dict[str, Any] = {}

    def start(self) -> None:
        self._started.inc()

    def finish(self, code: object, seconds: float) -> None:
        label = _code_label(code)
        handled = self._by_code.get(label)
        if handled is None:
            handled = self._by_code[label] = self._handled.labels(
                self._kind, self._service, self._method, label
            )
        handled.inc()
        self._seconds.observe(seconds)


def lead_id_reader(descriptor: Any) -> Callable[[Any], str] | None:
    """How to read the lead a request is about: its `lead.id`, or its `lead_id`; None for a
    request about no one lead (a batch, a report)."""
    fields = descriptor.fields_by_name
    lead = fields.get("lead")
    if lead is not None and lead.message_type and "id" in lead.message_type.fields_by_name:
        return lambda request: request.lead.id
    lead_id = fields.get("lead_id")
    if lead_id is not None and lead_id.type == lead_id.TYPE_STRING:
        return lambda request: request.lead_id
    return None


_UNREAD: Any = object()


def _observed(
    handler: grpc.RpcMethodHandler[Any, Any], service: str, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with grpc_server_* metrics (go-grpc-prometheus names) when it is unary or
    bidirectional streaming, and the request's lead (if it is about one) in the log context of
    the call."""
    if handler.stream_stream is not None:
        # A stream handler that is an async generator (reflection's) is served as it is: only
        # a coroutine reading and writing through its context can be awaited whole.
        if inspect.iscoroutinefunction(handler.stream_stream):
            return _observed_stream(handler, service, method)
        return handler
    if handler.unary_unary is None:
        return handler
    inner: Any = handler.unary_unary  # an async callable on an aio server
    metrics = _MethodMetrics(_SERVER_METRICS, service, method)
    read_lead: Any = _UNREAD  # found on the first request: every request of a method is alike

    async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        nonlocal read_lead
        metrics.start()
        start = perf_counter()
        code = grpc.StatusCode.UNKNOWN
        if read_lead is _UNREAD:
            descriptor = getattr(request, "DESCRIPTOR", None)  # not a message: raw bytes, say
            read_lead = lead_id_reader(descriptor) if descriptor is not None else None
        # Each call runs in a task of its own, so the lead cannot leak into another call.
        if read_lead is not None and (lead_id := read_lead(request)):
            logs.LEAD_ID.set(lead_id)
        try:
            response = await inner(request, context)
            code = context.code() or grpc.StatusCode.OK
            return response
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics.finish(code, perf_counter() - start)

    return grpc.unary_unary_rpc_method_handler(
        observed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _observed_stream(
    handler: grpc.RpcMethodHandler[Any, Any], service: str, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A bidirectional stream counted as one call when it ends (the handler reads and writes
    with `context.read()` and `context.write()`)."""
    inner: Any = handler.stream_stream
    metrics = _MethodMetrics(_SERVER_METRICS, service, method, "bidi_stream")

    # An async generator that yields nothing (the handler writes through its context): with
    # tracing on, OpenTelemetry's server interceptor iterates every response-streaming handler
    # with `async for`, and a coroutine there fails every call (TypeError).
    async def observed(
        requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        metrics.start()
        start = perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            await inner(requests, context)
            code = context.code() or grpc.StatusCode.OK
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics.finish(code, perf_counter() - start)
        return
        yield  # pragma: no cover - unreachable: makes this function an async generator

    return grpc.stream_stream_rpc_method_handler(
        observed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _ObservedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose unary handlers carry the metrics (wrapped once per handler)."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:  # not ours; never cached, or unknown names would grow the cache
            return None
        full_method = handler_call_details.method
        cached = self._wrapped.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _observed(handler, *_split(full_method))
        self._wrapped[full_method] = (handler, wrapped)
        return wrapped


class _ObservedServer(grpc.aio.Server):
    """The server as registrars see it: every unary handler gets the metrics when it is added.

    Cheaper than a server interceptor, which on every call runs a chain of coroutines to find
    the handler and builds a new handler object around it (about 10% of a small call's CPU).
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            [_ObservedGenericHandler(handler) for handler in generic_rpc_handlers]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                method: _observed(handler, service_name, method)
                for method, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    # The signature is grpc.aio.Server's.
    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        return await self._server.wait_for_termination(timeout)


class ClientMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """grpc_client_* metrics, and a bound on in-flight calls per channel."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT_PER_CHANNEL) -> None:
        self._slots = asyncio.Semaphore(max_in_flight)
        self._metrics: dict[str | bytes, _MethodMetrics] = {}

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Any], Awaitable[grpc.aio.UnaryUnaryCall[Any, Any]]
        ],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metrics = self._metrics.get(details.method)
        if metrics is None:
            path = details.method
            metrics = self._metrics[path] = _MethodMetrics(
                _CLIENT_METRICS, *_split(path.decode() if isinstance(path, bytes) else path)
            )
        metrics.start()
        start = perf_counter()
        async with self._slots:
            call = await continuation(details, request)
            try:
                await call
            finally:
                metrics.finish(await call.code(), perf_counter() - start)
        return call


def channel(target: str) -> grpc.aio.Channel:
    """One channel per dependency per process, with client metrics."""
    return grpc.aio.insecure_channel(
        target,
        # Tracing's first, so that its span (and the context it sends) covers the whole call.
        interceptors=[*tracing.client_interceptors(), ClientMetricsInterceptor()],
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),
            # A restarted peer is reached within seconds, not after gRPC's default 2-minute cap.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
            # Every address the name resolves to gets calls (a headless Kubernetes Service
            # lists each ready pod), not only the first one connected.
            ("grpc.lb_policy_name", "round_robin"),
            *_MESSAGE_LIMITS,
        ],
    )


Registrar = Callable[[grpc.aio.Server], None]


async def start_server(
    registrars: Sequence[Registrar], service_names: Sequence[str], address: str
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build, bind and start a server with health and reflection; returns the bound port."""
    server = grpc.aio.server(
        interceptors=tracing.server_interceptors() or None,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", 1000),
            # Clients reconnect (and resolve the name again) every minute or so, so pods added
            # by scaling out get calls; calls in flight on the old connection finish.
            ("grpc.max_connection_age_ms", 60_000),
            *_MESSAGE_LIMITS,
        ],
    )
    observed = _ObservedServer(server)
    for register in registrars:
        register(observed)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, observed)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], observed
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {address} (in use or not available)")
    await server.start()
    for name in (*service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


async def start_service(
    add_servicer: Callable[[Any, grpc.aio.Server], None],
    servicer: object,
    service_name: str,
    address: str,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """start_server for the common case: one servicer, added by its generated add_* function."""
    return await start_server(
        [lambda server: add_servicer(servicer, server)], [service_name], address
    )


def close_after_stop(
    server: grpc.aio.Server, close: Callable[[], Awaitable[None]]
) -> asyncio.Task[None]:
    """Release what a server owns (an HTTP session, say) once it has stopped; keep the task."""

    async def wait_then_close() -> None:
        await server.wait_for_termination()
        await close()

    return asyncio.create_task(wait_then_close())


async def stop_server(
    server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, grace: float = 10.0
) -> None:
    """NOT_SERVING first so balancers stop sending, then finish in-flight calls."""
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace)


def freeze_startup_heap() -> None:
    """Move what startup built (configuration, ZIP and phone data, proto descriptors: about
    90,000 objects in the gateway) out of the garbage collector's sight. It lives as long as the
    process, yet every full collection walked it: ~40 ms paused on the event loop each time,
    which under load landed on whatever leads were in flight (the p99)."""
    gc.collect()
    gc.freeze()


async def run_until_terminated(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace: float = 10.0,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight calls (grace %.0fs)", grace)
    await stop_server(server, health_servicer, grace)
    if on_stop is not None:
        await on_stop()


class SettingsError(ValueError):
    """An environment variable a service cannot use; main() refuses to start (exit 2)."""


def env_number(name: str, default: float, minimum: float, maximum: float) -> float:
    """A number from the environment within [minimum, maximum], else SettingsError naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:  # NaN fails too
        raise SettingsError(
            f"{name} must be a number from {minimum:g} to {maximum:g}, not {text!r}"
        )
    return value


def env_int(name: str, default: int, minimum: int = 0, maximum: int = 65535) -> int:
    """An integer from the environment (a port by default), else SettingsError naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be an integer from {minimum} to {maximum}, not {text!r}")
    return value


def _database_url() -> str | None:
    """LEADFLOW_DATABASE_URL, refused at start when it is not one the services can use."""
    text = os.environ.get("LEADFLOW_DATABASE_URL") or None
    if text is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except ArgumentError:
        url = None
    if url is None or url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        # Never the URL itself in the message: it may hold a password.
        raise SettingsError(
            "LEADFLOW_DATABASE_URL must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL"
        )
    return text


def run_main(main: Callable[[], Coroutine[Any, Any, None]], service: str) -> None:
    """`python -m <service>`: run main(); a bad configuration or environment is one line on
    stderr and exit code 2 (as a supervisor or Kubernetes shows it), never a traceback."""
    import uvloop

    try:
        uvloop.run(main())
    except ConfigError as exc:
        path = os.environ.get("LEADFLOW_CONFIG", "leadflow.yaml")
        count = len(exc.problems)
        listed = "; ".join(" ".join(str(problem).split()) for problem in exc.problems)
        print(
            f"{service}: invalid configuration {path} ({count} problem{'s' * (count != 1)}, "
            f"`leadflow check {path}` shows where): {listed}",
            file=sys.stderr,
        )
        sys.exit(2)
    except SettingsError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        print(f"{service}: {exc.strerror} (LEADFLOW_HOST and the port settings)", file=sys.stderr)
        sys.exit(2)


@dataclass(frozen=True)
class ServiceSettings:
    """What every service reads from its environment, once, in main()."""

    config_path: str
    data_dir: str
    database_url: str | None
    host: str
    port: int
    metrics_port: int | None

    @classmethod
    def from_env(cls, default_port: int, default_metrics_port: int) -> ServiceSettings:
        metrics = env_int("LEADFLOW_METRICS_PORT", default_metrics_port)
        return cls(
            config_path=os.environ.get("LEADFLOW_CONFIG", "leadflow.yaml"),
            data_dir=os.environ.get("LEADFLOW_DATA_DIR", "data"),
            database_url=_database_url(),
            host=os.environ.get("LEADFLOW_HOST", "0.0.0.0"),
            port=env_int("LEADFLOW_GRPC_PORT", default_port),
            metrics_port=metrics or None,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def bootstrap(service: str) -> None:
    """First thing in a service's main(): logging (LEADFLOW_LOG_FORMAT, LEADFLOW_LOG_LEVEL) and,
    when the OTEL_* variables ask for it, tracing, under `service` (its directory name). A bad
    setting is a SettingsError (one line, exit 2)."""
    problem = logs.settings_problem()
    if problem:
        raise SettingsError(problem)
    logs.configure(service)
    # Alembic narrates every upgrade step at INFO; a starting service says only what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if tracing.setup(service):
        log.info("tracing on: spans of %s are exported", service)


async def run_config_service(
    service: str,
    settings: ServiceSettings,
    create_server: Callable[
        [str, Config], Awaitable[tuple[grpc.aio.Server, int, health.aio.HealthServicer]]
    ],
) -> None:
    """main() of a service that needs only the configuration: serve until SIGTERM."""
    bootstrap(service)
    config = load_config(settings.config_path)
    serve_metrics(settings.metrics_port)
    server, _, health_servicer = await create_server(settings.address, config)
    await run_until_terminated(server, health_servicer)


def serve_metrics(port: int | None) -> None:
    """Expose this process's Prometheus registry over HTTP (a daemon thread)."""
    if port is not None:
        start_http_server(port, addr="0.0.0.0")
