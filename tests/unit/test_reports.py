"""Report parameters, windows and layouts (leadflow.reports): what /reports/* and `leadflow
report` both print."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from leadflow import report_command, reports
from leadflow.config import parse_config
from leadflow.reports import BuyerLine, MarginLine, MarginTotals, ReportError, VendorLine

CONFIG = parse_config(
    """
account: {name: R, time_zone: America/Chicago, currency: USD}
sources:
  - {id: quality, name: Quality Leads, api_key: k1}
  - {id: idle, name: Idle Vendor, api_key: k2}
buyers: [{id: acme, name: "Acme, Inc.", delivery: {type: http, url: "http://127.0.0.1:9/"}}]
flows:
  - id: auto
    name: Auto
    sources: [{source: quality}]
    stages: [{name: s, steps: [{buyer: acme}]}]
"""
)


def query(kind: str = "vendors", group_by: str | None = None) -> reports.ReportQuery:
    return reports.parse_query(kind, "2026-03-01", "2026-04-01", None, group_by, "America/Chicago")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("weekly", "2026-03-01", "2026-04-01", None, None), "unknown report 'weekly'"),
        (("vendors", None, "2026-04-01", None, None), "from is required"),
        (("vendors", "2026-3-1", "2026-04-01", None, None), "from must be a date YYYY-MM-DD"),
        (("vendors", "2026-03-01", "2026-02-30", None, None), "to must be a date"),
        (("vendors", "2026-03-01", "2026-03-01", None, None), "to must be after from"),
        (("vendors", "2026-03-01", "2026-04-01", "Mars/Olympus", None), "unknown time zone"),
        # Longer than a file name may be: was an OSError, a 500 from /reports (schemathesis).
        (("vendors", "2026-03-01", "2026-04-01", "a" * 300, None), "unknown time zone"),
        (("margin", "2026-03-01", "2026-04-01", None, "flow,vendor"), "group_by: unknown 'vendor'"),
        (("buyers", "2026-03-01", "2026-04-01", None, "flow"), "margin report only"),
    ],
)
def test_bad_report_parameters_are_refused_naming_them(
    args: tuple[str, str | None, str | None, str | None, str | None], message: str
) -> None:
    with pytest.raises(ReportError, match=message):
        reports.parse_query(*args, "UTC")


def test_group_by_is_kept_in_flow_source_buyer_order() -> None:
    assert query("margin", "buyer, source").group_by == ("source", "buyer")
    assert query("margin").group_by == ("flow",)


def test_window_is_local_midnight_to_local_midnight() -> None:
    start, end = query().window

    assert start.astimezone(UTC) == datetime(2026, 3, 1, 6, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2026, 4, 1, 5, tzinfo=UTC)


def test_the_spring_forward_day_is_23_hours_long() -> None:
    day = reports.parse_query("vendors", "2026-03-08", "2026-03-09", None, None, "America/Chicago")
    start, end = day.window

    assert end - start == timedelta(hours=23)


def test_vendor_report_lists_every_configured_source_and_nets_chargebacks() -> None:
    lines = [
        VendorLine("quality", 10, 8, 80_000_000, 15_000_000),
        VendorLine("gone", 1, 1, 1_000_000),
    ]

    report = reports.vendor_report(query(), lines, CONFIG)

    assert [row["source_id"] for row in report.rows] == ["gone", "idle", "quality"]
    quality = report.rows[2]
    assert quality["source_name"] == "Quality Leads"
    assert quality["net_payable"] == Decimal("65.00")
    assert report.rows[0]["source_name"] == "gone"  # no longer configured: its id
    assert report.totals == {
        "leads": 11,
        "accepted": 9,
        "purchase_total": Decimal("81.00"),
        "chargebacks": Decimal("15.00"),
        "net_payable": Decimal("66.00"),
    }


def test_buyer_report_nets_return_credits() -> None:
    line = BuyerLine("acme", 5, 3, 1, 1, 60_000_000, 1, 20_000_000, 25_000_000)

    row = reports.buyer_report(query("buyers"), [line], CONFIG).rows[0]

    assert row["net_receivable"] == Decimal("40.00")
    assert row["failed_opportunity"] == Decimal("25.00")
    assert row["buyer_name"] == "Acme, Inc."


def test_margin_rows_compute_margin_and_percent() -> None:
    totals = MarginTotals(
        lines=(
            MarginLine(
                source_id="quality",
                buyer_id="acme",
                leads=3,
                revenue_micros=90_000_000,
                cost_micros=30_000_000,
                credit_micros=10_000_000,
            ),
            MarginLine(source_id="quality", buyer_id="", leads=1, cost_micros=5_000_000),
        ),
        total_leads=4,
    )

    report = reports.margin_report(query("margin", "source,buyer"), totals, "USD")

    assert report.columns[:2] == ("source_id", "buyer_id")
    assert report.rows[0] == {
        "source_id": "quality",
        "buyer_id": "acme",
        "leads": 3,
        "revenue": Decimal("90.00"),
        "cost": Decimal("30.00"),
        "credits": Decimal("10.00"),
        "margin": Decimal("50.00"),
        "margin_percent": Decimal("55.56"),
    }
    assert report.rows[1]["buyer_id"] is None and report.rows[1]["margin_percent"] is None
    assert report.totals["leads"] == 4
    assert report.totals["margin"] == Decimal("45.00")


def test_json_has_the_spec_shape_and_money_with_two_places() -> None:
    report = reports.vendor_report(query(), [VendorLine("quality", 2, 1, 12_500_000)], CONFIG)

    body = reports.to_json(report)
    data = orjson.loads(body)

    assert list(data) == ["from", "to", "time_zone", "currency", "rows", "totals"]
    assert (data["from"], data["to"], data["time_zone"]) == (
        "2026-03-01",
        "2026-04-01",
        "America/Chicago",
    )
    assert b'"purchase_total":12.50' in body
    assert b'"chargebacks":0.00' in body


def test_csv_has_a_header_and_money_with_two_places() -> None:
    report = reports.buyer_report(
        query("buyers"), [BuyerLine("acme", sales_micros=7_000_000)], CONFIG
    )

    rows = list(csv.reader(io.StringIO(reports.to_csv(report))))

    assert rows[0] == list(reports.BUYER_COLUMNS)
    assert rows[1][:2] == ["acme", "Acme, Inc."]
    assert rows[1][rows[0].index("sales_total")] == "7.00"


def test_table_aligns_columns_and_ends_with_totals() -> None:
    report = reports.vendor_report(query(), [VendorLine("quality", 2, 1, 12_500_000)], CONFIG)

    lines = reports.to_table(report).splitlines()

    assert lines[0].startswith("vendors report 2026-03-01 to 2026-04-01")
    assert lines[2].split() == list(reports.VENDOR_COLUMNS)
    assert lines[-1].split()[0] == "TOTAL"
    assert lines[-1].endswith("12.50")
    assert len(lines[2]) == len(lines[-1]) == len(lines[-3])  # numbers right-aligned


def test_report_lines_round_trip_the_wire() -> None:
    vendor = [VendorLine("quality", 2, 1, 12_500_000, 1_000_000)]
    buyer = [BuyerLine("acme", 5, 3, 1, 1, 60_000_000, 1, 20_000_000, 25_000_000)]
    margin = MarginTotals((MarginLine("auto", "", "", 2, 3_000_000, 1_000_000, 0),), 2)

    assert reports.vendor_lines(reports.vendor_response(vendor, "USD")) == vendor
    assert reports.buyer_lines(reports.buyer_response(buyer, "USD")) == buyer
    assert reports.margin_totals(reports.margin_response(margin, "USD")) == margin


def test_groups_round_trip_the_wire() -> None:
    assert reports.groups_from_proto(reports.groups_to_proto(["buyer", "flow"])) == (
        "flow",
        "buyer",
    )
    with pytest.raises(ReportError):
        reports.groups_from_proto([])


def test_report_config_reads_unset_secrets_as_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "leadflow.yaml"
    path.write_text(
        'account: {name: R, admin_api_key: "${NOT_SET_ADMIN}", time_zone: "${TZ_X:-Europe/Paris}"}\n'
        'sources: [{id: s, name: S, api_key: "${NOT_SET_KEY}"}]\n'
    )
    monkeypatch.delenv("NOT_SET_ADMIN", raising=False)
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    monkeypatch.delenv("TZ_X", raising=False)

    config = report_command.load_report_config(str(path))

    assert config.account.time_zone == "Europe/Paris"
    assert config.sources[0].name == "S"


def test_csv_shows_formula_like_names_as_text_and_keeps_negative_money() -> None:
    # A vendor's name comes from configuration, a source id from the ledger's records; both are
    # shown to whoever opens the report in a spreadsheet.
    config = parse_config(
        """
account: {name: R, time_zone: America/Chicago, currency: USD}
sources: [{id: quality, name: "=HYPERLINK(\\"http://evil.example\\",\\"x\\")", api_key: k1}]
buyers: [{id: acme, name: Acme, delivery: {type: http, url: "http://127.0.0.1:9/"}}]
flows:
  - {id: auto, name: Auto, sources: [{source: quality}], stages: [{name: s, steps: [{buyer: acme}]}]}
"""
    )
    lines = [VendorLine("quality", 1, 1, 1_000_000), VendorLine("-2+3+cmd|' /C calc'!A0", 1, 1)]
    text = reports.to_csv(reports.vendor_report(query(), lines, config))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    names = {row["source_name"] for row in rows}
    assert names == {'\'=HYPERLINK("http://evil.example","x")', "'-2+3+cmd|' /C calc'!A0"}

    margin = reports.margin_report(
        reports.parse_query("margin", "2026-03-01", "2026-04-01", None, None, "America/Chicago"),
        MarginTotals([MarginLine(leads=1, revenue_micros=1_000_000, cost_micros=4_500_000)], 1),
        "USD",
    )
    assert "\r\n,1,1.00,4.50,0.00,-3.50,-350.00\r\n" in reports.to_csv(margin)
