"""Money: Decimal dollars, integer micros, google.type.Money."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadflow.money import cents, format_money, from_micros, is_price, parse_amount, to_micros
from leadflow.wire import from_proto, to_proto

AMOUNTS = st.decimals(min_value=-1_000_000, max_value=1_000_000, places=2, allow_nan=False)


@given(AMOUNTS)
def test_proto_round_trip_is_exact(amount: Decimal) -> None:
    assert from_proto(to_proto(amount)) == amount


@given(AMOUNTS)
def test_micros_round_trip_is_exact(amount: Decimal) -> None:
    assert from_micros(to_micros(amount)) == amount


def test_negative_money_has_units_and_nanos_of_the_same_sign() -> None:
    money = to_proto(Decimal("-12.34"))
    assert (money.units, money.nanos, money.currency_code) == (-12, -340_000_000, "USD")


def test_cents_round_half_up() -> None:
    assert cents(Decimal("0.005")) == Decimal("0.01")
    assert cents(Decimal("2.675")) == Decimal("2.68")


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("12.5", Decimal("12.5")),
        ("$1,000", Decimal("1000")),
        (7, Decimal(7)),
        (0.1, Decimal("0.1")),
    ],
)
def test_amounts_are_read_without_float_artifacts(text: object, amount: Decimal) -> None:
    assert parse_amount(text) == amount


@pytest.mark.parametrize("text", ["abc", "", None, True, "NaN", "Infinity"])
def test_things_that_are_not_amounts_are_none(text: object) -> None:
    assert parse_amount(text) is None


def test_prices_are_between_zero_and_a_million() -> None:
    assert is_price(Decimal(0)) and is_price(Decimal(1_000_000))
    assert not is_price(Decimal("-0.01")) and not is_price(Decimal("1000000.01"))
    assert not is_price(None)


def test_money_is_shown_with_two_places() -> None:
    assert format_money(Decimal("15")) == "15.00"
