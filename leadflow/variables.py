"""Variables for rules and templates: the context of one lead, path resolution and display text.

Decisions (beyond SPEC section 4):

- A bare name is read from the context when it is a reserved name (``lead``, ``source``,
  ``flow``, ``buyer``, ``purchase_price``, ``sale_price``, ``submission``, ``bid``) or a key the
  caller put in the context (``extra``); otherwise it means ``lead.<name>``. A lead field that
  shares a reserved name is still reachable as ``lead.<name>``.
- ``hour`` and ``day_of_week`` are aliases of ``submission.hour`` and ``submission.day_of_week``.
- Paths walk dicts and lists (``lead.items.0``); anything missing resolves to None.
- :func:`display` renders a list as its items joined by ``", "`` and a plain mapping as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Final

from leadflow.fields import STANDARD_FIELDS, date_text, is_field

# Their normal value is a timestamp (LeadConduit's record); templates show the calendar date.
_DATE_KINDS = frozenset({"date", "dob"})

__all__ = [
    "ALIASES",
    "RESERVED",
    "Getter",
    "build_context",
    "compile_path",
    "components",
    "display",
    "resolve",
    "variable_type",
]

Getter = Callable[[Mapping[str, object]], object]

RESERVED: Final[frozenset[str]] = frozenset(
    {"lead", "source", "flow", "buyer", "purchase_price", "sale_price", "submission", "bid"}
)
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "hour": ("submission", "hour"),
    "day_of_week": ("submission", "day_of_week"),
}


def build_context(
    lead: Mapping[str, object],
    *,
    flow: Mapping[str, object] | None = None,
    source: Mapping[str, object] | None = None,
    buyer: Mapping[str, object] | None = None,
    purchase_price: object = None,
    sale_price: object = None,
    submission: Mapping[str, object] | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The rule/template context; ``submission`` holds ``timestamp``, ``hour``, ``day_of_week``."""
    context: dict[str, object] = {
        "lead": lead,
        "flow": flow if flow is not None else {},
        "source": source if source is not None else {},
        "buyer": buyer if buyer is not None else {},
        "purchase_price": purchase_price,
        "sale_price": sale_price,
        "submission": submission if submission is not None else {},
    }
    if extra:
        context.update(extra)
    return context


def _step(current: object, segment: str) -> object:
    if isinstance(current, Mapping):
        return current.get(segment)
    if isinstance(current, list) and segment.isdigit():
        index = int(segment)
        return current[index] if index < len(current) else None
    return None


def _walk(current: object, segments: tuple[str, ...]) -> object:
    for segment in segments:
        # dicts are by far the common case; the generic step handles the rest
        current = current.get(segment) if type(current) is dict else _step(current, segment)
        if current is None:
            return None
    return current


def _context_getter(segments: tuple[str, ...]) -> Getter:
    head, rest = segments[0], segments[1:]
    if not rest:
        return lambda context: context.get(head)
    if len(rest) == 1:
        (key,) = rest

        def get_one(context: Mapping[str, object]) -> object:
            value = context.get(head)
            return value.get(key) if type(value) is dict else _step(value, key)

        return get_one
    return lambda context: _walk(context.get(head), rest)


def _bare_getter(segments: tuple[str, ...]) -> Getter:
    head = segments[0]
    if len(segments) == 1:
        # The common case (`state`, `credit_score`) in one call.
        def get_field(context: Mapping[str, object]) -> object:
            if head in context:
                return context[head]
            lead = context.get("lead")
            return lead.get(head) if type(lead) is dict else _step(lead, head)

        return get_field
    in_context = _context_getter(segments)
    in_lead = _context_getter(("lead", *segments))

    def get(context: Mapping[str, object]) -> object:
        return in_context(context) if head in context else in_lead(context)

    return get


@lru_cache(maxsize=4096)
def compile_path(path: str) -> Getter:
    """A fast accessor for ``path``; build it once and call it per lead."""
    segments = tuple(segment.strip() for segment in path.strip().split("."))
    if segments[0] in ALIASES:
        segments = ALIASES[segments[0]] + segments[1:]
    if segments[0] in RESERVED:
        return _context_getter(segments)
    return _bare_getter(segments)


def resolve(path: str, context: Mapping[str, object]) -> object:
    """The value at ``path`` (a field dict for a typed field), or None when missing."""
    return compile_path(path)(context)


def display(value: object) -> str:
    """The text a template or a comparison uses for a value."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict) and is_field(value):
        if value["kind"] in _DATE_KINDS:
            return date_text(value)
        return display(value["normal"])
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        text = format(value, "f")
        return "0" if text == "-0" else text
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return display(Decimal(repr(value)))
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return ", ".join(display(item) for item in value)
    if isinstance(value, Mapping):
        return json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)
    return str(value)


def _plain(value: object) -> object:
    """A JSON-ready copy: fields become their normal values."""
    if isinstance(value, dict) and is_field(value):
        if value["kind"] in _DATE_KINDS:
            return date_text(value)
        return _plain(value["normal"])
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    return display(value)


_COMPONENT_TYPES: Final[dict[str, dict[str, str]]] = {
    "phone": {"is_tollfree": "boolean", "country_calling_code": "number"},
    "email": {"is_free": "boolean", "is_disposable": "boolean"},
    "number": {"number": "number"},
    "range": {"min": "number", "max": "number", "avg": "number", "mid": "number"},
    "date": {"year": "number"},
    "dob": {"year": "number", "age": "number"},
    "ip": {"is_ipv4": "boolean", "is_private": "boolean", "version": "number"},
    "trustedform_url": {
        "is_web": "boolean",
        "is_mobile": "boolean",
        "is_facebook": "boolean",
        "is_masked": "boolean",
        "age": "number",
    },
    "ssn": {"masked": "boolean"},
    "credential": {"masked": "boolean"},
}
_STRING_COMPONENTS: Final[dict[str, frozenset[str]]] = {
    "string": frozenset(),
    "phone": frozenset(
        {"area", "exchange", "line", "number", "extension", "country_code", "region", "type"}
    ),
    "email": frozenset({"user", "domain", "host", "tld", "public_suffix", "registered_domain"}),
    "postal_code": frozenset(
        {"code", "zip", "four", "country_code", "fsa", "ldu", "district", "outcode", "incode"}
    ),
    "state": frozenset({"name"}),
    "gender": frozenset({"abbr"}),
    "url": frozenset({"protocol", "host", "port", "path", "query", "hash"}),
    "trustedform_url": frozenset({"host", "cert_id", "path", "type"}),
    "city": frozenset(),
    "first_name": frozenset(),
    "last_name": frozenset(),
    "street": frozenset({"number", "name"}),
    "ssn": frozenset({"first_three", "middle_two", "last_four"}),
    "time": frozenset(),
    "credential": frozenset(),
}


def components(field_type: str) -> frozenset[str]:
    """Every component a rule may read on a field of this type (`valid`, `raw`, `normal` too)."""
    return frozenset(
        {"valid", "raw", "normal"}
        | set(_COMPONENT_TYPES.get(field_type, {}))
        | _STRING_COMPONENTS.get(field_type, frozenset())
    )


_CONTEXT_TYPES: Final[dict[str, str]] = {
    "purchase_price": "number",
    "sale_price": "number",
    "bid": "number",
    "submission.hour": "number",
    "submission.day_of_week": "string",
    "submission.timestamp": "string",
}


def variable_type(path: str, custom_types: Mapping[str, str] | None = None) -> str | None:
    """The field type a rule sees at ``path`` (for checking operators), or None if unknown.

    Lead fields have their declared or standard type (unknown lead fields parse as string);
    components have their own (``lead.phone_1.valid`` is boolean, ``lead.dob.age`` number);
    ``hour``, prices and ``bid`` are numbers; ``source.*``, ``flow.*``, ``buyer.*`` strings.
    """
    segments = tuple(segment.strip() for segment in path.strip().split("."))
    if segments[0] in ALIASES:
        segments = ALIASES[segments[0]] + segments[1:]
    dotted = ".".join(segments)
    if dotted in _CONTEXT_TYPES:
        return _CONTEXT_TYPES[dotted]
    if segments[0] in ("source", "flow", "buyer") and len(segments) == 2:
        return "string"
    if segments[0] == "lead":
        segments = segments[1:]
    elif segments[0] in RESERVED:
        return None
    if not segments:
        return None
    custom = custom_types or {}
    # Nested custom fields are declared by their dotted name ("a.b": number).
    for split in range(len(segments), 0, -1):
        name = ".".join(segments[:split])
        field_type = custom.get(name) or (STANDARD_FIELDS.get(name) if split == 1 else None)
        if field_type is None:
            continue
        component = segments[split:]
        if not component:
            return field_type
        if len(component) > 1:
            return None
        if component[0] == "valid":
            return "boolean"
        if component[0] in ("raw", "normal"):
            return "string"
        if component[0] in _COMPONENT_TYPES.get(field_type, {}):
            return _COMPONENT_TYPES[field_type][component[0]]
        if component[0] in _STRING_COMPONENTS.get(field_type, frozenset()):
            return "string"
        return None
    # An undeclared field parses as string; ``x.valid`` may be a nested key, so stay unsure.
    return None if len(segments) > 1 and segments[-1] == "valid" else "string"
