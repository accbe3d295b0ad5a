"""Alembic revisions of the ledger service's tables (see leadflow.migrate)."""
