"""Identifiers the suite mints: sortable by creation, unguessable after that."""

from __future__ import annotations

import secrets
import time

__all__ = ["new_id", "new_lead_id"]


def new_id() -> str:
    """Milliseconds since the epoch (12 hex digits, so text order is time order), then 48 random
    bits: leads, feedback and batches are listed in creation order and cannot be enumerated."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


# A lead id is such an id; the name reads better where leads are made.
new_lead_id = new_id
