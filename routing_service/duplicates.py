"""Duplicate keys (flow `duplicates`): the lead's normalised identifying fields, hashed.

Only a SHA-256 of the values is stored, never the email or phone itself. Values are the parsed
`normal` forms (an email lower-cased, a phone as its digits without an extension), trimmed and
case-folded, so `ADA@Example.com` and `ada@example.com ` are the same lead. A lead with every
listed field blank has no key and is never a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from leadflow.fields import is_field


def _normal(value: Any) -> str:
    if is_field(value):
        if value.get("kind") == "phone" and value.get("valid"):
            # The same line with another extension is the same person: the key (as before
            # extensions joined the normal value) is the number alone.
            return str(value.get("normal", "")).split("x", 1)[0]
        value = value.get("normal")
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(sorted(_normal(item) for item in value))
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_normal(v)}" for k, v in sorted(value.items()))
    return " ".join(str(value).split()).casefold()


def _lookup(fields: Mapping[str, Any], path: str) -> Any:
    current: Any = fields
    for part in path.removeprefix("lead.").split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def duplicate_key(fields: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """The hex digest identifying the lead for these field names, None when all are blank."""
    values = [_normal(_lookup(fields, name)) for name in names]
    if not any(values):
        return None
    text = "\x1f".join(f"{name}\x1e{value}" for name, value in zip(names, values, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()
