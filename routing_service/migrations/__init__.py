"""Alembic revisions of the routing service's tables (see leadflow.migrate)."""
