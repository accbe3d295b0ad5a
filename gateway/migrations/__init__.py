"""Alembic revisions of the gateway service's tables (see leadflow.migrate)."""
