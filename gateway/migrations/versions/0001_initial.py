"""initial: the tables create_all made before revisions (a database made then is stamped here)

Revision ID: 0001
Revises: (none: the first)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every table of this revision: leadflow.migrate stamps a database that has all of them (made by
# create_all before there were revisions) at this revision instead of creating them.
TABLES = (
    "idempotency_keys",
    "intake",
    "ledger_outbox",
    "ledger_outbox_rejected",
    "pings",
)


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("source_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "intake",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("flow_id", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("submission", sa.LargeBinary(), nullable=False),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_intake")),
    )
    with op.batch_alter_table("intake", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_intake_created_time"), ["created_time"], unique=False)

    op.create_table(
        "ledger_outbox",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_ledger_outbox")),
    )
    op.create_table(
        "ledger_outbox_rejected",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_ledger_outbox_rejected")),
    )
    op.create_table(
        "pings",
        sa.Column("ping_id", sa.String(length=64), nullable=False),
        sa.Column("flow_id", sa.String(length=64), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("price_micros", sa.BigInteger(), nullable=False),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("ping_id", name=op.f("pk_pings")),
    )
    with op.batch_alter_table("pings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pings_expires_time"), ["expires_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pings_expires_time"))

    op.drop_table("pings")
    op.drop_table("ledger_outbox_rejected")
    op.drop_table("ledger_outbox")
    with op.batch_alter_table("intake", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_intake_created_time"))

    op.drop_table("intake")
    op.drop_table("idempotency_keys")
