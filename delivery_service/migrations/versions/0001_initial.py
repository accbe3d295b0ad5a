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
    "batches",
    "buyer_schedules",
    "outcome_reports",
    "queued_leads",
)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lead_count", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("resend_of", sa.String(length=64), nullable=True),
        sa.Column("remote_name", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('sending', 'delivered', 'failed')", name=op.f("ck_batches_status")
        ),
        sa.CheckConstraint(
            "kind IN ('scheduled', 'manual', 'retry', 'resend')", name=op.f("ck_batches_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("request_id", name=op.f("uq_batches_request_id")),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index("ix_batches_buyer_created", ["buyer_id", "create_time"], unique=False)
        batch_op.create_index("ix_batches_status_lease", ["status", "lease_until"], unique=False)

    op.create_table(
        "buyer_schedules",
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("next_run_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("buyer_id", name=op.f("pk_buyer_schedules")),
    )
    op.create_table(
        "outcome_reports",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sale_price_micros", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_try_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("reported_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'error')", name=op.f("ck_outcome_reports_outcome")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_outcome_reports")),
    )
    with op.batch_alter_table("outcome_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outcome_reports_due", ["reported_time", "next_try_time"], unique=False
        )

    op.create_table(
        "queued_leads",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("lead_proto", sa.LargeBinary(), nullable=False),
        sa.Column("sale_price_micros", sa.BigInteger(), nullable=False),
        sa.Column("purchase_price_micros", sa.BigInteger(), nullable=True),
        sa.Column("queued_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'sending', 'delivered', 'closed')",
            name=op.f("ck_queued_leads_state"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_queued_leads")),
    )
    with op.batch_alter_table("queued_leads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_queued_leads_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(
            "ix_queued_leads_buyer_state", ["buyer_id", "state", "seq"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("queued_leads", schema=None) as batch_op:
        batch_op.drop_index("ix_queued_leads_buyer_state")
        batch_op.drop_index(batch_op.f("ix_queued_leads_batch_id"))

    op.drop_table("queued_leads")
    with op.batch_alter_table("outcome_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_outcome_reports_due")

    op.drop_table("outcome_reports")
    op.drop_table("buyer_schedules")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index("ix_batches_status_lease")
        batch_op.drop_index("ix_batches_buyer_created")

    op.drop_table("batches")
