"""Identifiers the suite mints: sortable by creation, unguessable after that."""

from __future__ import annotations

import os
import time

__all__ = ["new_id", "new_lead_id"]


def new_id() -> str:
    """Milliseconds since the epoch (12 hex digits, so text order is time order), then 48 random
    bits: leads, feedback and batches are listed in creation order and cannot be enumerated."""
    # os.urandom is what secrets.token_hex reads, without its two layers of calls in between.
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


# A lead id is such an id; the name reads better where leads are made.
new_lead_id = new_id
