"""A parsed lead as plain data: the normal value of every field, nested or flattened to dot keys.

The one home of this shape: delivery bodies and files, and pricing services' `lead`, send it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leadflow.fields import is_field
from leadflow.variables import display

__all__ = ["flatten", "plain_values"]


def plain_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Every lead field's normal value; nested groups stay nested, lists stay lists."""
    payload: dict[str, Any] = {}
    for name, value in fields.items():
        if is_field(value):
            payload[name] = display(value)
        elif isinstance(value, Mapping):
            payload[name] = plain_values(value)
        elif isinstance(value, list):
            payload[name] = [
                plain_values(item)
                if isinstance(item, Mapping) and not is_field(item)
                else display(item)
                for item in value
            ]
        else:
            payload[name] = display(value)
    return payload


def flatten(payload: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested groups as dot keys for forms, query strings and file columns; a list repeats its
    key."""
    pairs: list[tuple[str, Any]] = []
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            pairs.extend(flatten(value, f"{name}."))
        elif isinstance(value, list):
            pairs.extend((name, item) for item in value)
        else:
            pairs.append((name, value))
    return pairs
