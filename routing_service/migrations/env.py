"""Alembic entry point of the routing revisions: leadflow.migrate configures every run."""

from leadflow.migrate import run_env

run_env()
