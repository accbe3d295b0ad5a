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
    "leads",
    "postings",
    "recipient_events",
    "source_events",
    "delivery_results",
    "feedback",
    "feedback_decisions",
)


def upgrade() -> None:
    # Constraints in the order create_all wrote them: SQLite keeps the CREATE TABLE text verbatim.
    op.create_table(
        "leads",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("flow_id", sa.String(length=128), nullable=False),
        sa.Column("source_id", sa.String(length=128), nullable=False),
        sa.Column("fields_json", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("submit_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leads")),
    )
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_leads_submit_time_source", ["submit_time", "source_id"], unique=False
        )

    op.create_table(
        "postings",
        sa.Column("id", sa.String(length=160), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("flow_id", sa.String(length=128), nullable=False),
        sa.Column("source_id", sa.String(length=128), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("recipient_event_id", sa.String(length=128), nullable=False),
        sa.Column("feedback_id", sa.String(length=128), nullable=False),
        sa.Column("debit_account", sa.String(length=200), nullable=False),
        sa.Column("credit_account", sa.String(length=200), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("effective_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("post_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('purchase', 'sale', 'return', 'chargeback')", name=op.f("ck_postings_kind")
        ),
        sa.CheckConstraint("amount_micros >= 0", name=op.f("ck_postings_money")),
        sa.CheckConstraint(
            "debit_account <> credit_account", name=op.f("ck_postings_two_accounts")
        ),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], name=op.f("fk_postings_lead_id_leads")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_postings_buyer_kind_time", ["buyer_id", "kind", "effective_time"], unique=False
        )
        batch_op.create_index(
            "ix_postings_buyer_report",
            ["effective_time"],
            unique=False,
            postgresql_include=["buyer_id", "kind", "amount_micros"],
            postgresql_where=sa.text("kind IN ('sale', 'return')"),
            sqlite_where=sa.text("kind IN ('sale', 'return')"),
        )
        batch_op.create_index("ix_postings_lead", ["lead_id"], unique=False)
        batch_op.create_index(
            "ix_postings_vendor_report",
            ["effective_time"],
            unique=False,
            postgresql_include=["source_id", "kind", "amount_micros"],
            postgresql_where=sa.text("kind IN ('purchase', 'chargeback')"),
            sqlite_where=sa.text("kind IN ('purchase', 'chargeback')"),
        )

    op.create_table(
        "recipient_events",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage_name", sa.Text(), nullable=False),
        sa.Column("strategy", sa.Text(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sale_price_micros", sa.BigInteger(), nullable=False),
        sa.Column("price_audit", sa.JSON(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("lead_id", "position", name=op.f("uq_recipient_events_lead_id")),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'error', 'skip', 'queued')",
            name=op.f("ck_recipient_events_outcome"),
        ),
        sa.CheckConstraint("sale_price_micros >= 0", name=op.f("ck_recipient_events_money")),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_recipient_events_lead_id_leads")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipient_events")),
    )
    with op.batch_alter_table("recipient_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_recipient_events_buyer_id"), ["buyer_id"], unique=False
        )

    op.create_table(
        "source_events",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("purchase_price_micros", sa.BigInteger(), nullable=False),
        sa.Column("price_paid_micros", sa.BigInteger(), nullable=False),
        sa.Column("revenue_micros", sa.BigInteger(), nullable=False),
        sa.Column("price_audit", sa.JSON(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'error')", name=op.f("ck_source_events_outcome")
        ),
        sa.CheckConstraint(
            "purchase_price_micros >= 0 AND price_paid_micros >= 0 AND revenue_micros >= 0",
            name=op.f("ck_source_events_money"),
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_source_events_lead_id_leads")
        ),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_source_events")),
    )
    op.create_table(
        "delivery_results",
        sa.Column("recipient_event_id", sa.String(length=128), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("flow_id", sa.String(length=128), nullable=False),
        sa.Column("source_id", sa.String(length=128), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sale_price_micros", sa.BigInteger(), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("batch", sa.Boolean(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("record_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'error')", name=op.f("ck_delivery_results_outcome")
        ),
        sa.CheckConstraint("sale_price_micros >= 0", name=op.f("ck_delivery_results_money")),
        sa.ForeignKeyConstraint(
            ["recipient_event_id"],
            ["recipient_events.id"],
            name=op.f("fk_delivery_results_recipient_event_id_recipient_events"),
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"], ["leads.id"], name=op.f("fk_delivery_results_lead_id_leads")
        ),
        sa.PrimaryKeyConstraint("recipient_event_id", name=op.f("pk_delivery_results")),
    )
    with op.batch_alter_table("delivery_results", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_results_lead_buyer", ["lead_id", "buyer_id"], unique=False
        )
        batch_op.create_index(
            "ix_delivery_results_report",
            ["complete_time"],
            unique=False,
            postgresql_include=["buyer_id", "outcome", "sale_price_micros"],
        )

    op.create_table(
        "feedback",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("recipient_event_id", sa.String(length=128), nullable=False),
        sa.Column("buyer_id", sa.String(length=128), nullable=False),
        sa.Column("flow_id", sa.String(length=128), nullable=False),
        sa.Column("source_id", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("outcome_reason", sa.Text(), nullable=False),
        sa.Column("initial_status", sa.String(length=16), nullable=False),
        sa.Column("return_to_source", sa.Boolean(), nullable=False),
        sa.Column("sale_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("type IN ('return', 'conversion')", name=op.f("ck_feedback_type")),
        sa.CheckConstraint("outcome IN ('success', 'failure')", name=op.f("ck_feedback_outcome")),
        sa.CheckConstraint(
            "initial_status IN ('approved', 'pending', 'denied')", name=op.f("ck_feedback_status")
        ),
        sa.CheckConstraint("amount_micros >= 0", name=op.f("ck_feedback_money")),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], name=op.f("fk_feedback_lead_id_leads")),
        sa.ForeignKeyConstraint(
            ["recipient_event_id"],
            ["recipient_events.id"],
            name=op.f("fk_feedback_recipient_event_id_recipient_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index("ix_feedback_buyer_time", ["buyer_id", "create_time"], unique=False)
        batch_op.create_index("ix_feedback_event", ["recipient_event_id"], unique=False)
        batch_op.create_index("ix_feedback_lead", ["lead_id"], unique=False)
        batch_op.create_index(
            "uq_feedback_one_conversion",
            ["buyer_id", "lead_id"],
            unique=True,
            sqlite_where=sa.text("type = 'conversion' AND outcome = 'success'"),
            postgresql_where=sa.text("type = 'conversion' AND outcome = 'success'"),
        )
        batch_op.create_index(
            "uq_feedback_one_return",
            ["buyer_id", "lead_id"],
            unique=True,
            sqlite_where=sa.text("type = 'return' AND outcome = 'success'"),
            postgresql_where=sa.text("type = 'return' AND outcome = 'success'"),
        )

    op.create_table(
        "feedback_decisions",
        sa.Column("feedback_id", sa.String(length=128), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decide_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "decision IN ('approved', 'denied')", name=op.f("ck_feedback_decisions_decision")
        ),
        sa.ForeignKeyConstraint(
            ["feedback_id"],
            ["feedback.id"],
            name=op.f("fk_feedback_decisions_feedback_id_feedback"),
        ),
        sa.PrimaryKeyConstraint("feedback_id", name=op.f("pk_feedback_decisions")),
    )

    _append_only()


# Every ledger row is posted once and never changed (SPEC 9): the database itself refuses UPDATE
# and DELETE, and TRUNCATE on PostgreSQL, whoever connects. Exactly what create_all's hook made.
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'restrict_violation';
END
$$
"""


def _append_only() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(sa.text(_PG_FUNCTION))
    for name in TABLES:
        if postgres:
            op.execute(
                f'CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "{name}" '
                "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
            )
            op.execute(
                f'CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "{name}" '
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
            )
        else:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f'CREATE TRIGGER IF NOT EXISTS "{name}_no_{operation.lower()}" '
                    f'BEFORE {operation} ON "{name}" BEGIN SELECT RAISE(ABORT, '
                    f"'ledger rows are append-only: {operation} on {name} refused'); END"
                )


def downgrade() -> None:
    op.drop_table("feedback_decisions")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_feedback_one_return",
            sqlite_where=sa.text("type = 'return' AND outcome = 'success'"),
            postgresql_where=sa.text("type = 'return' AND outcome = 'success'"),
        )
        batch_op.drop_index(
            "uq_feedback_one_conversion",
            sqlite_where=sa.text("type = 'conversion' AND outcome = 'success'"),
            postgresql_where=sa.text("type = 'conversion' AND outcome = 'success'"),
        )
        batch_op.drop_index("ix_feedback_lead")
        batch_op.drop_index("ix_feedback_event")
        batch_op.drop_index("ix_feedback_buyer_time")

    op.drop_table("feedback")
    with op.batch_alter_table("delivery_results", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_delivery_results_report",
            postgresql_include=["buyer_id", "outcome", "sale_price_micros"],
        )
        batch_op.drop_index("ix_delivery_results_lead_buyer")

    op.drop_table("delivery_results")
    op.drop_table("source_events")
    with op.batch_alter_table("recipient_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipient_events_buyer_id"))

    op.drop_table("recipient_events")
    with op.batch_alter_table("postings", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_postings_vendor_report",
            postgresql_include=["source_id", "kind", "amount_micros"],
            postgresql_where=sa.text("kind IN ('purchase', 'chargeback')"),
            sqlite_where=sa.text("kind IN ('purchase', 'chargeback')"),
        )
        batch_op.drop_index("ix_postings_lead")
        batch_op.drop_index(
            "ix_postings_buyer_report",
            postgresql_include=["buyer_id", "kind", "amount_micros"],
            postgresql_where=sa.text("kind IN ('sale', 'return')"),
            sqlite_where=sa.text("kind IN ('sale', 'return')"),
        )
        batch_op.drop_index("ix_postings_buyer_kind_time")

    op.drop_table("postings")
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index("ix_leads_submit_time_source")

    op.drop_table("leads")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ledger_append_only()")
