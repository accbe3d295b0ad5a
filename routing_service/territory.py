"""Buyer territory (SPEC 3): states, postal codes (exact or `prefix*`) and a radius around a ZIP.

A lead is in a territory when it matches ANY of the listed areas (they add up: `states: [NV]`
with `postal_codes: ["900*"]` serves Nevada and Los Angeles). A lead without the field an area
needs (no state, no postal code, a ZIP with no known centroid) is outside that area.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from leadflow.config import Territory
from leadflow.fields import parse_value
from leadflow.geo import miles_between, zip_centroid

OUTSIDE_TERRITORY = "Outside territory"


def normal_state(text: str) -> str | None:
    """The 2-letter code of a US state name or code, None when it is not one."""
    parsed = parse_value("state", text)
    return str(parsed["normal"]) if parsed.get("valid") else None


def normal_postal(text: str) -> str:
    return "".join(str(text).split()).upper()


class LeadPlace:
    """Where a lead is, read once per lead from its parsed fields."""

    def __init__(self, fields: dict[str, Any]) -> None:
        state = fields.get("state")
        self.state: str | None = None
        if isinstance(state, dict) and state.get("normal"):
            self.state = str(state["normal"]).upper()
        elif isinstance(state, str) and state:
            self.state = normal_state(state)
        postal = fields.get("postal_code")
        self.postal: str | None = None
        if isinstance(postal, dict):
            value = postal.get("zip") or postal.get("normal") or postal.get("raw")
            self.postal = normal_postal(str(value)) if value else None
        elif isinstance(postal, str) and postal:
            self.postal = normal_postal(postal)

    @cached_property
    def centroid(self) -> tuple[float, float] | None:
        return zip_centroid(self.postal) if self.postal else None


@dataclass(frozen=True, eq=False)
class TerritoryMatcher:
    """A compiled territory: O(1) for states and exact codes, one haversine for the radius."""

    states: frozenset[str]
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    center: tuple[float, float] | None
    miles: float

    @classmethod
    def compile(cls, territory: Territory) -> TerritoryMatcher:
        states = frozenset(code for s in territory.states if (code := normal_state(s)))
        exact = frozenset(normal_postal(p) for p in territory.postal_codes if not p.endswith("*"))
        prefixes = tuple(
            normal_postal(p.rstrip("*")) for p in territory.postal_codes if p.endswith("*")
        )
        within = territory.within
        center = zip_centroid(within.postal_code) if within is not None else None
        return cls(states, exact, prefixes, center, float(within.miles) if within else 0.0)

    @property
    def empty(self) -> bool:
        """A territory naming no area restricts nothing."""
        return not (self.states or self.has_postal)

    @cached_property
    def has_postal(self) -> bool:
        """Whether any area needs the postal code (codes, prefixes, a radius)."""
        return bool(self.exact or self.prefixes or self.miles)

    def contains(self, place: LeadPlace) -> bool:
        if self.empty:
            return True
        if place.state is not None and place.state in self.states:
            return True
        return self.has_postal and self.contains_postal(place)

    def contains_postal(self, place: LeadPlace) -> bool:
        """In one of the postal areas: an exact code, a prefix, or within the radius."""
        postal = place.postal
        if postal is None:
            return False
        if postal in self.exact or (self.prefixes and postal.startswith(self.prefixes)):
            return True
        if self.center is not None:
            point = place.centroid
            if point is not None and miles_between(point, self.center) <= self.miles:
                return True
        return False
