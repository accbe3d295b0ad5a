"""The ledger's tables: leads with their events, delivery outcomes, feedback and the journal.
Every row is posted once and never changed: triggers (made by the migrations) make the database
itself refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL), so a correction is always a new row;
the services' PostgreSQL role may only read and add rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from leadflow import db

# Attempts and price audits are JSON columns, not child tables: each is written once with its
# event, always read whole with it, and never filtered or summed (reports sum the events' own
# BigInteger money columns), so child tables would only add rows and joins. The audit's amount is
# kept as integer micros inside the JSON all the same. JSON, not JSONB, on PostgreSQL: it keeps
# the text as sent and accepts the \u0000 escape that a buyer's response may carry.

_ID = String(128)


class Base(MappedAsDataclass, DeclarativeBase):
    metadata = db.metadata("ledger")


class LeadRow(Base):
    """One row per lead; its primary key is what makes RecordLead idempotent."""

    __tablename__ = "leads"
    # The vendors report counts leads per source over a submission-time window: index-only.
    __table_args__ = (Index("ix_leads_submit_time_source", "submit_time", "source_id"),)

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    flow_id: Mapped[str] = mapped_column(_ID)
    source_id: Mapped[str] = mapped_column(_ID)
    # Text, not JSON: the gateway's JSON is kept byte for byte so numbers keep their decimal text.
    fields_json: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    submit_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    record_time: Mapped[datetime] = mapped_column(db.UtcDateTime())


class SourceEventRow(Base):
    """The lead's one source event, keyed by the lead."""

    __tablename__ = "source_events"
    __table_args__ = (
        CheckConstraint("outcome IN ('success', 'failure', 'error')", name="outcome"),
        CheckConstraint(
            "purchase_price_micros >= 0 AND price_paid_micros >= 0 AND revenue_micros >= 0",
            name="money",
        ),
    )

    lead_id: Mapped[str] = mapped_column(_ID, ForeignKey(LeadRow.id), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    purchase_price_micros: Mapped[int] = mapped_column(BigInteger)
    price_paid_micros: Mapped[int] = mapped_column(BigInteger)
    revenue_micros: Mapped[int] = mapped_column(BigInteger)
    price_audit: Mapped[dict[str, Any]] = mapped_column(JSON)
    duration_ms: Mapped[int] = mapped_column(BigInteger)


class RecipientEventRow(Base):
    """One row per buyer step; `position` keeps the order the gateway recorded them in."""

    __tablename__ = "recipient_events"
    __table_args__ = (
        UniqueConstraint("lead_id", "position"),
        CheckConstraint(
            "outcome IN ('success', 'failure', 'error', 'skip', 'queued', 'unknown')",
            name="outcome",
        ),
        CheckConstraint("sale_price_micros >= 0", name="money"),
    )

    # Globally unique: feedback and each sale's postings name the recipient event by id (SPEC 9).
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    lead_id: Mapped[str] = mapped_column(_ID, ForeignKey(LeadRow.id))
    position: Mapped[int] = mapped_column(Integer)
    stage_index: Mapped[int] = mapped_column(Integer)
    stage_name: Mapped[str] = mapped_column(Text)
    strategy: Mapped[str] = mapped_column(Text)
    step_index: Mapped[int] = mapped_column(Integer)
    buyer_id: Mapped[str] = mapped_column(_ID, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    sale_price_micros: Mapped[int] = mapped_column(BigInteger)
    price_audit: Mapped[dict[str, Any]] = mapped_column(JSON)
    reference: Mapped[str] = mapped_column(Text)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    duration_ms: Mapped[int] = mapped_column(BigInteger)


_OUTCOME_FINAL = "outcome IN ('success', 'failure', 'error')"


class DeliveryResultRow(Base):
    """Each delivery that reached a final outcome: a real-time one when its lead is recorded, a
    queued (batch) one when RecordDeliveryOutcome completes it; its key makes that idempotent.
    Buyer reports and stats read deliveries here, by completion time, without a join."""

    __tablename__ = "delivery_results"
    __table_args__ = (
        CheckConstraint(_OUTCOME_FINAL, name="outcome"),
        CheckConstraint("sale_price_micros >= 0", name="money"),
        Index(
            "ix_delivery_results_report",
            "complete_time",
            postgresql_include=["buyer_id", "outcome", "sale_price_micros"],
        ),
        Index("ix_delivery_results_lead_buyer", "lead_id", "buyer_id"),
    )

    recipient_event_id: Mapped[str] = mapped_column(
        _ID, ForeignKey(RecipientEventRow.id), primary_key=True
    )
    lead_id: Mapped[str] = mapped_column(_ID, ForeignKey(LeadRow.id))
    flow_id: Mapped[str] = mapped_column(_ID)
    source_id: Mapped[str] = mapped_column(_ID)
    buyer_id: Mapped[str] = mapped_column(_ID)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    sale_price_micros: Mapped[int] = mapped_column(BigInteger)
    complete_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    # False for a real-time delivery (its details are on the recipient event itself).
    batch: Mapped[bool] = mapped_column(Boolean)
    batch_id: Mapped[str] = mapped_column(Text)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    record_time: Mapped[datetime] = mapped_column(db.UtcDateTime())


_VENDOR_KINDS = "kind IN ('purchase', 'chargeback')"
_BUYER_KINDS = "kind IN ('sale', 'return')"


class PostingRow(Base):
    """The journal: one balanced posting per row, `amount` from credit_account to debit_account.
    The id is the posting's idempotency key (purchase:<lead>, sale:<event>, return:<feedback>,
    chargeback:<lead>); flow, source and buyer are the dimensions reports group by."""

    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("kind IN ('purchase', 'sale', 'return', 'chargeback')", name="kind"),
        CheckConstraint("amount_micros >= 0", name="money"),
        CheckConstraint("debit_account <> credit_account", name="two_accounts"),
        # The vendor and buyer reports scan a window of effective time over two kinds each: a
        # partial index per report, covering its columns on PostgreSQL, so the scan reads only
        # the index (bench/ledger_reports_bench.py measures it).
        Index(
            "ix_postings_vendor_report",
            "effective_time",
            postgresql_include=["source_id", "kind", "amount_micros"],
            postgresql_where=text(_VENDOR_KINDS),
            sqlite_where=text(_VENDOR_KINDS),
        ),
        Index(
            "ix_postings_buyer_report",
            "effective_time",
            postgresql_include=["buyer_id", "kind", "amount_micros"],
            postgresql_where=text(_BUYER_KINDS),
            sqlite_where=text(_BUYER_KINDS),
        ),
        Index("ix_postings_lead", "lead_id"),
        Index("ix_postings_buyer_kind_time", "buyer_id", "kind", "effective_time"),
    )

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    lead_id: Mapped[str] = mapped_column(_ID, ForeignKey(LeadRow.id))
    flow_id: Mapped[str] = mapped_column(_ID)
    source_id: Mapped[str] = mapped_column(_ID)
    buyer_id: Mapped[str] = mapped_column(String(128))
    recipient_event_id: Mapped[str] = mapped_column(String(128))
    feedback_id: Mapped[str] = mapped_column(String(128))
    debit_account: Mapped[str] = mapped_column(String(200))
    credit_account: Mapped[str] = mapped_column(String(200))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    effective_time: Mapped[datetime] = mapped_column(db.UtcDateTime())
    post_time: Mapped[datetime] = mapped_column(db.UtcDateTime())


_TAKEN_RETURN = "type = 'return' AND outcome = 'success'"
_TAKEN_CONVERSION = "type = 'conversion' AND outcome = 'success'"


class FeedbackRow(Base):
    """A buyer's return or conversion, judged once when it arrived (refusals are kept too)."""

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint("type IN ('return', 'conversion')", name="type"),
        CheckConstraint("outcome IN ('success', 'failure')", name="outcome"),
        CheckConstraint("initial_status IN ('approved', 'pending', 'denied')", name="status"),
        CheckConstraint("amount_micros >= 0", name="money"),
        # At most one return (and one conversion) per buyer and lead, whatever the concurrency.
        Index(
            "uq_feedback_one_return",
            "buyer_id",
            "lead_id",
            unique=True,
            sqlite_where=text(_TAKEN_RETURN),
            postgresql_where=text(_TAKEN_RETURN),
        ),
        Index(
            "uq_feedback_one_conversion",
            "buyer_id",
            "lead_id",
            unique=True,
            sqlite_where=text(_TAKEN_CONVERSION),
            postgresql_where=text(_TAKEN_CONVERSION),
        ),
        Index("ix_feedback_buyer_time", "buyer_id", "create_time"),
        Index("ix_feedback_lead", "lead_id"),
        Index("ix_feedback_event", "recipient_event_id"),
    )

    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    lead_id: Mapped[str] = mapped_column(_ID, ForeignKey(LeadRow.id))
    recipient_event_id: Mapped[str] = mapped_column(_ID, ForeignKey(RecipientEventRow.id))
    buyer_id: Mapped[str] = mapped_column(_ID)
    flow_id: Mapped[str] = mapped_column(_ID)
    source_id: Mapped[str] = mapped_column(_ID)
    type: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_reason: Mapped[str] = mapped_column(Text)
    initial_status: Mapped[str] = mapped_column(String(16))
    # The policy in force when the return arrived decides its chargeback, even if approved later.
    return_to_source: Mapped[bool] = mapped_column(Boolean)
    sale_time: Mapped[datetime | None] = mapped_column(db.UtcDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(db.UtcDateTime())


class FeedbackDecisionRow(Base):
    """An operator's decision on a pending return: one per return, never changed."""

    __tablename__ = "feedback_decisions"
    __table_args__ = (CheckConstraint("decision IN ('approved', 'denied')", name="decision"),)

    feedback_id: Mapped[str] = mapped_column(_ID, ForeignKey(FeedbackRow.id), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    decide_time: Mapped[datetime] = mapped_column(db.UtcDateTime())


# The append-only triggers (UPDATE, DELETE and TRUNCATE refused) are made by revision 0001 in
# migrations/versions: revisions, not create_all, make the ledger's tables.
