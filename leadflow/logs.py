"""Logging for every leadflow process (SPEC section 10): text by default, one JSON object per line
with `LEADFLOW_LOG_FORMAT=json`; each line names its service, and the lead and trace it is about.

The lead comes from a context variable set where a lead is handled (`lead_scope`); explicit
`extra={"lead_id": ...}` wins, for a line about one lead of a batch. Trace and span ids come from
leadflow.tracing, which registers its getter only when tracing is on: with tracing off, logging
imports nothing of OpenTelemetry.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

LEAD_ID: ContextVar[str | None] = ContextVar("leadflow_lead_id", default=None)

TraceIds = Callable[[], tuple[str, str] | None]
_trace_ids: TraceIds | None = None


@contextmanager
def lead_scope(lead_id: str) -> Iterator[None]:
    """Lines logged inside carry `lead_id` (JSON format). Reset on exit: an aiohttp connection
    serves its keep-alive requests in one task, so a lead must not leak into the next request."""
    token = LEAD_ID.set(lead_id)
    try:
        yield
    finally:
        LEAD_ID.reset(token)


def set_trace_ids(getter: TraceIds | None) -> None:
    """leadflow.tracing's hook: the current span's (trace_id, span_id) in hex, or None."""
    global _trace_ids
    _trace_ids = getter


class ContextFilter(logging.Filter):
    """Adds `service`, and `lead_id`, `trace_id`, `span_id` where they apply, to every record
    that reaches the handler (a handler's filter sees every logger's records, a logger's only
    its own)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not hasattr(record, "lead_id"):
            lead_id = LEAD_ID.get()
            if lead_id is not None:
                record.lead_id = lead_id
        if _trace_ids is not None and not hasattr(record, "trace_id"):
            ids = _trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


def json_formatter() -> logging.Formatter:
    """`time` (ISO 8601, UTC), `level`, `logger`, `message`, then the record's extras
    (`service`, `lead_id`, `trace_id`, `span_id`) and `exc_info` as one string."""
    from pythonjsonlogger.orjson import OrjsonFormatter

    return OrjsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def make_handler(service: str, fmt: str, stream: TextIO) -> logging.Handler:
    """A handler writing `service`'s records to `stream` in `fmt` (text or json)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(service))
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure(service: str, fmt: str = "text", level: str = "INFO") -> None:
    """The process's one handler on stderr, in `fmt` (text or json), at `level` (as LogSettings
    read them from LEADFLOW_LOG_FORMAT and LEADFLOW_LOG_LEVEL)."""
    handler = make_handler(service, fmt, sys.stderr)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Warnings and a crash's traceback go through the handler too, so that in JSON every line
    # a service writes is one object.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("leadflow").critical("uncaught exception", exc_info=(kind, value, traceback))
