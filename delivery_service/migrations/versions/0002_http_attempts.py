"""http_attempts: every HTTP delivery recorded before its request leaves

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "http_attempts",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("send_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_try_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("price_micros", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.CheckConstraint("state IN ('sent', 'answered')", name=op.f("ck_http_attempts_state")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_http_attempts")),
    )
    op.create_index("ix_http_attempts_due", "http_attempts", ["next_try_time"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_http_attempts_due", table_name="http_attempts")

    op.drop_table("http_attempts")
