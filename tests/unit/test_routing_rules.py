"""Routing's pure rules: cap windows, hours, duplicate keys, strategies and ping privacy."""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from delivery_service.ping import without_pii
from leadflow.config import Hours
from leadflow.fields import parse_lead
from routing_service.caps import window_start
from routing_service.duplicates import duplicate_key
from routing_service.hours import OpeningHours
from routing_service.strategies import (
    BuyerRecord,
    by_bid,
    by_deficit,
    by_price,
    by_priority,
    expected_revenue,
    next_in_rotation,
    rotation,
    shares,
)

# Wednesday 2026-03-04 15:47:30 UTC = 09:47:30 in Chicago (CST, UTC-6).
WHEN = datetime(2026, 3, 4, 15, 47, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("per", "every", "zone", "start"),
    [
        ("minute", 1, "UTC", datetime(2026, 3, 4, 15, 47, tzinfo=UTC)),
        ("minute", 15, "UTC", datetime(2026, 3, 4, 15, 45, tzinfo=UTC)),
        ("hour", 1, "America/Chicago", datetime(2026, 3, 4, 15, 0, tzinfo=UTC)),
        ("hour", 6, "America/Chicago", datetime(2026, 3, 4, 12, 0, tzinfo=UTC)),
        ("day", 1, "America/Chicago", datetime(2026, 3, 4, 6, 0, tzinfo=UTC)),
        ("day", 1, "Asia/Tokyo", datetime(2026, 3, 4, 15, 0, tzinfo=UTC)),
        ("week", 1, "America/Chicago", datetime(2026, 3, 2, 6, 0, tzinfo=UTC)),  # Monday
        ("month", 1, "America/Chicago", datetime(2026, 3, 1, 6, 0, tzinfo=UTC)),
        ("month", 3, "UTC", datetime(2026, 1, 1, tzinfo=UTC)),  # a calendar quarter
        ("month", 12, "UTC", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_cap_windows_are_calendar_windows_in_the_cap_zone(
    per: str, every: int, zone: str, start: datetime
) -> None:
    assert window_start(WHEN, per, every, zone) == start


def test_weeks_start_on_monday_midnight_even_on_sunday_night() -> None:
    sunday_late = datetime(2026, 3, 9, 4, 59, tzinfo=UTC)  # Sunday 22:59 in Chicago
    assert window_start(sunday_late, "week", 1, "America/Chicago") == datetime(
        2026, 3, 2, 6, 0, tzinfo=UTC
    )
    monday = datetime(2026, 3, 9, 5, 0, tzinfo=UTC)  # Monday 00:00 CDT (after the DST change)
    assert window_start(monday, "week", 1, "America/Chicago") == monday


def test_day_windows_follow_daylight_saving_time() -> None:
    # 2026-03-08 is 23 hours long in Chicago; the next day starts at 05:00 UTC, not 06:00.
    assert window_start(
        datetime(2026, 3, 9, 12, 0, tzinfo=UTC), "day", 1, "America/Chicago"
    ) == datetime(2026, 3, 9, 5, 0, tzinfo=UTC)


def test_hours_are_half_open_and_24_00_ends_the_day() -> None:
    hours = OpeningHours.compile(
        Hours(monday=["09:00-12:00", "13:00-24:00"], time_zone="America/Chicago"), "UTC"
    )
    assert not hours.open_at(0, 8 * 60 + 59)
    assert hours.open_at(0, 9 * 60)
    assert not hours.open_at(0, 12 * 60)  # 12:00 is the end of the first range
    assert hours.open_at(0, 23 * 60 + 59)
    assert not hours.open_at(1, 10 * 60)  # Tuesday left out: closed
    monday_ten_chicago = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    assert hours.is_open(monday_ten_chicago)


def test_duplicate_keys_compare_normalised_values() -> None:
    a = parse_lead({"email": "ADA@Example.com ", "phone_1": "(512) 555-0142"})
    b = parse_lead({"email": "ada@example.com", "phone_1": "512.555.0142"})
    c = parse_lead({"email": "ada@example.com", "phone_1": "512.555.0143"})
    fields = ["email", "phone_1"]
    assert duplicate_key(a, fields) == duplicate_key(b, fields)
    assert duplicate_key(a, fields) != duplicate_key(c, fields)
    assert duplicate_key(parse_lead({"state": "CA"}), fields) is None
    assert "ada" not in (duplicate_key(a, fields) or "")  # only a digest is kept


def test_a_phone_with_another_extension_is_the_same_duplicate_key() -> None:
    plain = parse_lead({"phone_1": "512-555-0142"})
    extended = parse_lead({"phone_1": "512-555-0142 x 44"})
    assert extended["phone_1"]["normal"] == "5125550142x44"  # type: ignore[index]
    assert duplicate_key(plain, ["phone_1"]) == duplicate_key(extended, ["phone_1"])
    # the key of a plain number is what it was before extensions joined the normal value
    assert duplicate_key(plain, ["phone_1"]) == hashlib.sha256(b"phone_1\x1e5125550142").hexdigest()


@dataclass(frozen=True)
class Step:
    index: int
    buyer_id: str
    priority: int = 1
    weight: Decimal = Decimal(1)


STEPS = [Step(0, "a", 2), Step(1, "b", 1), Step(2, "c", 1), Step(3, "d", 3)]


def test_priority_ties_rotate_to_the_buyer_sold_longest_ago() -> None:
    assert [s.buyer_id for s in by_priority(STEPS)] == ["b", "c", "a", "d"]
    last = {"b": datetime(2026, 3, 4, 12, tzinfo=UTC), "c": datetime(2026, 3, 4, 11, tzinfo=UTC)}
    assert [s.buyer_id for s in by_priority(STEPS, last)] == ["c", "b", "a", "d"]
    # A buyer never sold goes before any that has been.
    assert [s.buyer_id for s in by_priority(STEPS, {"b": last["b"]})] == ["c", "b", "a", "d"]


def test_round_robin_starts_after_the_cursor_among_eligible_steps() -> None:
    assert next_in_rotation([0, 2, 3], None) == 0
    assert next_in_rotation([0, 2, 3], 0) == 2
    assert next_in_rotation([0, 2, 3], 1) == 2
    assert next_in_rotation([0, 2, 3], 3) == 0
    assert [s.index for s in rotation(STEPS, 1)] == [2, 3, 0, 1]


def test_weighted_picks_the_buyer_furthest_below_its_share() -> None:
    steps = [Step(0, "a", weight=Decimal(3)), Step(1, "b", weight=Decimal(1))]
    sales: dict[str, int] = {}
    picks = []
    for _ in range(400):
        first = by_deficit(steps, shares(steps), sales, sum(sales.values()))[0]
        picks.append(first.buyer_id)
        sales[first.buyer_id] = sales.get(first.buyer_id, 0) + 1
    assert (picks.count("a"), picks.count("b")) == (300, 100)
    assert picks[:4].count("b") == 1  # smooth: b gets one of every four from the start


def test_highest_price_orders_by_quote_then_priority() -> None:
    prices = {0: Decimal(10), 1: Decimal(25), 2: Decimal(10)}
    assert [s.index for s in by_price(STEPS, prices)] == [1, 2, 0, 3]


def test_performance_weighs_price_by_acceptance_and_returns_new_buyers_get_the_average() -> None:
    steps = STEPS[:3]
    prices = {0: Decimal(20), 1: Decimal(30), 2: Decimal(25)}
    records = {
        "a": BuyerRecord(offered=10, sold=9, returned=0),  # 20 x 0.9 = 18
        "b": BuyerRecord(offered=10, sold=5, returned=1),  # 30 x 0.5 x 0.8 = 12
    }
    expected = expected_revenue(steps, prices, records)
    assert expected == {0: Decimal("18.0"), 1: Decimal("12.0"), 2: Decimal("15.0")}
    assert [s.buyer_id for s in by_price(steps, expected)] == ["a", "c", "b"]


def test_auction_drops_bids_under_the_minimum_and_orders_the_rest() -> None:
    bids = {0: Decimal(5), 1: Decimal(9), 2: Decimal(7)}
    assert [s.index for s in by_bid(STEPS, bids, Decimal(0))] == [1, 2, 0]
    assert [s.index for s in by_bid(STEPS, bids, Decimal(6))] == [1, 2]


def test_pings_leave_out_names_emails_phones_and_street_addresses() -> None:
    fields = parse_lead(
        {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@example.com",
            "phone_1": "5125550142",
            "address_1": "1 Main St",
            "state": "CA",
            "postal_code": "90210",
            "work_phone": "5125550199",
        },
        {"work_phone": "phone"},
    )
    assert sorted(without_pii(fields)) == ["postal_code", "state"]
