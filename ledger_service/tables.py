"""The ledger's tables: leads with their source and recipient events, posted once, never changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
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
    metadata = db.metadata()


class LeadRow(Base):
    """One row per lead; its primary key is what makes RecordLead idempotent."""

    __tablename__ = "leads"

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
            "outcome IN ('success', 'failure', 'error', 'skip', 'queued')", name="outcome"
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
