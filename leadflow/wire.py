"""Translation between the domain and the shared proto messages (leadflow.common.v1)."""

from __future__ import annotations

from collections.abc import Mapping
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
        message = lead_pb2.Lead(
            id=self.id,
            flow_id=self.flow_id,
            source_id=self.source_id,
            fields_json=orjson.dumps(self.fields, default=_json_default),
        )
        message.submit_time.FromDatetime(self.submit_time)
        return message

    @classmethod
    def from_proto(cls, message: lead_pb2.Lead) -> LeadData:
        return cls(
            id=message.id,
            flow_id=message.flow_id,
            source_id=message.source_id,
            fields=orjson.loads(message.fields_json) if message.fields_json else {},
            submit_time=message.submit_time.ToDatetime(tzinfo=UTC),
        )


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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
