"""The delivery service's tables: the durable batch queue, its batches, schedules and outcomes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from leadflow import db

_ID = String(128)


class Base(MappedAsDataclass, DeclarativeBase):
    metadata = db.metadata("delivery")


class QueuedLeadRow(Base):
    """A lead allocated to a batch buyer, from `queued` until its file is delivered.

    Keyed by the recipient event id, so a retried DeliverLead queues the lead once. `batch_id`
    is set while a file carrying it is being sent and stays once it is delivered; a failed file
    clears it again, which is how undelivered leads roll into the next file.
    """

    __tablename__ = "queued_leads"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'sending', 'delivered', 'closed')", name="state"),
        Index("ix_queued_leads_buyer_state", "buyer_id", "state", "seq"),
    )

    event_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    buyer_id: Mapped[str] = mapped_column(_ID)
    lead_id: Mapped[str] = mapped_column(_ID)
    # The serialised leadflow.common.v1.Lead: the file is built from exactly what was allocated.
    lead_proto: Mapped[bytes] = mapped_column(LargeBinary)
    sale_price_micros: Mapped[int] = mapped_column(BigInteger)
    purchase_price_micros: Mapped[int | None] = mapped_column(BigInteger)
    queued_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    # Queue order: the microsecond clock of the replica that queued it, then the event id.
    seq: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    batch_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    complete_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime(), default=None)


class BatchRow(Base):
    """One file or mail: claimed by a replica under a lease, then delivered or failed."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint("status IN ('sending', 'delivered', 'failed')", name="status"),
        CheckConstraint("kind IN ('scheduled', 'manual', 'retry', 'resend')", name="kind"),
        Index("ix_batches_buyer_created", "buyer_id", "create_time"),
        Index("ix_batches_status_lease", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    buyer_id: Mapped[str] = mapped_column(_ID)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    lead_count: Mapped[int] = mapped_column(Integer)
    # The name rendered from the buyer's template when the batch was made (the name it tries).
    file_name: Mapped[str] = mapped_column(Text)
    lease_owner: Mapped[str] = mapped_column(String(128))
    lease_until: Mapped[datetime] = mapped_column(db.UtcDateTime())
    # Unique: a retried DeliverPending or ResendBatch finds its first batch.
    request_id: Mapped[str | None] = mapped_column(String(128), default=None, unique=True)
    resend_of: Mapped[str | None] = mapped_column(String(64), default=None)
    # The name the file really got on the server (a taken name gets a -2, -3… suffix).
    remote_name: Mapped[str | None] = mapped_column(Text, default=None)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    complete_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime(), default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default_factory=list)


class BuyerScheduleRow(Base):
    """A batch buyer's next cron run and failure backoff; `version` makes claims atomic."""

    __tablename__ = "buyer_schedules"

    buyer_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    schedule: Mapped[str] = mapped_column(Text)
    time_zone: Mapped[str] = mapped_column(String(64))
    next_run_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime())
    retry_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime(), default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class OutcomeReportRow(Base):
    """A queued lead's final outcome, kept until the ledger has taken it (an outbox)."""

    __tablename__ = "outcome_reports"
    __table_args__ = (
        CheckConstraint("outcome IN ('success', 'failure', 'error')", name="outcome"),
        Index("ix_outcome_reports_due", "reported_time", "next_try_time"),
    )

    event_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    buyer_id: Mapped[str] = mapped_column(_ID)
    batch_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    sale_price_micros: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    complete_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    next_try_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    tries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    reported_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime(), default=None)


class HttpAttemptRow(Base):
    """A real-time HTTP delivery, written before its request leaves (SPEC 8.1) and deleted once
    its answer reached the caller. A row that outlives that is a delivery whose caller may not
    know its fate: `sent` (no answer recorded: the process died, or the buyer is still being
    awaited) or `answered` (the answer was recorded but perhaps never returned). Recovery
    resends the first for an idempotent buyer and reports the second to the ledger."""

    __tablename__ = "http_attempts"
    __table_args__ = (
        CheckConstraint("state IN ('sent', 'answered')", name="state"),
        Index("ix_http_attempts_due", "next_try_time"),
    )

    # The recipient event id: the request's webhook-id.
    event_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    buyer_id: Mapped[str] = mapped_column(_ID)
    lead_id: Mapped[str] = mapped_column(_ID)
    # The serialised DeliverLeadRequest: a resend is built from exactly what was offered.
    request: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    send_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    # When recovery may look at the row: past the longest the delivery can take, or past a
    # grace after the answer, or a retry's backoff while it is being reported.
    next_try_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    answer_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime(), default=None)
    outcome: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    price_micros: Mapped[int | None] = mapped_column(BigInteger, default=None)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default_factory=list)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
