"""Money: Decimal dollars in the domain, integer micros in storage, google.type.Money on wire."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS = 1_000_000
NANOS_PER_MICRO = 1_000
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
MAX_PRICE = Decimal("1000000")


def cents(amount: Decimal) -> Decimal:
    """Round to whole cents, half up, as a lead business bills."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def parse_amount(value: object) -> Decimal | None:
    """A decimal amount from user input ("12.5", 12, "$1,000"), or None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        value = repr(value)  # the shortest text that round-trips, not the binary expansion
    text = str(value).strip().replace(",", "").removeprefix("$")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def is_price(amount: Decimal | None) -> bool:
    """Whether an amount may be used as a price (0 to 1,000,000 inclusive)."""
    return amount is not None and ZERO <= amount <= MAX_PRICE


def to_micros(amount: Decimal) -> int:
    return int((amount * MICROS).to_integral_value(rounding=ROUND_HALF_UP))


def from_micros(micros: int) -> Decimal:
    return cents(Decimal(micros) / MICROS)


def format_money(amount: Decimal) -> str:
    """Two decimal places, as reports and responses show money."""
    return f"{cents(amount):.2f}"
