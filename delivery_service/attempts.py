"""Durable HTTP attempts (SPEC 8.1): what recovery needs to know of a delivery whose caller may
never have heard its fate, and the rules it follows. Pure: no gRPC, no SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from leadflow.config import Buyer, HttpDelivery
from leadflow.wire import DeliveryAttempt

SENT = "sent"
ANSWERED = "answered"
# After its answer is recorded, a delivery's caller normally has it within milliseconds and the
# row is deleted; one still there after this long was cut off (or its caller gave up).
ANSWER_GRACE = timedelta(seconds=2)
# Beyond the longest a delivery can take: the answer is being written, the clocks differ.
SENT_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True)
class SentAttempt:
    """Written before the request leaves."""

    event_id: str
    buyer_id: str
    lead_id: str
    request: bytes  # the serialised DeliverLeadRequest
    send_time: datetime
    # When, with no answer recorded, the delivery is surely over (its process died).
    orphan_time: datetime


@dataclass(frozen=True)
class Answer:
    """What the buyer answered, recorded before it is returned to the caller."""

    event_id: str
    outcome: str
    reason: str
    price: Decimal | None
    attempts: tuple[DeliveryAttempt, ...]
    answer_time: datetime


@dataclass(frozen=True)
class HttpAttempt:
    """A stored attempt that recovery looks at."""

    event_id: str
    buyer_id: str
    lead_id: str
    request: bytes
    state: str
    send_time: datetime
    answer: Answer | None = None
    tries: int = 0
    attempts: tuple[DeliveryAttempt, ...] = field(default_factory=tuple)


def longest_delivery(delivery: HttpDelivery) -> timedelta:
    """The most one delivery can take: every attempt's timeout and the backoffs between."""
    retry = delivery.retry
    attempts = retry.attempts if retry is not None else 1
    backoff_ms = retry.max_backoff_ms * (attempts - 1) if retry is not None else 0
    return timedelta(milliseconds=delivery.timeout_ms * attempts + backoff_ms)


def orphan_time(buyer: Buyer, send_time: datetime) -> datetime:
    assert isinstance(buyer.delivery, HttpDelivery)
    return send_time + longest_delivery(buyer.delivery) + SENT_MARGIN


def resends(buyer: Buyer | None) -> bool:
    """A buyer that de-duplicates on webhook-id gets an unanswered delivery again."""
    return (
        buyer is not None
        and isinstance(buyer.delivery, HttpDelivery)
        and buyer.delivery.retry is not None
        and buyer.delivery.retry.idempotent
    )
