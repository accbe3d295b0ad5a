"""routing tables (schema `routing`): cap counters and reservations, duplicate keys, rotation
cursors and per-stage sales."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from leadflow.db import UtcDateTime, metadata


class Base(DeclarativeBase):
    metadata = metadata("routing")


class CapCounter(Base):
    """One cap's window: what is committed (`used_*`) and what live reservations hold.

    A reservation is a conditional UPDATE of this row (`used + held + 1 <= max`), which the
    database applies atomically: PostgreSQL re-checks the condition after waiting for a
    concurrent writer's row lock, SQLite runs one writer at a time.
    """

    __tablename__ = "cap_counters"
    cap_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    window_end: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    used_leads: Mapped[int] = mapped_column(Integer, default=0)
    used_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    held_leads: Mapped[int] = mapped_column(Integer, default=0)
    held_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class CapHold(Base):
    """A lead's live reservation on one cap window, until committed, released or expired."""

    __tablename__ = "cap_holds"
    lead_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # "lead" for flow and source caps, "step:<stage>:<step>" for buyer and step caps.
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    cap_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime)
    micros: Mapped[int] = mapped_column(BigInteger)
    expires_time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_cap_holds_cap_key_window_start", "cap_key", "window_start"),)


class DuplicateKey(Base):
    """A flow's duplicate key: held by a lead in progress, then kept for `within_days`."""

    __tablename__ = "duplicate_keys"
    flow_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    lead_id: Mapped[str] = mapped_column(String(128))
    committed: Mapped[bool]
    # While held: when the hold lapses (the gateway died); once committed: when the key ends.
    expires_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class RotationCursor(Base):
    """A round-robin stage's cursor: the step it offered first last time."""

    __tablename__ = "rotation_cursors"
    flow_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_step: Mapped[int] = mapped_column(Integer)


class StageSale(Base):
    """Sales per buyer in a stage, per day in the flow's zone: weighted shares and the
    last-sold order that breaks priority ties."""

    __tablename__ = "stage_sales"
    flow_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    buyer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    sales: Mapped[int] = mapped_column(Integer)
    last_sold_time: Mapped[datetime] = mapped_column(UtcDateTime)
