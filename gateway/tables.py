"""gateway tables: idempotency keys, the ledger outbox, asynchronous intake and inbound pings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from leadflow.db import UtcDateTime, metadata


class Base(DeclarativeBase):
    metadata = metadata("gateway")


class IdempotencyKey(Base):
    """A key is claimed (body NULL) before its lead runs and completed with the response after."""

    __tablename__ = "idempotency_keys"
    source_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_time: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[int | None]
    content_type: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


class LedgerOutbox(Base):
    """A lead record, committed before the vendor hears the outcome and deleted once the ledger
    has it; replayed (the ledger is idempotent by lead id) until it does."""

    __tablename__ = "ledger_outbox"
    lead_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_time: Mapped[datetime] = mapped_column(UtcDateTime)
    request: Mapped[bytes] = mapped_column(LargeBinary)


class Ping(Base):
    """An inbound ping's quote (SPEC 5.2): honoured once by a submit before it expires."""

    __tablename__ = "pings"
    ping_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(64))
    price_micros: Mapped[int] = mapped_column(BigInteger)
    created_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    used_time: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RejectedRecord(Base):
    """A lead record the ledger refused as invalid: kept for an operator, never replayed."""

    __tablename__ = "ledger_outbox_rejected"
    lead_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_time: Mapped[datetime] = mapped_column(UtcDateTime)
    request: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text)


class Intake(Base):
    """An asynchronous submission (`Prefer: respond-async`), committed before its 202: claimed by
    a gateway to be processed, finished with the vendor's result in the same transaction as the
    lead's ledger record."""

    __tablename__ = "intake"
    lead_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(64))
    submission: Mapped[bytes] = mapped_column(LargeBinary)  # JSON: fields, override, ping_id
    created_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    claimed_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    result: Mapped[bytes | None] = mapped_column(LargeBinary)  # JSON: the vendor's answer
