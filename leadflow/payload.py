"""A lead as plain data: the normal value of every field, nested, flattened to dot keys, or
unflattened from them.

The one home of this shape: delivery bodies and files, and pricing services' `lead`, send it;
vendors' dot keys and buyers' body mappings are unflattened here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leadflow.fields import is_field
from leadflow.variables import display

__all__ = ["flatten", "plain_values", "unflatten"]


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


def unflatten(
    data: Mapping[str, Any], *, max_fields: int | None = None, max_parts: int | None = None
) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`, recursively into nested objects. ValueError, naming
    the key, for a name with an empty part (`a..b`), one with more than `max_parts` parts, more
    than `max_fields` keys at one level, or a key that is both a value and an object (`a` beside
    `a.b`): either reading of such a key would silently drop or misplace one of them."""
    if max_fields is not None and len(data) > max_fields:
        raise ValueError(f"too many fields (more than {max_fields})")
    result: dict[str, Any] = {}
    for key, value in data.items():
        # Text first: most values are, and a Mapping check is an ABC's (every vendor field).
        if not isinstance(value, str) and isinstance(value, Mapping):
            value = unflatten(value, max_fields=max_fields, max_parts=max_parts)
        parts = str(key).split(".")
        if "" in parts:
            raise ValueError(f"bad field name {key!r}")
        if max_parts is not None and len(parts) > max_parts:
            raise ValueError(f"field name {str(key)[:40]!r}… has more than {max_parts} parts")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"field {part!r} is both a value and an object")
            node = child
        last = parts[-1]
        if last in node and (isinstance(node[last], dict) or isinstance(value, dict)):
            if not (isinstance(node[last], dict) and isinstance(value, dict)):
                raise ValueError(f"field {last!r} is both a value and an object")
            node[last].update(value)
        else:
            node[last] = value
    return result
