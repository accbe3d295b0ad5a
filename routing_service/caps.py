"""Caps (SPEC 7.3): which caps a lead counts against, their calendar windows and their limits.

Windows are calendar windows in the cap's zone. With `every: N` they are aligned so that every
replica computes the same window: minutes within the hour, hours within the day, days counted
from 1970-01-01, weeks (Monday 00:00) counted from Monday 1970-01-05, months counted from
January 1970 (so `per: month, every: 3` is calendar quarters and `every: 12` calendar years).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from leadflow.config import Cap
from leadflow.money import to_micros
from routing_service.hours import zone

if TYPE_CHECKING:
    from leadflow.rules import RuleSet

CAP_REACHED = "Cap reached"
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_EPOCH_MONDAY = date(1970, 1, 5).toordinal()


def window_start(when: datetime, per: str, every: int, zone_name: str) -> datetime:
    """The start (UTC) of the calendar window holding `when`, in zone `zone_name`."""
    local = when.astimezone(zone(zone_name))
    if per == "minute":
        start = local.replace(minute=local.minute // every * every, second=0, microsecond=0)
        return start.astimezone(UTC)
    if per == "hour":
        start = local.replace(hour=local.hour // every * every, minute=0, second=0, microsecond=0)
        return start.astimezone(UTC)
    day = local.date()
    if per == "day":
        ordinal = day.toordinal()
        first = date.fromordinal(ordinal - (ordinal - _EPOCH_DAY) % every)
    elif per == "week":
        ordinal = day.toordinal() - day.weekday()
        first = date.fromordinal(ordinal - (ordinal - _EPOCH_MONDAY) // 7 % every * 7)
    elif per == "month":
        months = (day.year - 1970) * 12 + day.month - 1
        months -= months % every
        first = date(1970 + months // 12, months % 12 + 1, 1)
    else:
        raise ValueError(f"unknown cap period {per!r}")
    midnight = datetime(first.year, first.month, first.day, tzinfo=zone(zone_name))
    return midnight.astimezone(UTC)


@dataclass(frozen=True)
class CapRule:
    """One configured cap with the identity its counters are stored under.

    `key` names the cap by where it is configured (`flow:auto:0`, `source:auto:vendor:1`,
    `buyer:acme:0`, `step:auto:0:2:0`), so every replica reading the same configuration
    counts into the same rows.
    """

    key: str
    scope: str  # flow | source | buyer | step: the metric label
    per: str
    every: int
    zone: str
    max_leads: int | None
    max_micros: int | None
    rule_set: RuleSet | None
    reason: str

    @classmethod
    def compile(cls, cap: Cap, key: str, scope: str, default_zone: str) -> CapRule:
        return cls(
            key=key,
            scope=scope,
            per=cap.per,
            every=cap.every,
            zone=cap.time_zone or default_zone,
            max_leads=cap.max_leads,
            max_micros=to_micros(cap.max_amount) if cap.max_amount is not None else None,
            rule_set=cap.rule_set.compiled if cap.rule_set is not None else None,
            reason=cap.reason or CAP_REACHED,
        )

    def counts(self, context: Mapping[str, Any]) -> bool:
        """Whether this lead counts against the cap (its rule set decides; none: every lead)."""
        return self.rule_set is None or self.rule_set.passes(context)

    def window(self, when: datetime) -> datetime:
        return window_start(when, self.per, self.every, self.zone)

    def window_end(self, start: datetime) -> datetime:
        """The end of the window that starts at `start` (the start of the next one)."""
        if self.per == "minute":
            return start + timedelta(minutes=self.every)
        if self.per == "hour":
            return start + timedelta(hours=self.every)
        # A point safely inside the next window (DST moves a day by an hour at most; N months
        # last between 28N and 31N days), then that window's start.
        days = {"day": 1, "week": 7, "month": 31}[self.per] * self.every
        inside = start + timedelta(days=days, hours=12)
        return window_start(inside, self.per, self.every, self.zone)


@dataclass(frozen=True)
class Claim:
    """A lead's claim on one cap window: one lead and `micros` of money."""

    rule: CapRule
    window: datetime
    micros: int

    @property
    def limit(self) -> tuple[int | None, int | None]:
        return self.rule.max_leads, self.rule.max_micros


def claims(
    rules: tuple[CapRule, ...], context: Mapping[str, Any], when: datetime, amount: Decimal
) -> list[Claim]:
    """The windows a lead would count into, for the caps whose rule sets it passes."""
    micros = to_micros(amount)
    return [Claim(rule, rule.window(when), micros) for rule in rules if rule.counts(context)]
