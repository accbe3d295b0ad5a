"""The batch queue's domain: batches, schedules (croniter, in the buyer's zone) and backoff."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from croniter import croniter

from leadflow.config import Buyer, EmailDelivery, SftpDelivery
from leadflow.wire import DeliveryAttempt

REALTIME = "realtime"


def batch_spec(buyer: Buyer) -> SftpDelivery | EmailDelivery | None:
    """The buyer's delivery when it sends files or mails (real time or batched), else None."""
    delivery = buyer.delivery
    return delivery if isinstance(delivery, SftpDelivery | EmailDelivery) else None


def is_batch_buyer(buyer: Buyer) -> bool:
    """Whether leads for this buyer wait in the queue for a scheduled file."""
    spec = batch_spec(buyer)
    return spec is not None and spec.schedule != REALTIME


def next_run(schedule: str, time_zone: str, after: datetime) -> datetime:
    """The first time after `after` the cron schedule fires, read in the zone (DST included)."""
    local = after.astimezone(ZoneInfo(time_zone))
    fired: datetime = croniter(schedule, local).get_next(datetime)
    return fired.astimezone(after.tzinfo)


@dataclass(frozen=True)
class Backoff:
    """Waits between failed files: base, doubled per consecutive failure, capped."""

    base_seconds: float = 30.0
    max_seconds: float = 900.0

    def delay(self, failures: int) -> timedelta:
        seconds = self.base_seconds * 2 ** max(0, failures - 1)
        return timedelta(seconds=min(seconds, self.max_seconds))


@dataclass(frozen=True)
class Batch:
    """A file or mail as the queue records it."""

    id: str
    buyer_id: str
    kind: str
    status: str
    create_time: datetime
    lead_count: int
    file_name: str
    remote_name: str | None = None
    size_bytes: int = 0
    tries: int = 0
    complete_time: datetime | None = None
    reason: str = ""
    resend_of: str | None = None
    attempts: tuple[DeliveryAttempt, ...] = ()
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScheduleState:
    """A batch buyer's schedule row: next cron run, failure backoff, claim version."""

    buyer_id: str
    schedule: str
    time_zone: str
    next_run_time: datetime | None
    retry_time: datetime | None = None
    failures: int = 0
    version: int = 0


@dataclass(frozen=True)
class QueueState:
    """What GET /batches shows about a buyer's queue."""

    buyer_id: str
    schedule: str
    pending: int
    next_run_time: datetime | None = None
    retry_time: datetime | None = None
    failures: int = 0


@dataclass(frozen=True)
class OutcomeReport:
    """A queued lead's final outcome, waiting for the ledger to take it."""

    event_id: str
    buyer_id: str
    batch_id: str
    outcome: str
    reason: str
    sale_price: Decimal
    complete_time: datetime
    attempts: tuple[DeliveryAttempt, ...] = field(default_factory=tuple)
    tries: int = 0
