"""unknown outcome: a recipient event may be `unknown` (an offer whose fate is unknown, SPEC 8.1)

Revision ID: 0002
Revises: 0001

Only the check constraint on recipient_events.outcome widens; no row changes. On PostgreSQL the
constraint is replaced. SQLite cannot alter a constraint, and recreating the table would mean
copying append-only rows and remaking their triggers and foreign keys, so the stored CREATE TABLE
text is edited in place (SQLite's documented procedure for loosening a CHECK constraint: every
existing row already satisfies the wider one).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = "outcome IN ('success', 'failure', 'error', 'skip', 'queued')"
_NEW = "outcome IN ('success', 'failure', 'error', 'skip', 'queued', 'unknown')"


def _sqlite_check(old: str, new: str) -> None:
    connection = op.get_bind()
    version = connection.exec_driver_sql("PRAGMA schema_version").scalar_one()
    connection.exec_driver_sql("PRAGMA writable_schema = ON")
    connection.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
        "WHERE type = 'table' AND name = 'recipient_events'",
        (old, new),
    )
    # A new schema version makes every connection re-read the table's definition.
    connection.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    connection.exec_driver_sql("PRAGMA writable_schema = OFF")


def _replace_check(old: str, new: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_check(old, new)
        return
    op.drop_constraint(op.f("ck_recipient_events_outcome"), "recipient_events", type_="check")
    op.create_check_constraint(op.f("ck_recipient_events_outcome"), "recipient_events", new)


def upgrade() -> None:
    _replace_check(_OLD, _NEW)


def downgrade() -> None:
    _replace_check(_NEW, _OLD)
