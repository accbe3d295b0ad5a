"""Alembic revisions of the delivery service's tables (see leadflow.migrate)."""
