"""Alembic entry point of the ledger revisions: leadflow.migrate configures every run."""

from leadflow.migrate import run_env

run_env()
