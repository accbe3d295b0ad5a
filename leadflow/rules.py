"""Rules engine: LeadConduit's 24 operators plus ``is within``, compiled once, evaluated per lead.

Semantics (SPEC section 4, LeadConduit's where the spec is silent):

- Comparisons use a field's ``normal`` value. Text compares case-insensitively; when both sides
  read as numbers they compare as numbers (``"123"`` equals ``123``, ``"1,000"`` equals
  ``1000``); a range compares by its average (an open range such as ``10+`` by its minimum);
  date and dob fields compare as dates against a date rhv, and a dob against a number compares
  its age (``dob is greater than or equal to 18``). Booleans compare with yes/no/true/false.
  Against a numeric rhv, an lhv that is not a number is not comparable (every ordering and
  ``is equal to`` fail), except phone, postal code and the other typed-text fields, which
  compare their normal text. Other text compares in case-insensitive lexical order.
- The rhv is read as the lhv's type before comparing, so ``state is equal to California`` and
  ``phone_1 is included in (512) 555-1234`` work; this is done once per rule and type.
- A missing or blank lhv is never less than, greater than or between anything; it is equal
  only to an empty rhv, so ``is not equal to`` holds for it.
- ``is included in``: rhv is a list or a comma-separated string; with a list lhv, any element.
  ``includes``: case-insensitive substring of the lhv text, or membership for a list lhv; a
  list rhv means "includes any of".
- ``is between``: inclusive; rhv ``"10-20"``, ``"10 to 20"``, ``[10, 20]`` or
  ``{min: 10, max: 20}``; dates too (``["2000-01-01", "2005-12-31"]``).
- ``matches pattern``: a search anywhere in the value with RE2 (linear time whatever the pattern
  or value), always case-insensitive; ``/abc/i`` slashes are accepted (flags ``m``, ``s``, ``x``
  honoured, others ignored); Python's ``\\Z`` is read as RE2's ``\\z``. ``\\d``, ``\\w``, ``\\b``
  are ASCII, as in JavaScript (LeadConduit). Backreferences and lookaround do not compile (a
  :class:`RuleError`), nor does a pattern over :data:`PATTERN_MAX_CHARS`.
- ``is blank``: missing, empty, whitespace-only, or an empty list. ``format is valid``: the
  field's ``valid``; a non-field value is valid when it is not blank.
- ``is true``/``is false``: a boolean field's value; other values by yes/no/true/false/1/0
  reading; blank or unreadable values are neither true nor false.
- ``is obscene``: whole-word match against a small bundled word list (with simple suffixes).
- ``is within``: rhv ``{postal_code: "90210", miles: 25}``; the lead's US ZIP centroid within
  that many miles of the rhv ZIP's centroid. An unknown lead ZIP fails the rule; an unknown rhv
  ZIP is a :class:`RuleError`.
- An rhv string containing ``{{ path }}`` is rendered per lead (then read as above; a rendered
  rhv that is unusable, such as a bad regex, fails the rule).
- A rule may be only ``{rule_set: ...}`` (a group); a rule's ``rule_set`` is ANDed with it. A
  rule set may carry its own ``reason``. An empty rule set passes.
- Failure reasons: the failing rule's ``reason``, else a sentence such as
  ``state is not included in CA, NV``; an ``or`` set that fails joins its alternatives' reasons
  with " and ". An ``and`` set reports its first failing rule.
- Operators by field type (:data:`ALLOWED_OPERATORS`) follow LeadConduit's per-type lists with
  these additions: every type allows ``format is valid``/``is invalid``; ``string`` also allows
  ordering and ``is between`` (undeclared custom fields parse as string, and compare as numbers
  when they hold numbers) and ``is obscene``; ``state`` allows ``is obscene``; ``phone`` and
  ``url`` allow ``matches pattern``; ``range`` allows ``is between``; ``boolean`` allows
  ``is equal to`` and ``is not equal to``; ``gender`` allows ``is included in``;
  ``postal_code`` allows ``is within``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, NamedTuple, TypeGuard

import re2

from leadflow import geo
from leadflow.fields import date_text, parse_boolean, parse_date, parse_value, to_decimal
from leadflow.templates import Template, TemplateError, compile_template
from leadflow.variables import Getter, compile_path, display, variable_type

__all__ = [
    "ALLOWED_OPERATORS",
    "OPERATORS",
    "RuleCheck",
    "RuleError",
    "RuleResult",
    "RuleSet",
    "compile_rule_set",
    "operator_allowed",
]

Context = Mapping[str, object]
_Predicate = Callable[[object], bool]
_Test = Callable[[Context], bool]

_EQUALITY: Final = frozenset({"is equal to", "is not equal to"})
_ORDERING: Final = frozenset(
    {"is less than", "is less than or equal to", "is greater than", "is greater than or equal to"}
)
_BETWEEN: Final = frozenset({"is between", "is not between"})
_INCLUDED_IN: Final = frozenset({"is included in", "is not included in"})
_INCLUDES: Final = frozenset({"includes", "does not include"})
_MATCHES: Final = frozenset({"matches pattern", "does not match pattern"})
_BLANK: Final = frozenset({"is blank", "is not blank"})
_TRUTH: Final = frozenset({"is true", "is not true", "is false", "is not false"})
_FORMAT: Final = frozenset({"format is valid", "format is invalid"})
_OBSCENE_OPS: Final = frozenset({"is obscene", "is not obscene"})
_WITHIN: Final = frozenset({"is within"})

OPERATORS: Final[frozenset[str]] = (
    _EQUALITY
    | _ORDERING
    | _BETWEEN
    | _INCLUDED_IN
    | _INCLUDES
    | _MATCHES
    | _BLANK
    | _TRUTH
    | _FORMAT
    | _OBSCENE_OPS
    | _WITHIN
)

_NEEDS_RHV: Final = _EQUALITY | _ORDERING | _BETWEEN | _INCLUDED_IN | _INCLUDES | _MATCHES | _WITHIN

ALLOWED_OPERATORS: Final[dict[str, frozenset[str]]] = {
    "string": _EQUALITY
    | _ORDERING
    | _BETWEEN
    | _INCLUDED_IN
    | _INCLUDES
    | _MATCHES
    | _BLANK
    | _FORMAT
    | _OBSCENE_OPS,
    "phone": _EQUALITY | _INCLUDED_IN | _INCLUDES | _MATCHES | _BLANK | _FORMAT,
    "email": _EQUALITY | _INCLUDED_IN | _INCLUDES | _MATCHES | _BLANK | _FORMAT,
    "postal_code": _EQUALITY | _INCLUDED_IN | _INCLUDES | _MATCHES | _BLANK | _FORMAT | _WITHIN,
    "state": _EQUALITY | _INCLUDED_IN | _INCLUDES | _BLANK | _FORMAT | _OBSCENE_OPS,
    "number": _EQUALITY | _ORDERING | _BETWEEN | _INCLUDED_IN | _INCLUDES | _BLANK | _FORMAT,
    "range": _EQUALITY | _ORDERING | _BETWEEN | _INCLUDED_IN | _INCLUDES | _BLANK | _FORMAT,
    "boolean": _TRUTH | _EQUALITY | _BLANK | _FORMAT,
    "date": _EQUALITY | _ORDERING | _BETWEEN | _BLANK | _FORMAT,
    "dob": _EQUALITY | _ORDERING | _BETWEEN | _BLANK | _FORMAT,
    "gender": _EQUALITY | _INCLUDED_IN | _BLANK | _FORMAT,
    "ip": _EQUALITY | _INCLUDED_IN | _INCLUDES | _BLANK | _FORMAT,
    "url": _EQUALITY | _INCLUDED_IN | _INCLUDES | _MATCHES | _BLANK | _FORMAT,
    "trustedform_url": _BLANK | _FORMAT,
    "street": _EQUALITY | _INCLUDED_IN | _INCLUDES | _MATCHES | _BLANK | _FORMAT | _OBSCENE_OPS,
    "ssn": _EQUALITY | _INCLUDED_IN | _INCLUDES | _BLANK | _FORMAT,
    "time": _EQUALITY | _ORDERING | _BETWEEN | _BLANK | _FORMAT,
    "credential": _EQUALITY | _INCLUDED_IN | _INCLUDES | _BLANK | _FORMAT,
}
# City and names are text: they allow what `string` allows (a superset of LeadConduit's lists).
for _text_type in ("city", "first_name", "last_name"):
    ALLOWED_OPERATORS[_text_type] = ALLOWED_OPERATORS["string"]


def operator_allowed(op: str, field_type: str) -> bool:
    """Whether ``op`` applies to a field of ``field_type`` (any known operator if type unknown)."""
    allowed = ALLOWED_OPERATORS.get(field_type)
    return op in OPERATORS if allowed is None else op in allowed


class RuleError(ValueError):
    """A rule set that cannot compile; ``path`` is relative to the rule set (``rules[2].op``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _BadRhv(ValueError):
    """An rhv an operator cannot use; becomes a RuleError at ``.rhv``."""


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The outcome of a rule set: passed, or failed with a reason."""

    passed: bool
    reason: str | None = None


_PASSED: Final = RuleResult(True, None)


class RuleCheck(NamedTuple):
    """A leaf rule as written, for checking operators against field types."""

    path: str
    lhv: str
    op: str


# --- reading values -------------------------------------------------------------------------

# Field types whose rhv is worth normalising the same way before comparing text.
_TYPED_TEXT: Final = frozenset(
    {"phone", "email", "postal_code", "state", "gender", "ip", "url", "trustedform_url"}
)
# Field types that compare as numbers when the rhv is one.
_NUMERIC_KINDS: Final = frozenset({"number", "range", "string", "city", "first_name", "last_name"})
# Field types that read as plain text (LeadConduit's name types are strings with their own name).
_TEXT_KINDS: Final = frozenset({"string", "city", "first_name", "last_name"})


def _is_field(value: object) -> TypeGuard[dict[str, Any]]:
    return type(value) is dict and "valid" in value and "normal" in value


def _lower(value: object) -> str:
    if _is_field(value):
        value = value["normal"]
    if type(value) is str:
        return value.strip().lower()
    return display(value).strip().lower()


def _plain_text(value: object) -> str:
    if _is_field(value):
        value = value["normal"]
    return value if type(value) is str else display(value)


# Numbers compare as int where they are whole (fast, and exact against Decimal), else Decimal.
Num = int | Decimal


def _num(value: object) -> Num | None:
    """A comparable number from an int, float, Decimal or numeric text; never a bool."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        if value.isascii() and value.isdigit() and len(value) < 19:
            return int(value)
        return to_decimal(value)
    return None if isinstance(value, bool) else to_decimal(value)


def _compact(number: Decimal | None) -> Num | None:
    if number is not None and number == number.to_integral_value() and abs(number) < 2**63:
        return int(number)
    return number


def _field_number(field: Mapping[str, object]) -> Num | None:
    """The number a number, range, dob (age) or numeric string field compares as."""
    kind = field["kind"]
    if kind == "number":
        number = field.get("number")
        return number if type(number) is int else to_decimal(field["normal"])
    if kind == "range":
        average = field.get("avg")
        return _num(average if average is not None else field.get("min"))
    if kind == "dob":
        return _num(field.get("age"))
    if kind in _TEXT_KINDS:
        return _num(field["normal"])
    return None


def _number_of(value: object) -> Num | None:
    if _is_field(value):
        return _field_number(value) if value["valid"] else None
    return _num(value)


def _date_of(value: object) -> str | None:
    if _is_field(value):
        if value["kind"] in ("date", "dob"):
            return date_text(value) if value["valid"] else None
        value = value["normal"]
    found = parse_date(value) if isinstance(value, str) else None
    return found.isoformat() if found is not None else None


def _truth(value: object) -> bool | None:
    if _is_field(value):
        if value["kind"] == "boolean":
            normal = value["normal"]
            return normal if value["valid"] and isinstance(normal, bool) else None
        value = value["normal"]
    if value is None:
        return None
    return parse_boolean(value)


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    if _is_field(value):
        value = value["normal"]
        return value is None or value == ""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return len(value) == 0
    return False


class _Operand:
    """An rhv prepared once: its text, number, date and boolean readings."""

    __slots__ = ("_by_type", "boolean", "date", "lower", "number", "raw", "text")

    def __init__(self, raw: object) -> None:
        if isinstance(raw, (Mapping, list, tuple)):
            raise _BadRhv("expected a single value")
        self.raw = raw
        self.text = display(raw).strip()
        self.lower = self.text.lower()
        self.number = _compact(to_decimal(raw)) if not isinstance(raw, bool) else None
        found = parse_date(self.text) if isinstance(raw, str) else None
        self.date = found.isoformat() if found is not None else None
        self.boolean = parse_boolean(raw)
        self._by_type: dict[str, str] = {}

    def lower_for(self, field_type: str) -> str:
        """The rhv text read as ``field_type`` ("California" -> "ca" for a state)."""
        cached = self._by_type.get(field_type)
        if cached is None:
            cached = self.lower
            if field_type in _TYPED_TEXT:
                parsed = parse_value(field_type, self.raw)
                if parsed["valid"]:
                    cached = display(parsed["normal"]).lower()
            self._by_type[field_type] = cached
        return cached


def _sign(a: Any, b: Any) -> int:
    return int((a > b) - (a < b))


def _compare(value: object, r: _Operand) -> int | None:
    """Sign of (lhv - rhv), or None when the lhv is blank or cannot be compared."""
    # Hot path: the field check is inlined and typed-text fields go first.
    if type(value) is dict and "valid" in value and "normal" in value:
        normal = value["normal"]
        if normal == "" or normal is None:
            return None
        kind: str = value["kind"]
        if not value["valid"]:
            if r.number is not None:
                number = _num(normal) if type(normal) is str else None
                return None if number is None else (number > r.number) - (number < r.number)
            return _sign(_lower(normal), r.lower)
        if kind in _TYPED_TEXT:
            # Parsed normals are already trimmed, so only case needs folding.
            text = normal.lower() if type(normal) is str else display(normal).lower()
            other = r.lower_for(kind)
            return (text > other) - (text < other)
        if kind in _NUMERIC_KINDS:
            if r.number is not None:
                number = _field_number(value)
                return None if number is None else (number > r.number) - (number < r.number)
        elif kind == "date" or kind == "dob":
            if r.date is not None:
                return _sign(normal[:10], r.date)  # the calendar date of the normal value
            if r.number is not None:
                number = _field_number(value) if kind == "dob" else None
                return None if number is None else _sign(number, r.number)
        elif kind == "boolean" and r.boolean is not None:
            return _sign(normal, r.boolean)
        text = normal.lower() if type(normal) is str else display(normal).lower()
        return (text > r.lower) - (text < r.lower)
    if value is None:
        return None
    if isinstance(value, bool):
        if r.boolean is not None:
            return _sign(value, r.boolean)
    elif r.number is not None and isinstance(value, (int, float, Decimal, str)):
        number = _num(value)
        return None if number is None else (number > r.number) - (number < r.number)
    text = _lower(value)
    return None if not text else _sign(text, r.lower)


def _equals(value: object, r: _Operand) -> bool:
    sign = _compare(value, r)
    return r.lower == "" if sign is None else sign == 0


# --- operator builders: rhv -> predicate over the resolved lhv -------------------------------


def _listed(rhv: object) -> list[object]:
    if isinstance(rhv, str):
        return [item.strip() for item in rhv.split(",") if item.strip()]
    if isinstance(rhv, (list, tuple)):
        return [item for item in rhv if display(item).strip()]
    if isinstance(rhv, Mapping):
        raise _BadRhv("expected a list or a comma-separated string")
    return [rhv]


class _Members:
    """An ``is included in`` list prepared once for fast membership tests."""

    __slots__ = ("_by_type", "booleans", "dates", "lower", "numbers", "operands")

    def __init__(self, items: list[object]) -> None:
        self.operands = [_Operand(item) for item in items]
        self.lower = frozenset(o.lower for o in self.operands)
        self.numbers = frozenset(o.number for o in self.operands if o.number is not None)
        self.dates = frozenset(o.date for o in self.operands if o.date is not None)
        self.booleans = frozenset(o.boolean for o in self.operands if o.boolean is not None)
        self._by_type: dict[str, frozenset[str]] = {}

    def lower_for(self, kind: str) -> frozenset[str]:
        cached = self._by_type.get(kind)
        if cached is None:
            cached = frozenset(o.lower_for(kind) for o in self.operands)
            self._by_type[kind] = cached
        return cached

    def contains(self, value: object) -> bool:
        if type(value) is dict and "valid" in value and "normal" in value:
            normal = value["normal"]
            if normal == "" or normal is None:
                return False
            kind: str = value["kind"]
            if value["valid"]:
                if kind in _TYPED_TEXT:
                    text = normal.lower() if type(normal) is str else display(normal).lower()
                    return text in self.lower_for(kind)
                if kind in _NUMERIC_KINDS:
                    if self.numbers:
                        number = _field_number(value)
                        if number is not None and number in self.numbers:
                            return True
                elif kind == "date" or kind == "dob":
                    if normal[:10] in self.dates:  # the calendar date of the normal value
                        return True
                elif kind == "boolean":
                    return normal in self.booleans
            return _lower(normal) in self.lower
        if isinstance(value, list):
            return any(self.contains(item) for item in value)
        if _is_blank(value):
            return False
        if isinstance(value, bool):
            return value in self.booleans
        if self.numbers:
            number = _number_of(value)
            if number is not None and number in self.numbers:
                return True
        return _lower(value) in self.lower


def _build_equal(rhv: object) -> _Predicate:
    r = _Operand(rhv)
    return lambda value: _equals(value, r)


def _build_not_equal(rhv: object) -> _Predicate:
    r = _Operand(rhv)
    return lambda value: not _equals(value, r)


def _build_ordering(test: Callable[[int], bool]) -> Callable[[object], _Predicate]:
    def build(rhv: object) -> _Predicate:
        r = _Operand(rhv)

        def predicate(value: object) -> bool:
            sign = _compare(value, r)
            return sign is not None and test(sign)

        return predicate

    return build


# A rendered rhv may carry lead text, so these stay linear: whitespace runs are first squeezed
# to one character (which `\s*` cannot then rescan from every position), a number is digits and
# commas ending in a digit, or with a fraction (never `[\d,]*\.?\d+`, whose two digit runs
# overlap), and an optional `$` carries its own spaces.
_BETWEEN_NUM: Final = r"-?(?:[\d,]*\.\d+|[\d,]*\d)"
_BETWEEN_NUMBERS = re.compile(
    rf"\s*(?:\$\s*)?({_BETWEEN_NUM})\s*(?:-|\u2013|to|and)\s*(?:\$\s*)?({_BETWEEN_NUM})\s*",
    re.IGNORECASE,
)
_BETWEEN_SPLIT = re.compile(r"\s+(?:-|\u2013|to|and)\s+|\s*,\s*", re.IGNORECASE)
_WHITESPACE_RUN = re.compile(r"(\s)\s+")


def _bounds(rhv: object) -> tuple[bool, object, object, str]:
    """(numeric, low, high, text) for a between rhv; raises _BadRhv."""
    ends: list[object]
    if isinstance(rhv, Mapping):
        ends = [rhv.get("min"), rhv.get("max")]
    elif isinstance(rhv, (list, tuple)):
        ends = list(rhv)
    elif isinstance(rhv, str):
        squeezed = _WHITESPACE_RUN.sub(r"\1", rhv)
        match = _BETWEEN_NUMBERS.fullmatch(squeezed)
        ends = list(match.groups()) if match else _BETWEEN_SPLIT.split(squeezed.strip())
    else:
        raise _BadRhv("expected a range such as '10-20' or [10, 20]")
    if len(ends) != 2 or any(_is_blank(end) for end in ends):
        raise _BadRhv(f"expected two ends, such as '10-20' or [10, 20], not {display(rhv)!r}")
    text = f"{display(ends[0]).strip()} and {display(ends[1]).strip()}"
    low_n, high_n = _compact(to_decimal(ends[0])), _compact(to_decimal(ends[1]))
    if low_n is not None and high_n is not None:
        if low_n > high_n:
            raise _BadRhv(f"the range {text} runs backwards")
        return True, low_n, high_n, text
    low_d, high_d = _date_of(display(ends[0])), _date_of(display(ends[1]))
    if low_d is not None and high_d is not None:
        if low_d > high_d:
            raise _BadRhv(f"the range {text} runs backwards")
        return False, low_d, high_d, text
    raise _BadRhv(f"expected two numbers or two dates, not {display(rhv)!r}")


def _build_between(negate: bool) -> Callable[[object], _Predicate]:
    def build(rhv: object) -> _Predicate:
        numeric, low, high, _ = _bounds(rhv)
        read = _number_of if numeric else _date_of

        def predicate(value: object) -> bool:
            found = read(value)
            inside = found is not None and low <= found <= high  # type: ignore[operator]
            return inside != negate

        return predicate

    return build


def _build_included(negate: bool) -> Callable[[object], _Predicate]:
    def build(rhv: object) -> _Predicate:
        members = _Members(_listed(rhv))
        return lambda value: members.contains(value) != negate

    return build


def _build_includes(negate: bool) -> Callable[[object], _Predicate]:
    def build(rhv: object) -> _Predicate:
        needles = [display(item).strip().lower() for item in _listed_any(rhv)]

        def predicate(value: object) -> bool:
            if isinstance(value, list):
                items = {_lower(item) for item in value}
                found = any(needle in items for needle in needles)
            else:
                text = _lower(value)
                found = bool(text) and any(needle in text for needle in needles)
            return found != negate

        return predicate

    return build


def _listed_any(rhv: object) -> list[object]:
    if isinstance(rhv, (list, tuple)):
        return [item for item in rhv if display(item).strip()]
    if isinstance(rhv, Mapping) or not display(rhv).strip():
        raise _BadRhv("expected text to look for")
    return [rhv]


_SLASHED = re.compile(r"/(.*)/([a-z]*)", re.DOTALL)
# Operator-written patterns run on RE2, whose matching time is linear in the value whatever the
# pattern: a vendor writes the value (up to 1 MiB), and Python's backtracking `re` takes
# exponential time on `(a+)+b` and the like. The price is that backreferences and lookaround are
# refused (`leadflow check` says so). A rendered pattern may carry lead data, and compiling costs
# time in the pattern's length too, so a pattern is at most this long.
PATTERN_MAX_CHARS: Final = 32_768
_PATTERN_FLAGS: Final = frozenset("msx")
_OPEN_LOWER = re.compile(r"\{,\d+\}")
# Python's verbose mode skips exactly these outside a character class.
_VERBOSE_SPACE: Final = frozenset(" \t\n\r\v\f")


def _re2_syntax(pattern: str, verbose: bool) -> str:
    """``pattern`` as RE2 reads it: Python's verbose layout dropped and ``\\Z`` spelled ``\\z``."""
    out: list[str] = []
    i, size, in_class = 0, len(pattern), False
    while i < size:
        char = pattern[i]
        if char == "\\" and i + 1 < size:
            following = pattern[i + 1]
            out.append("\\z" if following == "Z" and not in_class else char + following)
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A `]` first in a class (after an optional `^`) is a literal, not the class's end.
            start = i + 1 + (pattern.startswith("^", i + 1))
            if pattern.startswith("]", start):
                out.append(pattern[i : start + 1])
                i = start + 1
                continue
        elif verbose and char in _VERBOSE_SPACE:
            i += 1
            continue
        elif verbose and char == "#":
            end = pattern.find("\n", i)
            i = size if end < 0 else end + 1
            continue
        elif char == "{" and out and out[-1] not in "(|" and _OPEN_LOWER.match(pattern, i):
            out.append("{0,")  # Python's `x{,3}`; RE2 would read `{,3}` as literal text
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _re2_problem(pattern: str, detail: str) -> str:
    engine = "patterns run on RE2, a linear-time engine without backreferences or lookaround"
    if re.search(r"invalid escape sequence: \\[1-9]", detail) or "(?P=" in pattern:
        return f"pattern {pattern!r} uses a backreference (\\1): {engine}"
    if re.search(r"\(\?<?[=!]", detail):
        return f"pattern {pattern!r} uses lookahead or lookbehind: {engine}"
    return f"invalid regular expression {pattern!r} ({engine}): {detail}"


# Shared by every rule and rendering; a compiled pattern may hold a few MB (RE2's DFA cache).
@lru_cache(maxsize=256)
def _compile_pattern(pattern: str, flags: str) -> Any:
    """A compiled RE2 pattern (case-insensitive, as LeadConduit), or a message saying why not."""
    options = re2.Options()
    options.case_sensitive = False
    options.never_capture = True  # only "is there a match" is asked: the DFA answers that
    options.log_errors = False
    inline = "".join(flag for flag in "ms" if flag in flags)
    text = _re2_syntax(pattern, verbose="x" in flags)
    try:
        return re2.compile(f"(?{inline}){text}" if inline else text, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return _re2_problem(pattern, str(detail))


def _regex(rhv: object) -> Callable[[str], bool]:
    """A test "does the pattern occur in this text" for a ``matches pattern`` rhv."""
    if isinstance(rhv, (Mapping, list, tuple)):
        raise _BadRhv("expected a regular expression")
    pattern = display(rhv)
    flags = ""
    slashed = _SLASHED.fullmatch(pattern.strip())
    if slashed:
        pattern = slashed.group(1)
        flags = "".join(sorted(_PATTERN_FLAGS.intersection(slashed.group(2))))
    if len(pattern) > PATTERN_MAX_CHARS:  # before the cache, which must not keep such text
        raise _BadRhv(f"pattern is longer than {PATTERN_MAX_CHARS} characters")
    compiled = _compile_pattern(pattern, flags)
    if isinstance(compiled, str):
        raise _BadRhv(compiled)
    search = compiled.search

    def found(text: str) -> bool:
        # Bytes skip the wrapper's offset bookkeeping; a lone surrogate must not raise.
        return search(text.encode("utf-8", "surrogatepass")) is not None

    return found


def _build_matches(negate: bool) -> Callable[[object], _Predicate]:
    def build(rhv: object) -> _Predicate:
        search = _regex(rhv)

        def predicate(value: object) -> bool:
            if isinstance(value, list):
                found = any(search(_plain_text(item)) for item in value)
            else:
                found = search(_plain_text(value))
            return found != negate

        return predicate

    return build


# A short, conservative list: whole words (with simple suffixes), so "Scunthorpe" is fine.
_OBSCENE_WORDS: Final = (
    "fuck",
    "motherfucker",
    "shit",
    "bullshit",
    "bitch",
    "bastard",
    "asshole",
    "cunt",
    "dick",
    "dickhead",
    "cock",
    "pussy",
    "slut",
    "whore",
    "fag",
    "faggot",
    "nigger",
    "nigga",
    "retard",
    "twat",
    "wanker",
    "douche",
    "douchebag",
    "jackass",
    "dumbass",
    "piss",
)
_OBSCENE: Final = re.compile(
    r"\b(?:" + "|".join(_OBSCENE_WORDS) + r")(?:s|es|ed|er|ers|ing|in|y)?\b", re.IGNORECASE
)


def _is_obscene(value: object) -> bool:
    if isinstance(value, list):
        return any(_is_obscene(item) for item in value)
    return _OBSCENE.search(_plain_text(value)) is not None


# `\s*(?:-\s*)?`, not `\s*-?\s*`: two adjacent `\s*` rescan a run of spaces quadratically.
_ZIP5: Final = re.compile(r"\s*(\d{5})(?:\s*(?:-\s*)?\d{4})?\s*")


def _zip_of(value: object) -> str | None:
    if _is_field(value):
        zip5 = value.get("zip") if value["valid"] else None
        return zip5 if isinstance(zip5, str) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 100000:
        return f"{value:05d}"
    match = _ZIP5.fullmatch(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def _within_target(rhv: object) -> tuple[str, float]:
    if not isinstance(rhv, Mapping):
        raise _BadRhv("expected {postal_code: '90210', miles: 25}")
    zip5 = _zip_of(rhv.get("postal_code"))
    if zip5 is None:
        raise _BadRhv("postal_code must be a US ZIP code such as '90210'")
    miles = to_decimal(rhv.get("miles"))
    if miles is None or miles <= 0:
        raise _BadRhv("miles must be a positive number")
    if geo.zip_centroid(zip5) is None:
        raise _BadRhv(f"unknown ZIP code {zip5!r}")
    return zip5, float(miles)


def _build_within(rhv: object) -> _Predicate:
    target, miles = _within_target(rhv)

    def predicate(value: object) -> bool:
        zip5 = _zip_of(value)
        return zip5 is not None and geo.within_miles(zip5, target, miles)

    return predicate


def _constant(predicate: _Predicate) -> Callable[[object], _Predicate]:
    return lambda rhv: predicate


_BUILDERS: Final[dict[str, Callable[[object], _Predicate]]] = {
    "is equal to": _build_equal,
    "is not equal to": _build_not_equal,
    "is less than": _build_ordering(lambda sign: sign < 0),
    "is less than or equal to": _build_ordering(lambda sign: sign <= 0),
    "is greater than": _build_ordering(lambda sign: sign > 0),
    "is greater than or equal to": _build_ordering(lambda sign: sign >= 0),
    "is between": _build_between(negate=False),
    "is not between": _build_between(negate=True),
    "is included in": _build_included(negate=False),
    "is not included in": _build_included(negate=True),
    "includes": _build_includes(negate=False),
    "does not include": _build_includes(negate=True),
    "matches pattern": _build_matches(negate=False),
    "does not match pattern": _build_matches(negate=True),
    "is blank": _constant(_is_blank),
    "is not blank": _constant(lambda value: not _is_blank(value)),
    "is true": _constant(lambda value: _truth(value) is True),
    "is not true": _constant(lambda value: _truth(value) is not True),
    "is false": _constant(lambda value: _truth(value) is False),
    "is not false": _constant(lambda value: _truth(value) is not False),
    "format is valid": _constant(
        lambda value: bool(value["valid"]) if _is_field(value) else not _is_blank(value)
    ),
    "format is invalid": _constant(
        lambda value: not value["valid"] if _is_field(value) else _is_blank(value)
    ),
    "is obscene": _constant(_is_obscene),
    "is not obscene": _constant(lambda value: not _is_obscene(value)),
    "is within": _build_within,
}

# What a failed rule says: "<field> <this> <rhv>".
_FAILED_AS: Final[dict[str, str]] = {
    "is equal to": "is not equal to",
    "is not equal to": "is equal to",
    "is less than": "is not less than",
    "is less than or equal to": "is not less than or equal to",
    "is greater than": "is not greater than",
    "is greater than or equal to": "is not greater than or equal to",
    "is between": "is not between",
    "is not between": "is between",
    "is included in": "is not included in",
    "is not included in": "is included in",
    "includes": "does not include",
    "does not include": "includes",
    "matches pattern": "does not match pattern",
    "does not match pattern": "matches pattern",
    "is blank": "is not blank",
    "is not blank": "is blank",
    "is true": "is not true",
    "is not true": "is true",
    "is false": "is not false",
    "is not false": "is false",
    "format is valid": "format is invalid",
    "format is invalid": "format is valid",
    "is obscene": "is not obscene",
    "is not obscene": "is obscene",
    "is within": "is not within",
}


def _rhv_text(op: str, rhv: object) -> str:
    if op not in _NEEDS_RHV:
        return ""
    if op in _BETWEEN:
        try:
            return _bounds(rhv)[3]
        except _BadRhv:
            return display(rhv)
    if op in _INCLUDED_IN and isinstance(rhv, str):
        rhv = _listed(rhv)
    if op == "is within" and isinstance(rhv, Mapping):
        return f"{display(rhv.get('miles'))} miles of {display(rhv.get('postal_code'))}"
    if isinstance(rhv, (list, tuple)):
        return ", ".join(display(item).strip() for item in rhv)
    return display(rhv).strip()


# --- rhv templates --------------------------------------------------------------------------


def _has_template(rhv: object) -> bool:
    if isinstance(rhv, str):
        return "{{" in rhv
    if isinstance(rhv, (list, tuple)):
        return any(_has_template(item) for item in rhv)
    if isinstance(rhv, Mapping):
        return any(_has_template(item) for item in rhv.values())
    return False


def _compile_rhv(rhv: object) -> object:
    """The rhv with every templated string replaced by its compiled Template."""
    if isinstance(rhv, str):
        return compile_template(rhv) if "{{" in rhv else rhv
    if isinstance(rhv, (list, tuple)):
        return [_compile_rhv(item) for item in rhv]
    if isinstance(rhv, Mapping):
        return {key: _compile_rhv(item) for key, item in rhv.items()}
    return rhv


def _render_rhv(rhv: object, context: Context) -> object:
    if isinstance(rhv, Template):
        return rhv.render(context)
    if isinstance(rhv, list):
        return [_render_rhv(item, context) for item in rhv]
    if isinstance(rhv, dict):
        return {key: _render_rhv(item, context) for key, item in rhv.items()}
    return rhv


def _key(rhv: object) -> object:
    if isinstance(rhv, list):
        return tuple(_key(item) for item in rhv)
    if isinstance(rhv, dict):
        return tuple(sorted((str(k), _key(v)) for k, v in rhv.items()))
    return rhv


def _never(value: object) -> bool:
    return False


class _DynamicRhv:
    """An rhv with ``{{ }}`` in it: rendered per lead, built once per distinct rendering."""

    __slots__ = ("_build", "_cache", "_compiled")

    def __init__(self, rhv: object, build: Callable[[object], _Predicate]) -> None:
        self._compiled = _compile_rhv(rhv)
        self._build = build
        self._cache: dict[object, _Predicate] = {}

    def render(self, context: Context) -> object:
        return _render_rhv(self._compiled, context)

    def predicate(self, context: Context) -> _Predicate:
        rendered = self.render(context)
        key = _key(rendered)
        found = self._cache.get(key)
        if found is None:
            try:
                found = self._build(rendered)
            except _BadRhv:
                found = _never
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[key] = found
        return found


# --- compiled rules and rule sets -----------------------------------------------------------


class _Rule:
    __slots__ = ("check", "dynamic", "name", "op", "passes", "reason", "rhv", "rule_set", "test")

    def __init__(
        self,
        check: RuleCheck | None,
        rhv: object,
        test: _Test | None,
        dynamic: _DynamicRhv | None,
        reason: str | None,
        rule_set: RuleSet | None,
    ) -> None:
        self.check = check
        self.op = check.op if check else ""
        self.name = check.lhv.removeprefix("lead.") if check else ""
        self.rhv = rhv
        self.test = test
        self.dynamic = dynamic
        self.reason = reason
        self.rule_set = rule_set
        self.passes: _Test
        if test is None:
            assert rule_set is not None
            self.passes = rule_set.passes
        elif rule_set is None:
            self.passes = test
        else:
            nested = rule_set.passes
            self.passes = lambda context: test(context) and nested(context)

    def why(self, context: Context) -> str:
        """Why this rule failed for ``context`` (call only when it did)."""
        if self.reason:
            return self.reason
        if self.test is not None and not self.test(context):
            rhv = self.dynamic.render(context) if self.dynamic is not None else self.rhv
            rhv_text = _rhv_text(self.op, rhv)
            sentence = f"{self.name} {_FAILED_AS[self.op]}"
            return f"{sentence} {rhv_text}" if rhv_text else sentence
        assert self.rule_set is not None
        return self.rule_set.failure_reason(context)


class RuleSet:
    """A compiled rule set; :meth:`evaluate` it per lead with a ``build_context`` context."""

    __slots__ = ("_tests", "checks", "op", "reason", "rules")

    def __init__(self, op: str, rules: tuple[_Rule, ...], reason: str | None = None) -> None:
        self.op = op
        self.rules = rules
        self.reason = reason
        self._tests: tuple[_Test, ...] = tuple(rule.passes for rule in rules)
        # Paths are relative to the root set compiled, so nested checks are already complete.
        checks: list[RuleCheck] = []
        for rule in rules:
            if rule.check is not None:
                checks.append(rule.check)
            if rule.rule_set is not None:
                checks.extend(rule.rule_set.checks)
        self.checks: tuple[RuleCheck, ...] = tuple(checks)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every lhv path the set reads, nested sets included, in order, without repeats."""
        return tuple(dict.fromkeys(check.lhv for check in self.checks))

    def __len__(self) -> int:
        return len(self.rules)

    def passes(self, context: Context) -> bool:
        """Whether the set passes; the fast path with no reason."""
        if self.op == "and":
            for test in self._tests:  # noqa: SIM110 - a plain loop beats all() on this hot path
                if not test(context):
                    return False
            return True
        for test in self._tests:
            if test(context):
                return True
        return not self._tests

    def evaluate(self, context: Context) -> RuleResult:
        """Passed, or failed with the rule's reason or a sentence naming the field.

        An `and` set is walked once and stops at its first failing rule: most criteria are `and`
        lists, and routing evaluates one per buyer step."""
        if self.op == "and":
            for rule in self.rules:
                if not rule.passes(context):
                    return RuleResult(False, self.reason or rule.why(context))
            return _PASSED
        if self.passes(context):
            return _PASSED
        return RuleResult(False, self.failure_reason(context))

    def failure_reason(self, context: Context) -> str:
        """Why the set failed for ``context`` (call only when it did)."""
        if self.reason:
            return self.reason
        if self.op == "and":
            for rule in self.rules:
                if not rule.passes(context):
                    return rule.why(context)
            return ""
        reasons = dict.fromkeys(rule.why(context) for rule in self.rules)
        return " and ".join(reasons)

    def operator_errors(self, custom_types: Mapping[str, str] | None = None) -> list[RuleError]:
        """A RuleError at ``rules[i].op`` for each operator its lhv's type does not allow."""
        errors = []
        for check in self.checks:
            kind = variable_type(check.lhv, custom_types)
            if kind is not None and not operator_allowed(check.op, kind):
                errors.append(
                    RuleError(
                        f"{check.path}.op",
                        f"operator {check.op!r} does not apply to {check.lhv!r} (a {kind} field)",
                    )
                )
        return errors

    def __repr__(self) -> str:
        return f"RuleSet(op={self.op!r}, rules={len(self.rules)})"


_RULE_KEYS: Final = frozenset({"lhv", "op", "rhv", "rule_set", "reason"})
_SET_KEYS: Final = frozenset({"op", "rules", "reason"})
_LHV_PATH: Final = re.compile(r"[^\s{}.]+(?:\.[^\s{}.]+)*")
_SPACES: Final = re.compile(r"\s+")


def compile_rule_set(spec: object) -> RuleSet:
    """Compile a rule set: a list of rules (``and``), ``{op, rules, reason?}`` or None (empty).

    Raises :class:`RuleError` with a path relative to the set, such as ``rules[2].op``.
    """
    return _compile_set(spec, "")


def _compile_set(spec: object, prefix: str) -> RuleSet:
    if spec is None:
        return RuleSet("and", ())
    if isinstance(spec, (list, tuple)):
        spec = {"op": "and", "rules": spec}
    if not isinstance(spec, Mapping):
        raise RuleError(prefix.rstrip("."), "a rule set must be a list of rules or {op, rules}")
    for key in spec:
        if key not in _SET_KEYS:
            raise RuleError(f"{prefix}{key}", "unknown key (expected op, rules, reason)")
    op = str(spec.get("op") or "and").strip().lower()
    if op not in ("and", "or"):
        raise RuleError(f"{prefix}op", f"expected 'and' or 'or', not {spec.get('op')!r}")
    rules = spec.get("rules") or []
    if not isinstance(rules, (list, tuple)):
        raise RuleError(f"{prefix}rules", "expected a list of rules")
    reason = _reason(spec.get("reason"), f"{prefix}reason")
    compiled = tuple(
        _compile_rule(rule, f"{prefix}rules[{index}]") for index, rule in enumerate(rules)
    )
    return RuleSet(op, compiled, reason)


def _reason(value: object, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RuleError(path, "reason must be text")
    return value


def _compile_rule(spec: object, path: str) -> _Rule:
    if not isinstance(spec, Mapping):
        raise RuleError(path, "a rule must be a mapping {lhv, op, rhv?, rule_set?, reason?}")
    for key in spec:
        if key not in _RULE_KEYS:
            raise RuleError(
                f"{path}.{key}", "unknown key (expected lhv, op, rhv, rule_set, reason)"
            )
    reason = _reason(spec.get("reason"), f"{path}.reason")
    nested = None
    if spec.get("rule_set") is not None:
        nested = _compile_set(spec["rule_set"], f"{path}.rule_set.")
    if spec.get("lhv") is None and spec.get("op") is None:
        if nested is None:
            raise RuleError(f"{path}.lhv", "a rule needs an lhv and an op, or a rule_set")
        return _Rule(None, None, None, None, reason, nested)
    lhv = _lhv(spec.get("lhv"), f"{path}.lhv")
    raw_op = spec.get("op")
    if not isinstance(raw_op, str) or not raw_op.strip():
        raise RuleError(f"{path}.op", "an operator is required")
    op = _SPACES.sub(" ", raw_op.strip().lower())
    if op not in OPERATORS:
        raise RuleError(f"{path}.op", f"unknown operator {raw_op!r}")
    rhv = spec.get("rhv")
    if op in _NEEDS_RHV and rhv is None:
        raise RuleError(f"{path}.rhv", f"operator {op!r} needs an rhv")
    getter = compile_path(lhv)
    build = _BUILDERS[op]
    dynamic = None
    try:
        if op in _NEEDS_RHV and _has_template(rhv):
            dynamic = _DynamicRhv(rhv, build)
            test = _dynamic_test(getter, dynamic)
        else:
            test = _static_test(getter, build(rhv))
    except (_BadRhv, TemplateError) as exc:
        raise RuleError(f"{path}.rhv", str(exc)) from None
    return _Rule(RuleCheck(path, lhv, op), rhv, test, dynamic, reason, nested)


def _lhv(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RuleError(path, "an lhv (the variable to test) is required")
    text = value.strip()
    # `{{ path }}` is the same as `path`; plain string code, since `\{\{\s*(.*?)\s*\}\}` rescans.
    if text.startswith("{{") and text.endswith("}}") and len(text) >= 4:
        text = text[2:-2].strip()
    if not _LHV_PATH.fullmatch(text):
        raise RuleError(path, f"invalid variable {value!r}")
    return text


def _static_test(getter: Getter, predicate: _Predicate) -> _Test:
    return lambda context: predicate(getter(context))


def _dynamic_test(getter: Getter, dynamic: _DynamicRhv) -> _Test:
    return lambda context: dynamic.predicate(context)(getter(context))
