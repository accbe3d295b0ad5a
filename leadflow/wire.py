"""Translation between the domain and the shared proto messages (leadflow.common.v1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

import orjson
from google.type import money_pb2

from leadflow.common.v1 import lead_pb2
from leadflow.money import MICROS, NANOS_PER_MICRO, ZERO, cents, to_micros

OUTCOMES = ("success", "failure", "error", "skip", "queued", "unknown")
_TO_ENUM = {name: lead_pb2.Outcome.Value(f"OUTCOME_{name.upper()}") for name in OUTCOMES}
_FROM_ENUM = {value: name for name, value in _TO_ENUM.items()}


# Money on the wire: google.type.Money (units and nanos), exact to the micro.
def to_proto(amount: Decimal, currency: str = "USD") -> money_pb2.Money:
    micros = to_micros(amount)
    units, rest = divmod(abs(micros), MICROS)
    sign = -1 if micros < 0 else 1
    return money_pb2.Money(
        currency_code=currency, units=sign * units, nanos=sign * rest * NANOS_PER_MICRO
    )


def from_proto(money: money_pb2.Money) -> Decimal:
    return cents(Decimal(money.units) + Decimal(money.nanos) / Decimal(1_000_000_000))


def outcome_to_proto(outcome: str) -> lead_pb2.Outcome.ValueType:
    return _TO_ENUM[outcome]


def outcome_from_proto(value: lead_pb2.Outcome.ValueType) -> str:
    return _FROM_ENUM.get(value, "error")


@dataclass(frozen=True)
class LeadData:
    """A parsed lead with its identity: what every service reads."""

    id: str
    flow_id: str
    source_id: str
    fields: dict[str, Any]
    submit_time: datetime

    def to_proto(self) -> lead_pb2.Lead:
        """The wire form, encoded once per lead: the gateway sends it on every call it makes for
        the lead. Requests copy it (`Request(lead=…)`); never mutate the returned message."""
        return self._proto

    @cached_property
    def _proto(self) -> lead_pb2.Lead:
        message = lead_pb2.Lead(id=self.id, flow_id=self.flow_id, source_id=self.source_id)
        message.submit_time.FromDatetime(self.submit_time)
        fields_to_proto(self.fields, message.fields)
        return message

    @classmethod
    def from_proto(cls, message: lead_pb2.Lead) -> LeadData:
        return cls(
            id=message.id,
            flow_id=message.flow_id,
            source_id=message.source_id,
            fields=lead_fields(message),
            submit_time=message.submit_time.ToDatetime(tzinfo=UTC),
        )


# The typed lead's one codec (lead_pb2.Value <-> the parsed lead's plain values: str, bool, int,
# float, Decimal, None, field dicts, dicts and lists). A field dict is leadflow.fields' form:
# {"kind", "raw", "normal", "valid", ...components}.
_FIELD_KEYS = frozenset({"kind", "raw", "normal", "valid"})
_INT64 = 1 << 63


def fields_to_proto(fields: Mapping[str, Any], into: Any) -> None:
    """Encode `fields` into a `repeated Entry` field (`into`) of a message, in order."""
    add = into.add
    for name, value in fields.items():
        entry = add(name=name)
        _to_value(value, entry.value)


def fields_from_proto(entries: Iterable[lead_pb2.Entry]) -> dict[str, Any]:
    return {entry.name: _from_value(entry.value) for entry in entries}


def lead_fields(message: lead_pb2.Lead) -> dict[str, Any]:
    """The lead's parsed fields; a message stored before the typed wire has them as JSON."""
    if not message.fields and message.legacy_fields_json:
        legacy = orjson.loads(message.legacy_fields_json)
        return legacy if isinstance(legacy, dict) else {}
    return fields_from_proto(message.fields)


def _to_value(value: Any, message: lead_pb2.Value) -> None:
    # Most checked first: a lead is mostly field dicts whose components are text.
    if isinstance(value, str):
        message.text = value
    elif isinstance(value, dict):
        if "valid" in value and "normal" in value and isinstance(value.get("kind"), str):
            field_value = message.field
            field_value.kind = value["kind"]
            field_value.raw = value.get("raw") or ""
            field_value.valid = bool(value["valid"])
            _to_value(value["normal"], field_value.normal)
            add = field_value.components.add
            for key, item in value.items():
                if key not in _FIELD_KEYS:
                    _to_value(item, add(name=key).value)
        else:
            message.map.SetInParent()  # an empty object stays an object
            add = message.map.entries.add
            for key, item in value.items():
                _to_value(item, add(name=key).value)
    elif isinstance(value, bool):
        message.flag = value
    elif isinstance(value, int):
        if -_INT64 <= value < _INT64:
            message.integer = value
        else:
            message.decimal = str(value)
    elif isinstance(value, float):
        message.real = value
    elif value is None:
        message.null = True
    elif isinstance(value, Decimal):
        message.decimal = str(value)
    elif isinstance(value, (list, tuple)):
        message.list.SetInParent()  # an empty list stays a list
        add_item = message.list.items.add
        for item in value:
            _to_value(item, add_item())
    else:
        raise TypeError(f"not a lead value: {type(value).__name__}")


def _from_value(message: lead_pb2.Value) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "text":
        return message.text
    if kind == "field":
        field_value = message.field
        result: dict[str, Any] = {
            "kind": field_value.kind,
            "raw": field_value.raw,
            "normal": _from_value(field_value.normal),
            "valid": field_value.valid,
        }
        for entry in field_value.components:
            result[entry.name] = _from_value(entry.value)
        return result
    if kind == "flag":
        return message.flag
    if kind == "integer":
        return message.integer
    if kind == "real":
        return message.real
    if kind == "map":
        return {entry.name: _from_value(entry.value) for entry in message.map.entries}
    if kind == "list":
        return [_from_value(item) for item in message.list.items]
    if kind == "decimal":
        text = message.decimal
        return int(text) if text.lstrip("-").isdigit() else Decimal(text)
    return None  # null, or unset


@dataclass(frozen=True)
class PriceAudit:
    """Why a price is what it is (the pricing audit of SPEC 5.4)."""

    layer: str = "none"
    amount: Decimal = ZERO
    rule_index: int = -1
    service_status: int = 0
    service_latency_ms: int = 0
    service_error: str = ""
    fallback_used: bool = False
    note: str = ""

    def to_proto(self) -> lead_pb2.PriceAudit:
        return lead_pb2.PriceAudit(
            layer=self.layer,
            rule_index=self.rule_index,
            amount=to_proto(self.amount),
            service_status=self.service_status,
            service_latency_ms=self.service_latency_ms,
            service_error=self.service_error,
            fallback_used=self.fallback_used,
            note=self.note,
        )

    @classmethod
    def from_proto(cls, message: lead_pb2.PriceAudit) -> PriceAudit:
        return cls(
            layer=message.layer or "none",
            amount=from_proto(message.amount),
            rule_index=message.rule_index,
            service_status=message.service_status,
            service_latency_ms=message.service_latency_ms,
            service_error=message.service_error,
            fallback_used=message.fallback_used,
            note=message.note,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "amount": self.amount,
            "rule_index": self.rule_index if self.rule_index >= 0 else None,
            "service_status": self.service_status or None,
            "service_latency_ms": self.service_latency_ms
            if self.layer.endswith("service")
            else None,
            "service_error": self.service_error or None,
            "fallback_used": self.fallback_used,
            "note": self.note or None,
        }


@dataclass(frozen=True)
class DeliveryAttempt:
    """One exchange with a buyer as recorded on its recipient event (secrets already masked)."""

    number: int
    request: str
    response: str = ""
    status_code: int = 0
    duration_ms: int = 0
    error: str = ""
    # Values kept from the answer: `cookie` and each `capture` name (SPEC 8.1).
    captured: Mapping[str, str] = field(default_factory=dict, hash=False)

    # Field by field: dataclasses.asdict deep-copies each value and costs several times more,
    # and every delivery and ledger write converts its attempts.
    def to_proto(self) -> lead_pb2.DeliveryAttempt:
        return lead_pb2.DeliveryAttempt(
            number=self.number,
            request=self.request,
            response=self.response,
            status_code=self.status_code,
            duration_ms=self.duration_ms,
            error=self.error,
            captured=self.captured or None,
        )

    @classmethod
    def from_proto(cls, message: lead_pb2.DeliveryAttempt) -> DeliveryAttempt:
        return cls(
            number=message.number,
            request=message.request,
            response=message.response,
            status_code=message.status_code,
            duration_ms=message.duration_ms,
            error=message.error,
            captured=dict(message.captured) if message.captured else {},
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "number": self.number,
            "request": self.request,
            "response": self.response,
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "error": self.error,
        }
        if self.captured:
            # Only when there is something: attempts stored before captures read back the same.
            data["captured"] = dict(self.captured)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryAttempt:
        captured = data.get("captured") or {}
        return cls(
            number=int(data["number"]),
            request=str(data["request"]),
            response=str(data.get("response", "")),
            status_code=int(data.get("status_code", 0)),
            duration_ms=int(data.get("duration_ms", 0)),
            error=str(data.get("error", "")),
            captured={str(k): str(v) for k, v in captured.items()},
        )
