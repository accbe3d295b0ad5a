"""The one way this project writes CSV: RFC 4180 text whose cells a spreadsheet shows as text.

Lead values reach buyers' batch files and operators' reports, and both are opened in Excel,
LibreOffice or Google Sheets, which run a cell starting with `=`, `+`, `-` or `@` as a formula
(CSV injection, CWE-1236). Following OWASP's advice, such a cell gets a leading single quote,
which spreadsheets read as "this cell is text". Spreadsheets also drop leading tabs, carriage
returns and spaces before deciding, so the check looks past them, and a cell that starts with a
tab or carriage return is quoted whatever follows (OWASP lists both). A cell that is a plain
number (`-3.5`, `+15125550142`) is left exactly as it is: a spreadsheet reads it as a number,
never a formula, and a buyer's importer must see the normal value. NUL characters are dropped:
they are never lead data and cut the line short in C-based readers.

Every cell holding `,`, `;`, `"`, a tab or a line break is wrapped in double quotes (embedded
quotes doubled). RFC 4180 needs that only for `,`, `"` and line breaks; `;` and tab are the
list separators of many locales' Excel, which would otherwise split `x;=cmd|…` into a second
cell starting with `=`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# What starts a formula in Excel, LibreOffice and Google Sheets.
FORMULA_START = frozenset("=+-@")
# OWASP: a cell starting with one of these is neutralised whatever follows.
CONTROL_START = frozenset("\t\r")
# A number a spreadsheet reads as a number: optional sign, digits with an optional fraction,
# optional exponent. Phones in E.164 (`+15125550142`) are such numbers.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NEEDS_QUOTES = re.compile(r'[,;"\t\r\n]')
LINE_END = "\r\n"


def safe_cell(value: str) -> str:
    """The cell text as a spreadsheet must show it: formulas neutralised, NULs dropped."""
    text = value.replace("\x00", "") if "\x00" in value else value
    if not text:
        return text
    first = text[0]
    if first in CONTROL_START:
        return "'" + text
    if first not in FORMULA_START and not first.isspace():
        return text  # most cells: a letter or digit first
    # Excel and Sheets skip leading whitespace (Unicode spaces too) before reading `=`.
    start = text.lstrip()
    if start[:1] in FORMULA_START and not _PLAIN_NUMBER.fullmatch(start):
        return "'" + text
    return text


def _field(text: str) -> str:
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(cells: Iterable[object]) -> str:
    """One CSV record, CRLF-terminated; None is an empty cell, anything else its `str`."""
    texts = [safe_cell("" if cell is None else str(cell)) for cell in cells]
    if texts == [""]:
        # A lone empty cell must not read back as a blank line (which readers skip).
        return '""' + LINE_END
    return ",".join(map(_field, texts)) + LINE_END


def csv_text(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A header line and one line per row."""
    return csv_line(header) + "".join(csv_line(row) for row in rows)
