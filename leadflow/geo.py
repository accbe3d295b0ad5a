"""US ZIP centroids (bundled data from the zipcodes package) and great-circle distances in miles.

The zipcodes data loads on the first lookup (about 0.3 s) and each ZIP is cached after that.
Unknown or malformed ZIPs have no centroid, so distance checks on them are False.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Final

import zipcodes

__all__ = ["EARTH_RADIUS_MILES", "miles_between", "within_miles", "zip_centroid"]

EARTH_RADIUS_MILES: Final = 3958.7613
# Linear on any text (a lead's postal code reaches it): never two adjacent `\s*`.
_ZIP5 = re.compile(r"\s*+(\d{5})(?:\s*+(?:-\s*+)?\d{4})?\s*+")


def zip_centroid(zip5: str) -> tuple[float, float] | None:
    """(latitude, longitude) of a US ZIP ("90210" or "90210-1234"), or None when unknown."""
    match = _ZIP5.fullmatch(zip5)
    if match is None:
        return None
    # Cached by the five digits only: a cache keyed by the text would keep vendor text of up to
    # 1 MiB per entry.
    return _centroid(match.group(1))


@lru_cache(maxsize=65536)
def _centroid(zip5: str) -> tuple[float, float] | None:
    try:
        found = zipcodes.matching(zip5)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return None
    if not found:
        return None
    try:
        return float(found[0]["lat"]), float(found[0]["long"])
    except (KeyError, TypeError, ValueError):
        return None


def miles_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance in miles between two (latitude, longitude) points."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_MILES * math.asin(min(1.0, math.sqrt(h)))


def within_miles(zip_a: str, zip_b: str, miles: float) -> bool:
    """True when both ZIP centroids are known and at most ``miles`` apart."""
    a = zip_centroid(zip_a)
    b = zip_centroid(zip_b)
    if a is None or b is None:
        return False
    return miles_between(a, b) <= miles
