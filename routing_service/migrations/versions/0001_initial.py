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
    "cap_counters",
    "cap_holds",
    "duplicate_keys",
    "rotation_cursors",
    "stage_sales",
)


def upgrade() -> None:
    op.create_table(
        "cap_counters",
        sa.Column("cap_key", sa.String(length=255), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_leads", sa.Integer(), nullable=False),
        sa.Column("used_micros", sa.BigInteger(), nullable=False),
        sa.Column("held_leads", sa.Integer(), nullable=False),
        sa.Column("held_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("cap_key", "window_start", name=op.f("pk_cap_counters")),
    )
    with op.batch_alter_table("cap_counters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cap_counters_window_end"), ["window_end"], unique=False
        )

    op.create_table(
        "cap_holds",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("cap_key", sa.String(length=255), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("micros", sa.BigInteger(), nullable=False),
        sa.Column("expires_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", "scope", "cap_key", name=op.f("pk_cap_holds")),
    )
    with op.batch_alter_table("cap_holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cap_holds_cap_key_window_start", ["cap_key", "window_start"], unique=False
        )

    op.create_table(
        "duplicate_keys",
        sa.Column("flow_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("committed", sa.Boolean(), nullable=False),
        sa.Column("expires_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("flow_id", "digest", name=op.f("pk_duplicate_keys")),
    )
    with op.batch_alter_table("duplicate_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_duplicate_keys_expires_time"), ["expires_time"], unique=False
        )

    op.create_table(
        "rotation_cursors",
        sa.Column("flow_id", sa.String(length=64), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("flow_id", "stage_index", name=op.f("pk_rotation_cursors")),
    )
    op.create_table(
        "stage_sales",
        sa.Column("flow_id", sa.String(length=64), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("buyer_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("sales", sa.Integer(), nullable=False),
        sa.Column("last_sold_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "flow_id", "stage_index", "buyer_id", "day", name=op.f("pk_stage_sales")
        ),
    )


def downgrade() -> None:
    op.drop_table("stage_sales")
    op.drop_table("rotation_cursors")
    with op.batch_alter_table("duplicate_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_duplicate_keys_expires_time"))

    op.drop_table("duplicate_keys")
    with op.batch_alter_table("cap_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_cap_holds_cap_key_window_start")

    op.drop_table("cap_holds")
    with op.batch_alter_table("cap_counters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cap_counters_window_end"))

    op.drop_table("cap_counters")
