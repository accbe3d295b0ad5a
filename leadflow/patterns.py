"""Regular expressions from configuration, applied to buyers' answers (SPEC 8.1).

A search term, a capture or a path on a plain-text answer is written as LeadConduit writes it:
either the expression itself (`accepted|success`) or `/expression/flags` (`/^ok$/m`). They run on
text a buyer sends, so they are compiled with RE2, whose matching time is linear in the text
whatever the pattern (no catastrophic backtracking on a hostile 1 MiB answer); an expression RE2
cannot compile (look-around, back-references) is refused when the configuration is checked.
Matching is case-insensitive, as in LeadConduit (which lowercases both sides).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import re2

# `/body/flags`: LeadConduit (regex-parser) reads a leading slash, the body up to the last slash
# and JavaScript flags after it; with anything else after the last slash the whole text is the
# expression.
_SLASHED = re.compile(r"/(.+)/([a-z]*)", re.DOTALL)
JS_FLAGS = frozenset("dgimsuyv")
# JavaScript flags that change what matches; the others (global, sticky, unicode, indices) do
# not change whether or where the first match is.
_INLINE = {"m": "m", "s": "s"}


class PatternError(ValueError):
    """A configured expression that cannot be used."""


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    # A bad pattern is reported through the exception, not also on stderr.
    options.log_errors = False
    return options


_OPTIONS = _options()


def split_pattern(text: str) -> tuple[str, str]:
    """(expression, inline flags) from `expr` or `/expr/flags`; surrounding space is ignored."""
    text = text.strip()
    slashed = _SLASHED.fullmatch(text)
    if slashed is not None and set(slashed.group(2)) <= JS_FLAGS:
        flags = "".join(sorted({_INLINE[f] for f in slashed.group(2) if f in _INLINE}))
        return slashed.group(1), flags
    return text, ""


@lru_cache(maxsize=1024)
def compile_pattern(text: str) -> Any:
    """The compiled RE2 pattern (search with `.search(text)`); PatternError when RE2 refuses it."""
    body, flags = split_pattern(text)
    source = f"(?{flags}){body}" if flags else body
    try:
        return re2.compile(source, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", errors="replace")
        raise PatternError(f"invalid regular expression (RE2 syntax): {detail}") from None


def check_pattern(text: str, *, groups: int = 0) -> str:
    """The text, if it compiles with at least `groups` capturing groups; else PatternError."""
    pattern = compile_pattern(text)
    if pattern.groups < groups:
        raise PatternError(
            "needs a capturing group, e.g. `id=(\\w+)`: its first group is the value"
        )
    return text


def _utf8(text: str) -> bytes:
    # Searching bytes skips the wrapper's mapping of byte offsets back to characters (half the
    # cost of a search); RE2 matches UTF-8 by code point either way.
    return text.encode("utf-8", errors="surrogatepass")


def found_in(pattern: Any, subject: str) -> bool:
    """Whether a compiled pattern occurs anywhere in the text."""
    return pattern.search(_utf8(subject)) is not None


def first_group(text: str, subject: str) -> str | None:
    """The first group of the first match, trimmed; None without a match, a group or a valid
    pattern (a path that is not a regular expression finds nothing on plain text)."""
    try:
        pattern = compile_pattern(text)
    except PatternError:
        return None
    if pattern.groups < 1:
        return None
    match = pattern.search(_utf8(subject))
    if match is None:
        return None
    value = match.group(1)
    return None if value is None else value.decode("utf-8", errors="replace").strip()
