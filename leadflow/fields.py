"""Lead field types: parse submitted values into typed, JSON-serialisable field dicts.

Every parsed value is a plain dict ``{"kind", "raw", "normal", "valid", ...components}`` so it
can be stored, sent over gRPC as JSON and read by rules and templates without custom classes.

Decisions (beyond SPEC section 4):

- An invalid value is data, never an exception: ``valid`` is False and ``normal`` is the trimmed
  raw text (an invalid phone or email that still has parts keeps them, as LeadConduit's do).
  Empty or missing values give ``{"kind", "raw": "", "normal": "", "valid": False}`` (``raw``
  keeps whitespace as sent).
- ``raw`` is the value as given, as text: ``True`` becomes ``"true"``, numbers lose float
  artifacts. An unknown type name parses as ``string``.
- Text types (string, city, first_name, last_name) keep the text as sent, as LeadConduit's.
- phone: NANP numbers (US, CA and the other +1 regions) normalise to 10 digits, the extension
  after an ``x`` (``5127891111x44``) and in ``extension``. Other countries normalise to the
  national significant number, with ``country_code`` holding the ISO region. The ``type``
  component (home/work/mobile, from a trailing ``h``/``w``/``c``/``m`` hint) keeps LeadConduit's
  name, so every parsed value names its own field type ``kind``. Plain NANP numbers skip
  phonenumbers' full parser; validity is still phonenumbers' verdict (cached per area code and
  exchange).
- email: lower-cased as a whole; never any DNS lookup. ``tld`` is the last label, or the last two
  for a few well-known second-level registries (``co.uk``); ``host`` is the domain without it.
- postal_code: US ``12345`` / ``12345-6789``, Canadian ``K1A 0B1`` (``fsa``/``ldu``
  components, ``zip`` None) and UK postcodes, as LeadConduit's patterns read them. A bare
  integer 2134 from JSON is zero-padded to ``02134``.
- state: US states, DC, territories and Canadian provinces, by code, full name or common
  abbreviation (``Calif.``), normalise to the 2-letter code; anything else is invalid.
- number: ``normal`` is a decimal string (``"$1,000.50"`` -> ``"1000.50"``); ``number`` is an
  int or float for convenience; use ``normal`` (or :func:`to_decimal`) for exact arithmetic.
- range: ``"700-749"``, ``"700 to 749"``, ``"10+"``, ``"700"``. ``avg`` is the mean, ``mid`` the
  mean truncated to an int; an open range (``10+``) has ``max``, ``avg`` and ``mid`` None.
- date/dob: ISO, US ``M/D/YYYY`` (also with ``-`` or ``.``, and day-first when the first number
  cannot be a month), ``YYYYMMDD``/``MMDDYYYY``, and month names. ``normal`` is LeadConduit's
  record of the day, ``2014-06-02T00:00:00.000Z``; templates and rules read the date. Two-digit
  years pivot on today's year. dob ``age`` is in years rounded down to a tenth on ``today`` (a
  parameter, default the local date); a dob in the future or more than 130 years ago is invalid.
- ip: ``is_ipv4``, ``version``, ``is_private`` components; IPv6 may be bracketed.
- url: http(s) only; a value without a scheme is read as ``http://``.
- trustedform_url: an http(s) URL on ``cert.trustedform.com`` or ``ping.trustedform.com`` with a
  certificate id; ``normal`` is ``https://<host>/<cert_id>``. The certificate itself (age, type)
  is not checked here: that needs TrustedForm's API.
- :func:`parse_lead` keeps the vendor's keys exactly as given (LeadConduit field ids are lower
  snake case already; we do not lower-case, so ``Phone_1`` is a custom field). Nested dicts
  (from ``a.b=1``) become dicts of parsed values, typed by a dotted ``custom_types`` key
  (``"a.b": "number"``) or as ``string``; a list becomes the list of its elements' ``normal``
  values. It always parses from raw data: a dict that looks like a parsed field is not trusted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import phonenumbers
from disposable_email_domains import blocklist as disposable_domains
from email_validator import EmailNotValidError, validate_email
from publicsuffixlist import PublicSuffixList

__all__ = [
    "FIELD_TYPES",
    "STANDARD_FIELDS",
    "date_normal",
    "date_text",
    "is_field",
    "parse_boolean",
    "parse_date",
    "parse_lead",
    "parse_value",
    "to_decimal",
]

STANDARD_FIELDS: Final[dict[str, str]] = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone_1": "phone",
    "phone_2": "phone",
    "address_1": "street",
    "address_2": "string",
    "city": "city",
    "state": "state",
    "postal_code": "postal_code",
    "country": "string",
    "dob": "dob",
    "gender": "gender",
    "ip_address": "ip",
    "trustedform_cert_url": "trustedform_url",
    "comments": "string",
}

FIELD_TYPES: Final[frozenset[str]] = frozenset(
    {
        "string",
        "phone",
        "email",
        "postal_code",
        "state",
        "number",
        "range",
        "boolean",
        "date",
        "dob",
        "gender",
        "ip",
        "url",
        "trustedform_url",
        "city",
        "first_name",
        "last_name",
        "street",
        "ssn",
        "time",
        "credential",
    }
)
# Types that read as plain text, with LeadConduit's names (their operator lists differ).
_TEXT_TYPES: Final = frozenset({"string", "city", "first_name", "last_name"})

Field = dict[str, object]


def is_field(value: object) -> bool:
    """True when ``value`` is a parsed field dict (as made by :func:`parse_value`)."""
    return (
        isinstance(value, dict)
        and "valid" in value
        and "normal" in value
        and isinstance(value.get("kind"), str)
    )


# --- shared helpers -------------------------------------------------------------------------


def _text(raw: object) -> str:
    """The raw value as text; floats and Decimals without artifacts or exponents."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        try:
            return str(raw)
        except ValueError:  # beyond Python's int-to-text digit limit: no real lead sends one
            return "<integer too large>"
    if isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            return str(raw)
        return _decimal_text(Decimal(repr(raw)))
    if isinstance(raw, Decimal):
        return _decimal_text(raw) if raw.is_finite() else str(raw)
    return str(raw)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return "0" if text == "-0" else text


_INT64: Final = 2**63


def _json_number(value: Decimal) -> int | float | None:
    """An exact int when integral and int64-sized, else the nearest float; None if unbounded.

    JSON has no decimals, and orjson refuses integers beyond 64 bits.
    """
    if value == value.to_integral_value() and -_INT64 < value < _INT64:
        return int(value)
    number = float(value)
    return None if number in (float("inf"), float("-inf")) else number


def _invalid(type_name: str, raw: str) -> Field:
    return {"kind": type_name, "raw": raw, "normal": raw.strip(), "valid": False}


# --- numbers --------------------------------------------------------------------------------

# Every pattern in this module meets vendor text of up to 1 MiB, so each runs in linear time on
# any input (bench/parse_hostile.py, tests/unit/test_parse_hostile.py): no two adjacent
# quantifiers over characters both accept (`\d+\.?\d*` retried every split of a digit run: 40,000
# digits and a letter took seconds), and a run is possessive (`*+`) where what follows it cannot
# start with a character of the run, so a failure is not retried at every shorter run.
_NUMBER = re.compile(r"[-+]?(?:\d++(?:\.\d*+)?|\.\d++)")
# The same number with whitespace, commas and `$` anywhere: checked before anything is removed.
_NUMBER_PADDED = re.compile(
    r"[\s,$]*+[-+]?[\s,$]*+(?:\d[\d\s,$]*+(?:\.[\d\s,$]*+)?|\.[\s,$]*+\d[\d\s,$]*+)"
)
_ASCII_PADDING: Final = str.maketrans("", "", " \t\n\v\f\r\x1c\x1d\x1e\x1f,$")


def _unpadded(text: str) -> str:
    """``text`` without whitespace, commas and ``$`` (C-speed passes, not a regex sub)."""
    if text.isascii():
        return text.translate(_ASCII_PADDING)
    return "".join(text.split()).replace(",", "").replace("$", "")


def to_decimal(value: object) -> Decimal | None:
    """A finite Decimal from a number or numeric text ("$1,000.50"), else None. Never raises."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, float):
        return Decimal(repr(value)) if value == value and abs(value) != float("inf") else None
    if not isinstance(value, str):
        return None
    if not _NUMBER_PADDED.fullmatch(value):
        return None
    text = _unpadded(value)
    if not _NUMBER.fullmatch(text):  # pragma: no cover - the padded pattern admits only these
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        return None


def _parse_number(raw: str, original: object) -> Field:
    value = to_decimal(original if not isinstance(original, str) else raw)
    number = None if value is None else _json_number(value)
    if value is None or number is None:
        return _invalid("number", raw)
    return {
        "kind": "number",
        "raw": raw,
        # As LeadConduit: no trailing zeros after the point ("$1,000.50" -> "1000.5").
        "normal": _decimal_text(value.normalize()),
        "valid": True,
        "number": number,
    }


_NUM = r"-?\d[\d,]*+(?:\.\d++)?|-?\.\d++"
_RANGE_OPEN = re.compile(rf"\$?\s*+({_NUM})\s*+\+")
_RANGE_PAIR = re.compile(
    rf"\$?\s*+({_NUM})\s*+(?:-|\u2013|\u2014|to|_)\s*+(?:\$\s*+)?({_NUM})", re.IGNORECASE
)


# An unreadable range still has LeadConduit's components, all None.
_NO_RANGE: Final = {"min": None, "max": None, "avg": None, "mid": None}


def _parse_range(raw: str) -> Field:
    text = raw.strip()
    low: Decimal | None
    high: Decimal | None
    m = _RANGE_OPEN.fullmatch(text)
    if m:
        low, high = to_decimal(m.group(1)), None
        if low is None:
            return {**_invalid("range", raw), **_NO_RANGE}
        normal = f"{_decimal_text(low)}+"
    else:
        m = _RANGE_PAIR.fullmatch(text)
        if m:
            low, high = to_decimal(m.group(1)), to_decimal(m.group(2))
        else:
            low = high = to_decimal(text)
        if low is None or high is None:
            return {**_invalid("range", raw), **_NO_RANGE}
        if low > high:
            low, high = high, low
        normal = (
            _decimal_text(low) if low == high else f"{_decimal_text(low)}-{_decimal_text(high)}"
        )
    field: Field = {
        "kind": "range",
        "raw": raw,
        "normal": normal,
        "valid": True,
        "min": _json_number(low),
        "max": None,
        "avg": None,
        "mid": None,
    }
    if high is not None:
        avg = (low + high) / 2
        field["max"] = _json_number(high)
        field["avg"] = _json_number(avg)
        field["mid"] = _json_number(avg.to_integral_value(ROUND_DOWN))
    bounded = ("min", "max", "avg", "mid") if high is not None else ("min",)
    if any(field[key] is None for key in bounded):
        return {**_invalid("range", raw), **_NO_RANGE}  # beyond what a float can hold
    return field


# --- booleans -------------------------------------------------------------------------------

# LeadConduit's words; "on"/"off" are not among them (an HTML checkbox's "on" is no answer).
_TRUE_WORDS: Final = frozenset({"y", "yes", "true", "t", "1"})
_FALSE_WORDS: Final = frozenset({"n", "no", "false", "f", "0"})
_ALNUM_RUN = re.compile(r"[a-z0-9]+")
_LONGEST_WORD: Final = max(map(len, _TRUE_WORDS | _FALSE_WORDS))


def parse_boolean(value: object) -> bool | None:
    """True/False for yes/y/1/true/t and no/n/0/false/f (any case), else None."""
    if isinstance(value, bool):
        return value
    # The letters and digits of the text, read only until they are too many to be a word.
    word = ""
    for run in _ALNUM_RUN.finditer(_text(value).lower()):
        word += run.group()
        if len(word) > _LONGEST_WORD:
            return None
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def _parse_boolean(raw: str, original: object) -> Field:
    value = parse_boolean(original if isinstance(original, bool) else raw)
    if value is None:
        return _invalid("boolean", raw)
    return {"kind": "boolean", "raw": raw, "normal": value, "valid": True}


# --- dates ----------------------------------------------------------------------------------

_MONTHS: Final[dict[str, int]] = {}
for _i, _name in enumerate(
    (
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ),
    start=1,
):
    _MONTHS[_name] = _i
    _MONTHS[_name[:3]] = _i
_MONTHS["sept"] = 9

_DATE_ISO = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[t ]\S*+)?")
# A time after a US date is read past, as LeadConduit's forgiving parse does ("6/2/2014 10:30").
_DATE_US = re.compile(
    r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})(?:\s++\d{1,2}:\d{2}(?::\d{2})?+(?:\s*+[ap]m)?+)?+"
)
_DATE_8 = re.compile(r"\d{8}")
_DATE_MONTH_FIRST = re.compile(
    r"(?:[a-z]{3,9}\.?,?\s++)?([a-z]{3,9})\.?\s++(\d{1,2})(?:st|nd|rd|th)?,?\s++(\d{4})"
)
_DATE_DAY_FIRST = re.compile(r"(?:[a-z]{3,9}\.?,?\s++)?(\d{1,2})\s++([a-z]{3,9})\.?,?\s++(\d{4})")
# No format above has more than four words (weekday, month, day, year).
_DATE_MAX_WORDS: Final = 4


def _make_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _full_year(year_text: str, today: date) -> int:
    year = int(year_text)
    if len(year_text) == 2:
        century = today.year // 100 * 100
        year += century if year <= today.year % 100 else century - 100
    return year


def parse_date(value: object, today: date | None = None) -> date | None:
    """A calendar date from ISO, US (M/D/YYYY), compact or month-name text, else None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = _text(value).strip().lower()
    if not text or len(text.split(None, _DATE_MAX_WORDS)) > _DATE_MAX_WORDS:
        return None
    m = _DATE_ISO.fullmatch(text)
    if m:
        year, first, second = int(m.group(1)), int(m.group(2)), int(m.group(3))
        # Month first; LeadConduit also reads YYYY-DD-MM when the month cannot be one.
        return _make_date(year, first, second) or _make_date(year, second, first)
    m = _DATE_US.fullmatch(text)
    if m:
        year = _full_year(m.group(3), today or date.today())
        first, second = int(m.group(1)), int(m.group(2))
        # US order wins; day-first only when the first number cannot be a month.
        return _make_date(year, first, second) or _make_date(year, second, first)
    if _DATE_8.fullmatch(text):
        return _make_date(int(text[4:]), int(text[:2]), int(text[2:4])) or _make_date(
            int(text[:4]), int(text[4:6]), int(text[6:])
        )
    m = _DATE_MONTH_FIRST.fullmatch(text)
    if m and m.group(1) in _MONTHS:
        return _make_date(int(m.group(3)), _MONTHS[m.group(1)], int(m.group(2)))
    m = _DATE_DAY_FIRST.fullmatch(text)
    if m and m.group(2) in _MONTHS:
        return _make_date(int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)))
    return None


def date_normal(day: date) -> str:
    """A date's normal value as LeadConduit records it (its JSON form of midnight UTC);
    templates and rules read the calendar date, :func:`date_text`."""
    return f"{day.isoformat()}T00:00:00.000Z"


def date_text(field: Mapping[str, object]) -> str:
    """The calendar date (``YYYY-MM-DD``) of a valid date or dob field, as LeadConduit renders
    it in a delivery; any other field's normal value as text."""
    return str(field["normal"])[:10] if field["valid"] else str(field["normal"])


def _invalid_date(type_name: str, raw: str) -> Field:
    # A dob is unmasked whether or not it reads, as LeadConduit's.
    field = _invalid(type_name, raw)
    return {**field, "masked": False} if type_name == "dob" else field


def _parse_date(type_name: str, raw: str, original: object, today: date | None) -> Field:
    day = parse_date(original if isinstance(original, date) else raw, today)
    if day is None:
        return _invalid_date(type_name, raw)
    field: Field = {"kind": type_name, "raw": raw, "normal": date_normal(day), "valid": True}
    field["year"] = day.year
    if type_name == "dob":
        now = today or date.today()
        age = now.year - day.year - ((now.month, now.day) < (day.month, day.day))
        if day > now or age > 130:
            return _invalid_date(type_name, raw)
        field["age"] = _fractional_age(day, now, age)
        field["masked"] = False
    return field


def _fractional_age(born: date, today: date, years: int) -> float:
    """Age in years rounded down to a tenth, at most x.9 (LeadConduit's dob.age: 17.5 > 17)."""
    birthday = _make_date(today.year, born.month, born.day) or date(today.year, 3, 1)
    if birthday > today:
        birthday = _make_date(today.year - 1, born.month, born.day) or date(today.year - 1, 3, 1)
    fraction = min((today - birthday).days / 365.2425, 0.9)
    return years + int(fraction * 10) / 10


# --- phones ---------------------------------------------------------------------------------

# A type hint ("512-555-1234 h") or an extension ("x123") ends the text, after any run of
# spaces. Searching the text for `\s*...$` tries every position, each rescanning the run of
# spaces after it (a 2,000-character phone took a minute); these are the same patterns written
# backwards and matched once at the start of the reversed text. Matching from the end finds the
# longest such tail, which is where a forward search finds it: at its leftmost start.
_PHONE_HINT_REVERSED = re.compile(r"\s*+\)?([hwcm])\(?\s*(?=[\d\s)])", re.IGNORECASE)
_PHONE_HINTS: Final = {"h": "home", "w": "work", "c": "mobile", "m": "mobile"}
_PHONE_EXT_REVERSED = re.compile(
    r"\s*+(\d{1,7})(?:\s*+:)?\s*+(?:\.?(?:noisnetxe|txe)|\.?xe|x|#)(?:\s*+[,;])?\s*+", re.I
)
_PHONE_NANP = re.compile(
    r"\s*+(?:\+?\s*+1[\s.-]*+)?\(?([2-9]\d{2})\)?[\s.-]*+([2-9]\d{2})[\s.-]*+(\d{4})\s*+"
)
# LeadConduit's toll-free list (833 is toll-free too, but its rules would not say so).
_TOLLFREE_AREAS: Final = frozenset({"800", "844", "855", "866", "877", "888"})


@lru_cache(maxsize=65536)
def _nanp_region(npa_nxx: str) -> str | None:
    """phonenumbers' region for a NANP area code and exchange, or None when not valid.

    What `parse("+1<npa_nxx>4567")`, `is_valid_number` and `region_code_for_number` answer, at
    half their cost (a miss was ~55 us, and most leads' exchanges miss the cache): the number
    is built as parse builds it (country code 1, the ten digits), and its region is looked up
    once (is_valid_number looks it up, then is_valid_number_for_region checks it)."""
    number = phonenumbers.PhoneNumber(country_code=1, national_number=int(f"{npa_nxx}4567"))
    region = phonenumbers.region_code_for_number(number)
    if region is None or not phonenumbers.is_valid_number_for_region(number, region):
        return None
    return region


def _phone_normal(digits: str, extension: str | None) -> str:
    # LeadConduit keeps the extension in the normal value: 5127891111x44.
    return f"{digits}x{extension}" if extension else digits


def _nanp_field(
    raw: str, region: str, digits: str, extension: str | None, hint: str | None
) -> Field:
    area = digits[:3]
    return {
        "kind": "phone",
        "raw": raw,
        "normal": _phone_normal(digits, extension),
        "valid": True,
        "area": area,
        "exchange": digits[3:6],
        "line": digits[6:],
        "number": digits[3:],
        "extension": extension,
        # LeadConduit names the region of the calling code (US for every +1 number); the
        # number's own region (CA for 416, PR for 787) is ``region``.
        "country_code": "US",
        "country_calling_code": 1,
        "region": region,
        "type": hint,
        "is_tollfree": area in _TOLLFREE_AREAS,
    }


def _invalid_phone(raw: str, number: phonenumbers.PhoneNumber, hint: str | None) -> Field:
    """A number phonenumbers reads but does not call valid (555-555-5555): invalid, with the
    digits and parts LeadConduit reports for it, so a rule or mapping on them sees the same."""
    nsn = phonenumbers.national_significant_number(number)
    if not nsn or "*" in raw:  # a masked number's digits are not its number
        return _invalid("phone", raw)
    area_length = phonenumbers.length_of_national_destination_code(number)
    nanp = number.country_code == 1
    # LeadConduit cuts a +1 subscriber number without an area code to seven digits.
    subscriber = nsn[area_length:][:7] if nanp else nsn[area_length:]
    area = nsn[:area_length] or None
    return {
        "kind": "phone",
        "raw": raw,
        "normal": _phone_normal(nsn, number.extension),
        "valid": False,
        "area": area,
        "exchange": subscriber[:3] if nanp else None,
        "line": subscriber[3:] if nanp else None,
        "number": subscriber,
        "extension": number.extension or None,
        "country_code": phonenumbers.region_code_for_country_code(number.country_code or 0),
        "country_calling_code": number.country_code,
        "type": hint,
        "is_tollfree": nanp and area in _TOLLFREE_AREAS,
    }


def _parse_phone(raw: str) -> Field:
    text = raw.strip()
    if not text:
        return _invalid("phone", raw)
    hint = None
    m = _PHONE_HINT_REVERSED.match(text[::-1])
    if m:
        hint = _PHONE_HINTS[m.group(1).lower()]
        text = text[: len(text) - m.end()]
    body, extension = text, None
    m = _PHONE_EXT_REVERSED.match(text[::-1])
    if m and m.end() < len(text):
        body, extension = text[: len(text) - m.end()], m.group(1)[::-1]
    m = _PHONE_NANP.fullmatch(body)
    if m:
        digits = m.group(1) + m.group(2) + m.group(3)
        region = _nanp_region(digits[:6])
        if region is not None:
            return _nanp_field(raw, region, digits, extension, hint)
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return _invalid("phone", raw)
    if not phonenumbers.is_valid_number(number):
        return _invalid_phone(raw, number, hint)
    region = phonenumbers.region_code_for_number(number) or ""
    extension = number.extension or extension
    nsn = phonenumbers.national_significant_number(number)
    if number.country_code == 1 and len(nsn) == 10:
        return _nanp_field(raw, region, nsn, extension, hint)
    area_length = phonenumbers.length_of_national_destination_code(number)
    return {
        "kind": "phone",
        "raw": raw,
        "normal": _phone_normal(nsn, extension),
        "valid": True,
        "area": nsn[:area_length] or None,
        "exchange": None,
        "line": None,
        "number": nsn[area_length:],
        "extension": extension,
        "country_code": phonenumbers.region_code_for_country_code(number.country_code or 0),
        "country_calling_code": number.country_code,
        "region": region,
        "type": hint,
        "is_tollfree": False,
    }


# --- emails ---------------------------------------------------------------------------------

_EMAIL_FAST = re.compile(
    r"([a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,63}))"
)
_SPECIAL_USE_TLDS: Final = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
_FREE_EMAIL_DOMAINS: Final = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "ymail.com",
        "rocketmail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "outlook.com",
        "live.com",
        "msn.com",
        "aol.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "mail.com",
        "gmx.com",
        "gmx.net",
        "gmx.de",
        "gmx.at",
        "t-online.de",
        "orange.fr",
        "free.fr",
        "laposte.net",
        "libero.it",
        "hotmail.fr",
        "hotmail.de",
        "hotmail.it",
        "hotmail.es",
        "live.co.uk",
        "yahoo.fr",
        "yahoo.de",
        "yahoo.ca",
        "yahoo.com.au",
        "rediffmail.com",
        "bigpond.com",
        "shaw.ca",
        "rogers.com",
        "sympatico.ca",
        "optonline.net",
        "frontier.com",
        "windstream.net",
        "roadrunner.com",
        "rr.com",
        "mindspring.com",
        "netzero.net",
        "aim.com",
        "zoho.com",
        "protonmail.com",
        "proton.me",
        "yandex.com",
        "yandex.ru",
        "mail.ru",
        "comcast.net",
        "att.net",
        "sbcglobal.net",
        "verizon.net",
        "cox.net",
        "charter.net",
        "bellsouth.net",
        "earthlink.net",
        "juno.com",
        "fastmail.com",
        "hushmail.com",
        "tutanota.com",
        "qq.com",
        "163.com",
        "web.de",
        "inbox.com",
    }
)


@lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package: no download, read once per process.
    return PublicSuffixList(only_icann=True)


@lru_cache(maxsize=4096)
def _public_suffix(domain: str) -> str:
    """The domain's public suffix (``co.uk``), else its last label."""
    return _public_suffixes().publicsuffix(domain) or domain.rsplit(".", 1)[-1]


def _email_field(raw: str, user: str, domain: str) -> Field:
    """``normal`` is lower case; the other parts keep the case sent, as LeadConduit's do.

    ``tld`` and ``host`` split at the last dot, as LeadConduit's (``co.uk`` gives tld ``uk``,
    host ``b.co``); ``public_suffix`` (``co.uk``) and ``registered_domain`` (``b.co.uk``) are ours.
    """
    normal_domain = domain.lower()
    host, _, tld = domain.rpartition(".")
    suffix = _public_suffix(normal_domain)
    labels = normal_domain[: -len(suffix) - 1].rsplit(".", 1) if normal_domain != suffix else [""]
    disposable = normal_domain in disposable_domains
    return {
        "kind": "email",
        "raw": raw,
        "normal": f"{user}@{domain}".lower(),
        "valid": True,
        "user": user,
        "domain": domain,
        "host": host,
        "tld": tld,
        "public_suffix": suffix,
        "registered_domain": f"{labels[-1]}.{suffix}" if labels[-1] else suffix,
        # As LeadConduit: a disposable address is free too.
        "is_free": disposable or normal_domain in _FREE_EMAIL_DOMAINS,
        "is_disposable": disposable,
    }


# email-validator refuses an address over 254 characters after Unicode normalisation, which can
# shorten text about fourfold; longer text is refused before its (linear but slow) checks.
_EMAIL_MAX_CHARS: Final = 1024


def _parse_email(raw: str) -> Field:
    text = raw.strip().lower()
    if not text or len(text) > _EMAIL_MAX_CHARS:
        return _invalid("email", raw)
    m = _EMAIL_FAST.fullmatch(text)
    if m and len(m.group(1)) <= 64 and len(text) <= 254 and m.group(3) not in _SPECIAL_USE_TLDS:
        sent = raw.strip()
        if len(sent) != len(text):  # lower-casing changed the length: no case to keep
            sent = text
        return _email_field(raw, sent[: m.end(1)], sent[m.start(2) : m.end(2)])
    # Unusual addresses (international, quoted) go to email-validator; DNS stays off.
    try:
        result = validate_email(text, check_deliverability=False)
    except (EmailNotValidError, ValueError, UnicodeError):
        return _invalid_email(raw)
    return _email_field(raw, result.local_part.lower(), result.domain.lower())


def _invalid_email(raw: str) -> Field:
    """Invalid; when the text is still one user and one domain (``ada@localhost``, an address
    LeadConduit accepts), with their parts, so a rule on ``email.domain`` sees them."""
    sent = raw.strip()
    user, at, domain = sent.partition("@")
    if not (user and at and domain) or "@" in domain or any(ch.isspace() for ch in sent):
        return _invalid("email", raw)
    return {**_email_field(raw, user, domain), "valid": False}


# --- postal codes, states, gender -----------------------------------------------------------

# `\s*+(?:-\s*+)?`, not `\s*-?\s*`: two adjacent `\s*` share every split of a run of spaces.
# As LeadConduit's: a ZIP may end in its separator ("78751-"); a Canadian code has no hyphen.
_ZIP_US = re.compile(r"(\d{5})\s*+(?:-\s*+)?(\d{4})?")
_ZIP_CA = re.compile(r"([a-z]\d[a-z])\s*+(\d[a-z]\d)", re.IGNORECASE)
# UK: outward code (A9, A99, AA9, AA99, A9A, AA9A) and inward code (9AA), as LeadConduit reads it.
_POSTCODE_GB = re.compile(r"([a-z]{1,2}\d{1,2}[a-z\d]?)\s*+(\d[a-z]{2})", re.IGNORECASE)


def _parse_postal_code(raw: str, original: object) -> Field:
    text = raw.strip()
    if isinstance(original, int) and not isinstance(original, bool) and 0 < original < 100000:
        text = f"{original:05d}"  # JSON numbers drop New England's leading zeros
    m = _ZIP_US.fullmatch(text)
    if m:
        zip5, four = m.group(1), m.group(2)
        normal = f"{zip5}-{four}" if four else zip5
        return {
            "kind": "postal_code",
            "raw": raw,
            "normal": normal,
            "valid": True,
            "code": text.upper(),
            "zip": zip5,
            "four": four,
            "country_code": "US",
        }
    m = _ZIP_CA.fullmatch(text)
    if m:
        fsa, ldu = m.group(1).upper(), m.group(2).upper()
        return {
            "kind": "postal_code",
            "raw": raw,
            "normal": f"{fsa} {ldu}",
            "valid": True,
            "code": text.upper(),
            "zip": None,
            "four": None,
            "country_code": "CA",
            "fsa": fsa,
            "ldu": ldu,
            "district": fsa[0],
        }
    m = _POSTCODE_GB.fullmatch(text)
    if m:
        outcode, incode = m.group(1).upper(), m.group(2).upper()
        return {
            "kind": "postal_code",
            "raw": raw,
            "normal": f"{outcode} {incode}",
            "valid": True,
            "code": text.upper(),
            "zip": None,
            "four": None,
            "country_code": "GB",
            "outcode": outcode,
            "incode": incode,
        }
    return _invalid("postal_code", raw)


_STATES: Final[dict[str, str]] = {
    "AL": "Alabama",
    "AK": "Alaska",
    "AZ": "Arizona",
    "AR": "Arkansas",
    "CA": "California",
    "CO": "Colorado",
    "CT": "Connecticut",
    "DE": "Delaware",
    "DC": "District of Columbia",
    "FL": "Florida",
    "GA": "Georgia",
    "HI": "Hawaii",
    "ID": "Idaho",
    "IL": "Illinois",
    "IN": "Indiana",
    "IA": "Iowa",
    "KS": "Kansas",
    "KY": "Kentucky",
    "LA": "Louisiana",
    "ME": "Maine",
    "MD": "Maryland",
    "MA": "Massachusetts",
    "MI": "Michigan",
    "MN": "Minnesota",
    "MS": "Mississippi",
    "MO": "Missouri",
    "MT": "Montana",
    "NE": "Nebraska",
    "NV": "Nevada",
    "NH": "New Hampshire",
    "NJ": "New Jersey",
    "NM": "New Mexico",
    "NY": "New York",
    "NC": "North Carolina",
    "ND": "North Dakota",
    "OH": "Ohio",
    "OK": "Oklahoma",
    "OR": "Oregon",
    "PA": "Pennsylvania",
    "RI": "Rhode Island",
    "SC": "South Carolina",
    "SD": "South Dakota",
    "TN": "Tennessee",
    "TX": "Texas",
    "UT": "Utah",
    "VT": "Vermont",
    "VA": "Virginia",
    "WA": "Washington",
    "WV": "West Virginia",
    "WI": "Wisconsin",
    "WY": "Wyoming",
    "AS": "American Samoa",
    "GU": "Guam",
    "MP": "Northern Mariana Islands",
    "PR": "Puerto Rico",
    "VI": "U.S. Virgin Islands",
    # The freely associated states USPS serves, on LeadConduit's list too.
    "FM": "Federated States of Micronesia",
    "MH": "Marshall Islands",
    "PW": "Palau",
    "AA": "Armed Forces Americas",
    "AE": "Armed Forces Europe",
    "AP": "Armed Forces Pacific",
    "AB": "Alberta",
    "BC": "British Columbia",
    "MB": "Manitoba",
    "NB": "New Brunswick",
    "NL": "Newfoundland and Labrador",
    "NS": "Nova Scotia",
    "NT": "Northwest Territories",
    "NU": "Nunavut",
    "ON": "Ontario",
    "PE": "Prince Edward Island",
    "QC": "Quebec",
    "SK": "Saskatchewan",
    "YT": "Yukon",
}
_STATE_ALIASES: Final[dict[str, str]] = {
    "ala": "AL",
    "ariz": "AZ",
    "ark": "AR",
    "calif": "CA",
    "cal": "CA",
    "colo": "CO",
    "conn": "CT",
    "del": "DE",
    "fla": "FL",
    "ill": "IL",
    "ind": "IN",
    "kan": "KS",
    "kans": "KS",
    "mass": "MA",
    "mich": "MI",
    "minn": "MN",
    "miss": "MS",
    "mont": "MT",
    "neb": "NE",
    "nebr": "NE",
    "nev": "NV",
    "okla": "OK",
    "ore": "OR",
    "penn": "PA",
    "penna": "PA",
    "tenn": "TN",
    "tex": "TX",
    "wash": "WA",
    "wva": "WV",
    "wis": "WI",
    "wisc": "WI",
    "wyo": "WY",
    "washington dc": "DC",
    "washington d c": "DC",
    "virgin islands": "VI",
    "us virgin islands": "VI",
    "newfoundland": "NL",
    "quebec": "QC",
    "québec": "QC",
}
_STATE_LOOKUP: Final[dict[str, str]] = {
    **{code.lower(): code for code in _STATES},
    **{name.lower().replace(".", ""): code for code, name in _STATES.items()},
    **_STATE_ALIASES,
}
# No state, province or alias has more than three words.
_STATE_MAX_WORDS: Final = 3


def _parse_state(raw: str) -> Field:
    words = raw.replace(".", "").split(None, _STATE_MAX_WORDS)
    code = _STATE_LOOKUP.get(" ".join(words).lower()) if len(words) <= _STATE_MAX_WORDS else None
    if code is None:
        # LeadConduit names an unknown state by its text (and calls it valid: we do not).
        return {**_invalid("state", raw), "name": raw}
    return {"kind": "state", "raw": raw, "normal": code, "valid": True, "name": _STATES[code]}


# LeadConduit's words only: a rule on `gender.abbr` copied from it sees the same values.
_GENDERS: Final[dict[str, str]] = {
    "m": "male",
    "male": "male",
    "f": "female",
    "female": "female",
    "o": "other",
    "other": "other",
}
_GENDER_ABBR: Final = {"male": "M", "female": "F", "other": "O"}


def _parse_gender(raw: str) -> Field:
    gender = _GENDERS.get(raw.strip().lower())
    if gender is None:
        return {**_invalid("gender", raw), "abbr": None}
    return {
        "kind": "gender",
        "raw": raw,
        "normal": gender,
        "valid": True,
        "abbr": _GENDER_ABBR[gender],
    }


# --- ip, url, trustedform -------------------------------------------------------------------


# The longest address ipaddress reads: six hextets and a dotted quad. Only an IPv6 scope id
# (after `%`) may be longer; anything else longer is refused before ipaddress splits it and
# quotes it whole in its error message.
_IP_MAX_CHARS: Final = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(text) > _IP_MAX_CHARS and "%" not in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ipv6_format(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """LeadConduit's IPv6 form: an IPv4 address a.b.c.d is ffff::<ab>:<cd> (not ::ffff:a.b.c.d),
    written here directly: building an IPv6Address per lead cost more than parsing the lead."""
    if address.version == 6:
        return address.compressed
    value = int(address)
    high, low = value >> 16, value & 0xFFFF
    if high:
        return f"ffff::{high:x}:{low:x}"
    return f"ffff::{low:x}" if low else "ffff::"


def _parse_ip(raw: str) -> Field:
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    address = _ip_address(text)
    if address is None:
        return _invalid("ip", raw)
    return {
        "kind": "ip",
        "raw": raw,
        "normal": address.compressed,
        "valid": True,
        "is_ipv4": address.version == 4,
        "version": address.version,
        "is_private": address.is_private,
        "ipv6_format": _ipv6_format(address),
    }


_HOSTNAME_CHARS = re.compile(r"[a-z0-9.-]++")


def _is_hostname(host: str) -> bool:
    """Dot-separated labels of letters, digits and inner hyphens. Substring tests, not the
    nested ``label(\\.label)*`` regex, which retried every label on a failure."""
    return (
        _HOSTNAME_CHARS.fullmatch(host) is not None
        and host[0] not in ".-"
        and host[-1] not in ".-"
        and ".." not in host
        and ".-" not in host
        and "-." not in host
    )


_URL_BAD_CHARS = re.compile(r"[\s<>\"\\^`{|}]")


def _parse_url(raw: str, type_name: str = "url") -> Field:
    text = raw.strip()
    if not text or _URL_BAD_CHARS.search(text):
        return _invalid(type_name, raw)
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return _invalid(type_name, raw)
    host = (parts.hostname or "").lower()
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return _invalid(type_name, raw)
    if not _is_hostname(host) and _ip_address(host) is None:
        return _invalid(type_name, raw)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{hostport.lower()}"
    path = parts.path or "/"  # as a browser (and LeadConduit) writes it: http://a.com/
    # Components as LeadConduit's (WHATWG URL): host with its port, empty strings when absent,
    # the hash with its "#".
    return {
        "kind": type_name,
        "raw": raw,
        "normal": urlunsplit((scheme, netloc, path, parts.query, parts.fragment)),
        "valid": True,
        "protocol": scheme,
        "host": f"{host}:{port}" if port is not None else host,
        "port": str(port) if port is not None else "",
        "path": path,
        "query": parts.query,
        "hash": f"#{parts.fragment}" if parts.fragment else "",
    }


_TRUSTEDFORM_HOSTS: Final = frozenset({"cert.trustedform.com", "ping.trustedform.com"})
_CERT_ID = re.compile(r"[A-Za-z0-9._~-]{1,255}")
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_MIN_ENCRYPTED_ID: Final = 50


def _parse_trustedform_url(raw: str) -> Field:
    url = _parse_url(raw, "trustedform_url")
    # LeadConduit refuses a certificate URL that is not https.
    if not url["valid"] or url["protocol"] != "https" or url["host"] not in _TRUSTEDFORM_HOSTS:
        return _invalid("trustedform_url", raw)
    cert_id = str(url["path"]).strip("/")
    if not _CERT_ID.fullmatch(cert_id):
        return _invalid("trustedform_url", raw)
    # A legacy id is 40 hex digits; newer ids are encrypted with TrustedForm's key (longer).
    # Their type and age come from TrustedForm's API (the trustedform enhancement), not from
    # the URL; LeadConduit reports no type for a legacy id either.
    cert_type = None
    if _HEX40.fullmatch(cert_id):
        cert_id = cert_id.lower()
    elif len(cert_id) < _MIN_ENCRYPTED_ID:
        return _invalid("trustedform_url", raw)
    return {
        "kind": "trustedform_url",
        "raw": raw,
        "normal": f"https://{url['host']}/{cert_id}",
        "valid": True,
        "host": url["host"],
        "path": url["path"],
        "cert_id": cert_id,
        "type": cert_type,
        "is_web": cert_type == "web",
        "is_mobile": False,
        "is_facebook": False,
        "is_masked": False,
        "age": None,
    }


# --- names, streets, SSNs, times, credentials -----------------------------------------------


def _parse_street(raw: str) -> Field:
    # LeadConduit: a street is a number (any first word) then a name.
    parts = raw.strip().split(None, 1)
    if len(parts) < 2:
        return _invalid("street", raw)
    return {
        "kind": "street",
        "raw": raw,
        "normal": raw.strip(),
        "valid": True,
        "number": parts[0],
        "name": parts[1],
    }


_NOT_DIGITS = re.compile(r"[^0-9]+")


def _parse_ssn(raw: str) -> Field:
    # Nine digits in any punctuation; a longer text is no SSN (and is not scanned).
    digits = _NOT_DIGITS.sub("", raw) if len(raw) <= 64 else ""
    if len(digits) != 9:
        return {**_invalid("ssn", raw), "masked": False}
    return {
        "kind": "ssn",
        "raw": raw,
        "normal": digits,
        "valid": True,
        "first_three": digits[:3],
        "middle_two": digits[3:5],
        "last_four": digits[5:],
        "masked": False,
    }


_TIME_FORMATS: Final = (
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%a %b %d %Y %H:%M:%S",
)


def _strptime_any(text: str) -> datetime | None:
    for pattern in _TIME_FORMATS:
        try:
            return datetime.strptime(text, pattern)
        except ValueError:
            continue
    return None


def parse_time(text: str) -> datetime | None:
    """A moment from ISO 8601 or common US text; naive times are UTC. None when unreadable."""
    text = text.strip()
    if len(text) > 64:
        return None
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    moment: datetime | None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        # "Sat Jun 14 2015 13:27:33 GMT-0500 (CDT)": the JavaScript Date form.
        head, _, zone = text.partition(" GMT")
        moment = _strptime_any(head.strip())
        if moment is None:
            return None
        offset = zone.strip().split(" ", 1)[0]
        if offset:
            try:
                moment = moment.replace(tzinfo=datetime.strptime(offset, "%z").tzinfo)
            except ValueError:
                return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _parse_time(raw: str) -> Field:
    moment = parse_time(raw)
    if moment is None:
        return _invalid("time", raw)
    normal = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return {"kind": "time", "raw": raw, "normal": normal, "valid": True}


# --- entry points ---------------------------------------------------------------------------


# The largest body the gateway takes (SPEC section 5.1): no value it parses is longer, so a
# longer typed value is invalid unread, whoever calls.
MAX_VALUE_CHARS: Final = 1024 * 1024


def parse_value(type_name: str, raw: object, *, today: date | None = None) -> Field:
    """Parse one value as ``type_name``; never raises, invalid values come back ``valid: False``.

    ``today`` fixes the date dob ages are computed against (default: the local date).
    """
    text = _text(raw)
    if type_name not in FIELD_TYPES:
        type_name = "string"
    if not text.strip():
        return {"kind": type_name, "raw": text, "normal": "", "valid": False}
    if type_name in _TEXT_TYPES:
        # Untrimmed, as LeadConduit keeps text: a rule or template sees what the vendor sent.
        # A JSON number or boolean is no name or city (LeadConduit: invalid); any text is a string.
        valid = type_name == "string" or isinstance(raw, str)
        return {"kind": type_name, "raw": text, "normal": text, "valid": valid}
    if type_name == "credential":
        return {"kind": "credential", "raw": text, "normal": text, "valid": True, "masked": False}
    if len(text) > MAX_VALUE_CHARS:
        return _invalid(type_name, text)
    if type_name == "street":
        return _parse_street(text)
    if type_name == "ssn":
        return _parse_ssn(text)
    if type_name == "time":
        return _parse_time(text)
    if type_name == "phone":
        return _parse_phone(text)
    if type_name == "email":
        return _parse_email(text)
    if type_name == "postal_code":
        return _parse_postal_code(text, raw)
    if type_name == "state":
        return _parse_state(text)
    if type_name == "number":
        return _parse_number(text, raw)
    if type_name == "range":
        return _parse_range(text)
    if type_name == "boolean":
        return _parse_boolean(text, raw)
    if type_name in ("date", "dob"):
        return _parse_date(type_name, text, raw, today)
    if type_name == "gender":
        return _parse_gender(text)
    if type_name == "ip":
        return _parse_ip(text)
    if type_name == "url":
        return _parse_url(text)
    return _parse_trustedform_url(text)


def _parse_any(
    key: str, type_name: str, value: object, custom: Mapping[str, str], today: date | None
) -> object:
    if isinstance(value, str):  # most values: no Mapping check (an ABC's) for them
        return parse_value(type_name, value, today=today)
    if isinstance(value, Mapping):
        return {
            str(k): _parse_any(f"{key}.{k}", custom.get(f"{key}.{k}", "string"), v, custom, today)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        items: list[object] = []
        for item in value:
            parsed = _parse_any(key, type_name, item, custom, today)
            items.append(
                parsed["normal"] if isinstance(parsed, dict) and is_field(parsed) else parsed
            )
        return items
    return parse_value(type_name, value, today=today)


def parse_lead(
    data: Mapping[str, object],
    custom_types: Mapping[str, str] | None = None,
    *,
    today: date | None = None,
) -> dict[str, object]:
    """Parse an unflattened submission by ``custom_types``, else standard types, else string.

    A flow's ``fields`` entry wins over the standard type of the same name, as the config
    checker reads it that way too.
    """
    custom = custom_types or {}
    lead: dict[str, object] = {}
    for key, value in data.items():
        name = str(key)
        type_name = custom.get(name) or STANDARD_FIELDS.get(name, "string")
        lead[name] = _parse_any(name, type_name, value, custom, today)
    return lead
