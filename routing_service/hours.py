"""Hours of operation (SPEC 3 `<hours>`): is a flow, source or buyer open at an instant?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from leadflow.config import DAYS, Hours

OUTSIDE_HOURS = "Outside hours of operation"


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class OpeningHours:
    """Compiled hours: per weekday (Monday = 0) the half-open minute ranges [start, end)."""

    zone: str
    days: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def compile(cls, hours: Hours, default_zone: str) -> OpeningHours:
        days = []
        for day in DAYS:
            ranges = []
            for text in getattr(hours, day):
                start, end = text.split("-")
                ranges.append((_minutes(start), _minutes(end)))
            days.append(tuple(sorted(ranges)))
        return cls(hours.time_zone or default_zone, tuple(days))

    def is_open(self, when: datetime) -> bool:
        """`when` is an aware instant; the hours are read in their own zone (a day left out is
        closed; "24:00" ends a range at midnight)."""
        local = when.astimezone(zone(self.zone))
        return self.open_at(local.weekday(), local.hour * 60 + local.minute)

    def open_at(self, weekday: int, minute: int) -> bool:
        return any(start <= minute < end for start, end in self.days[weekday])
