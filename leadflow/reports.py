"""Vendor, buyer and margin reports (SPEC 5.4): the ledger's totals on the wire, the window a
report covers in a time zone, and how operators read it (JSON, CSV, a text table). Shared by the
gateway's `/reports/*` and `leadflow report`, so both print the same numbers the same way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from leadflow.config import Config
from leadflow.csv_safe import csv_text
from leadflow.ledger.v1 import ledger_service_pb2 as pb
from leadflow.money import ZERO, format_money, from_micros, to_micros
from leadflow.wire import from_proto, to_proto

if TYPE_CHECKING:
    pass

KINDS = ("vendors", "buyers", "margin")
FORMATS = ("json", "csv", "table")
GROUP_KEYS = ("flow", "source", "buyer")
_GROUP_TO_PROTO = {
    "flow": pb.MARGIN_GROUP_FLOW,
    "source": pb.MARGIN_GROUP_SOURCE,
    "buyer": pb.MARGIN_GROUP_BUYER,
}
_GROUP_FROM_PROTO = {value: name for name, value in _GROUP_TO_PROTO.items()}
PERCENT = Decimal("0.01")


class ReportError(ValueError):
    """A report parameter that cannot be used (HTTP 400; `leadflow report` exits 2)."""


# --- What the ledger computes (money in integer micros, exact) -------------------------------


@dataclass(frozen=True)
class VendorLine:
    source_id: str
    leads: int = 0
    accepted: int = 0
    purchase_micros: int = 0
    chargeback_micros: int = 0


@dataclass(frozen=True)
class BuyerLine:
    buyer_id: str
    deliveries: int = 0
    sold: int = 0
    failed: int = 0
    errors: int = 0
    sales_micros: int = 0
    returns: int = 0
    return_credit_micros: int = 0
    failed_opportunity_micros: int = 0
    # Offers whose fate is unknown and not resolved yet (SPEC 8.1).
    unknown: int = 0


@dataclass(frozen=True)
class MarginLine:
    """A group's numbers; keys not grouped by are ""; grouped by buyer, "" is "no buyer"."""

    flow_id: str = ""
    source_id: str = ""
    buyer_id: str = ""
    leads: int = 0
    revenue_micros: int = 0
    cost_micros: int = 0
    credit_micros: int = 0


@dataclass(frozen=True)
class MarginTotals:
    lines: tuple[MarginLine, ...] = ()
    total_leads: int = 0


def _money(micros: int, currency: str) -> Any:
    return to_proto(from_micros(micros), currency)


def _micros(money: Any) -> int:
    return to_micros(from_proto(money))


def vendor_response(lines: Iterable[VendorLine], currency: str) -> pb.GetVendorReportResponse:
    return pb.GetVendorReportResponse(
        rows=[
            pb.VendorReportRow(
                source_id=line.source_id,
                leads=line.leads,
                accepted=line.accepted,
                purchase_total=_money(line.purchase_micros, currency),
                chargebacks=_money(line.chargeback_micros, currency),
            )
            for line in lines
        ]
    )


def vendor_lines(response: pb.GetVendorReportResponse) -> list[VendorLine]:
    return [
        VendorLine(
            source_id=row.source_id,
            leads=row.leads,
            accepted=row.accepted,
            purchase_micros=_micros(row.purchase_total),
            chargeback_micros=_micros(row.chargebacks),
        )
        for row in response.rows
    ]


def buyer_response(lines: Iterable[BuyerLine], currency: str) -> pb.GetBuyerReportResponse:
    return pb.GetBuyerReportResponse(
        rows=[
            pb.BuyerReportRow(
                buyer_id=line.buyer_id,
                deliveries=line.deliveries,
                sold=line.sold,
                failed=line.failed,
                errors=line.errors,
                unknown=line.unknown,
                sales_total=_money(line.sales_micros, currency),
                returns=line.returns,
                return_credits=_money(line.return_credit_micros, currency),
                failed_opportunity=_money(line.failed_opportunity_micros, currency),
            )
            for line in lines
        ]
    )


def buyer_lines(response: pb.GetBuyerReportResponse) -> list[BuyerLine]:
    return [
        BuyerLine(
            buyer_id=row.buyer_id,
            deliveries=row.deliveries,
            sold=row.sold,
            failed=row.failed,
            errors=row.errors,
            unknown=row.unknown,
            sales_micros=_micros(row.sales_total),
            returns=row.returns,
            return_credit_micros=_micros(row.return_credits),
            failed_opportunity_micros=_micros(row.failed_opportunity),
        )
        for row in response.rows
    ]


def margin_response(totals: MarginTotals, currency: str) -> pb.GetMarginReportResponse:
    return pb.GetMarginReportResponse(
        rows=[
            pb.MarginReportRow(
                flow_id=line.flow_id,
                source_id=line.source_id,
                buyer_id=line.buyer_id,
                leads=line.leads,
                revenue=_money(line.revenue_micros, currency),
                cost=_money(line.cost_micros, currency),
                credits=_money(line.credit_micros, currency),
            )
            for line in totals.lines
        ],
        total_leads=totals.total_leads,
    )


def margin_totals(response: pb.GetMarginReportResponse) -> MarginTotals:
    return MarginTotals(
        lines=tuple(
            MarginLine(
                flow_id=row.flow_id,
                source_id=row.source_id,
                buyer_id=row.buyer_id,
                leads=row.leads,
                revenue_micros=_micros(row.revenue),
                cost_micros=_micros(row.cost),
                credit_micros=_micros(row.credits),
            )
            for row in response.rows
        ),
        total_leads=response.total_leads,
    )


def groups_to_proto(group_by: Sequence[str]) -> list[pb.MarginGroup.ValueType]:
    return [_GROUP_TO_PROTO[key] for key in group_by]


def groups_from_proto(values: Iterable[pb.MarginGroup.ValueType]) -> tuple[str, ...]:
    """Known groups in flow, source, buyer order; raises ReportError on none or an unknown one."""
    names = set()
    for value in values:
        if value not in _GROUP_FROM_PROTO:
            raise ReportError(f"unknown margin group {value}")
        names.add(_GROUP_FROM_PROTO[value])
    if not names:
        raise ReportError("group_by needs at least one of flow, source, buyer")
    return tuple(key for key in GROUP_KEYS if key in names)


# --- What an operator asked for ---------------------------------------------------------------


@dataclass(frozen=True)
class ReportQuery:
    kind: str
    start_date: date
    end_date: date
    time_zone: str
    group_by: tuple[str, ...] = ("flow",)

    @property
    def window(self) -> tuple[datetime, datetime]:
        """[from 00:00, to 00:00) in the report's zone, as aware instants (each with its own
        UTC offset, so a range across a DST change is exactly its local days)."""
        zone = ZoneInfo(self.time_zone)
        start, end = self.start_date, self.end_date
        # In UTC: Python subtracts two datetimes of one zone by wall clock, ignoring DST.
        return (
            datetime(start.year, start.month, start.day, tzinfo=zone).astimezone(UTC),
            datetime(end.year, end.month, end.day, tzinfo=zone).astimezone(UTC),
        )


def parse_query(
    kind: str,
    from_text: str | None,
    to_text: str | None,
    time_zone: str | None,
    group_by: str | None,
    default_time_zone: str,
) -> ReportQuery:
    """Validate report parameters; raises ReportError naming the parameter."""
    if kind not in KINDS:
        raise ReportError(f"unknown report {kind!r}: one of {', '.join(KINDS)}")
    start = _date("from", from_text)
    end = _date("to", to_text)
    if end <= start:
        raise ReportError("to must be after from (to is exclusive)")
    zone = time_zone or default_time_zone
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: name too long
        raise ReportError(f"unknown time zone {zone!r}") from None
    groups: tuple[str, ...] = ("flow",)
    if group_by is not None:
        if kind != "margin":
            raise ReportError("group_by applies to the margin report only")
        parts = {part.strip() for part in group_by.split(",")}
        unknown = sorted(parts - set(GROUP_KEYS))
        if unknown:
            raise ReportError(
                f"group_by: unknown {', '.join(map(repr, unknown))}; use flow, source, buyer"
            )
        groups = tuple(key for key in GROUP_KEYS if key in parts)
    return ReportQuery(kind, start, end, zone, groups)


def _date(name: str, text: str | None) -> date:
    if not text:
        raise ReportError(f"{name} is required (YYYY-MM-DD)")
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{name} must be a date YYYY-MM-DD, got {text!r}") from None


# --- What an operator reads -------------------------------------------------------------------

VENDOR_COLUMNS = (
    "source_id",
    "source_name",
    "leads",
    "accepted",
    "purchase_total",
    "chargebacks",
    "net_payable",
)
BUYER_COLUMNS = (
    "buyer_id",
    "buyer_name",
    "deliveries",
    "sold",
    "failed",
    "errors",
    "unknown",
    "sales_total",
    "returns",
    "return_credits",
    "net_receivable",
    "failed_opportunity",
)
MARGIN_VALUES = ("leads", "revenue", "cost", "credits", "margin", "margin_percent")


@dataclass(frozen=True)
class Report:
    query: ReportQuery
    currency: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    # Columns that only name a row (left out of the totals).
    keys: tuple[str, ...] = ()


def _dollars(micros: int) -> Decimal:
    return from_micros(micros)


def vendor_report(query: ReportQuery, lines: Iterable[VendorLine], config: Config) -> Report:
    """Every configured source (zeros included) and any other source with activity."""
    by_id = {line.source_id: line for line in lines}
    for source in config.sources:
        by_id.setdefault(source.id, VendorLine(source.id))
    rows = []
    for source_id in sorted(by_id):
        line = by_id[source_id]
        configured = config.sources_by_id.get(source_id)
        rows.append(
            {
                "source_id": source_id,
                "source_name": configured.name if configured else source_id,
                "leads": line.leads,
                "accepted": line.accepted,
                "purchase_total": _dollars(line.purchase_micros),
                "chargebacks": _dollars(line.chargeback_micros),
                "net_payable": _dollars(line.purchase_micros - line.chargeback_micros),
            }
        )
    keys = ("source_id", "source_name")
    return Report(query, config.account.currency, VENDOR_COLUMNS, rows, _sum(rows, keys), keys)


def buyer_report(query: ReportQuery, lines: Iterable[BuyerLine], config: Config) -> Report:
    """Every configured buyer (zeros included) and any other buyer with activity."""
    by_id = {line.buyer_id: line for line in lines}
    for buyer in config.buyers:
        by_id.setdefault(buyer.id, BuyerLine(buyer.id))
    rows = []
    for buyer_id in sorted(by_id):
        line = by_id[buyer_id]
        configured = config.buyers_by_id.get(buyer_id)
        rows.append(
            {
                "buyer_id": buyer_id,
                "buyer_name": configured.name if configured else buyer_id,
                "deliveries": line.deliveries,
                "sold": line.sold,
                "failed": line.failed,
                "errors": line.errors,
                "unknown": line.unknown,
                "sales_total": _dollars(line.sales_micros),
                "returns": line.returns,
                "return_credits": _dollars(line.return_credit_micros),
                "net_receivable": _dollars(line.sales_micros - line.return_credit_micros),
                "failed_opportunity": _dollars(line.failed_opportunity_micros),
            }
        )
    keys = ("buyer_id", "buyer_name")
    return Report(query, config.account.currency, BUYER_COLUMNS, rows, _sum(rows, keys), keys)


def margin_report(query: ReportQuery, totals: MarginTotals, currency: str) -> Report:
    """Rows by the query's group keys; totals.leads counts each accepted lead once."""
    keys = tuple(f"{key}_id" for key in query.group_by)
    rows = []
    for line in sorted(totals.lines, key=_margin_order):
        row: dict[str, Any] = {}
        for key in keys:
            value = getattr(line, key)
            row[key] = value or None
        row.update(
            _margin_values(line.leads, line.revenue_micros, line.cost_micros, line.credit_micros)
        )
        rows.append(row)
    summed = {
        name: sum((getattr(line, f"{name}_micros") for line in totals.lines), 0)
        for name in ("revenue", "cost", "credit")
    }
    total = _margin_values(totals.total_leads, summed["revenue"], summed["cost"], summed["credit"])
    return Report(query, currency, (*keys, *MARGIN_VALUES), rows, total, keys)


def _margin_order(line: MarginLine) -> tuple[str, str, str, bool]:
    # Within a flow and source, the "no buyer" row comes last.
    return (line.flow_id, line.source_id, line.buyer_id or "\uffff", not line.buyer_id)


def _margin_values(leads: int, revenue: int, cost: int, credits: int) -> dict[str, Any]:
    margin = revenue - cost - credits
    percent = None
    if revenue:
        percent = (Decimal(margin) * 100 / Decimal(revenue)).quantize(PERCENT, ROUND_HALF_UP)
    return {
        "leads": leads,
        "revenue": _dollars(revenue),
        "cost": _dollars(cost),
        "credits": _dollars(credits),
        "margin": _dollars(margin),
        "margin_percent": percent,
    }


def _sum(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for row in rows:
        for name, value in row.items():
            if name not in keys:
                totals[name] = totals.get(name, ZERO if isinstance(value, Decimal) else 0) + value
    return totals


def to_json(report: Report) -> bytes:
    body: dict[str, Any] = {
        "from": report.query.start_date.isoformat(),
        "to": report.query.end_date.isoformat(),
        "time_zone": report.query.time_zone,
        "currency": report.currency,
    }
    if report.query.kind == "margin":
        body["group_by"] = ",".join(report.query.group_by)
    body["rows"] = report.rows
    body["totals"] = report.totals
    return orjson.dumps(body, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return orjson.Fragment(_cell(value))  # a JSON number, exactly two places
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format_money(value)
    return str(value)


def to_csv(report: Report) -> str:
    """A header line and one line per row (no totals line: every line is a row to sum)."""
    # Source, buyer and flow names come from configuration and are shown as text.
    rows = ([_cell(row.get(column)) for column in report.columns] for row in report.rows)
    return csv_text(report.columns, rows)


def to_table(report: Report) -> str:
    """Aligned columns for a terminal, numbers right-aligned, a TOTAL line last."""
    header = list(report.columns)
    body = [[_cell(row.get(column)) for column in header] for row in report.rows]
    total = [_cell(report.totals.get(column)) for column in header]
    if report.keys:
        total[0] = "TOTAL"
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(len(header))]
    numeric = [column not in report.keys for column in header]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    zone = f"{report.query.time_zone}, {report.currency}"
    title = (
        f"{report.query.kind} report {report.query.start_date} to {report.query.end_date} "
        f"(exclusive), {zone}"
    )
    lines = [title, "", line(header), rule, *(line(cells) for cells in body), rule, line(total)]
    return "\n".join(lines) + "\n"


def render(report: Report, fmt: str) -> tuple[bytes, str]:
    """The body and its media type for `json` or `csv` (HTTP), or `table` (terminal)."""
    if fmt == "json":
        return to_json(report), "application/json"
    if fmt == "csv":
        return to_csv(report).encode(), "text/csv"
    if fmt == "table":
        return to_table(report).encode(), "text/plain"
    raise ReportError(f"format must be one of {', '.join(FORMATS)}")


# --- Between a query and the ledger -----------------------------------------------------------


def ledger_request(query: ReportQuery) -> Any:
    """The ledger's Get*Report request for a query (the window as UTC instants)."""
    start, end = query.window
    message: Any
    if query.kind == "vendors":
        message = pb.GetVendorReportRequest()
    elif query.kind == "buyers":
        message = pb.GetBuyerReportRequest()
    else:
        message = pb.GetMarginReportRequest(group_by=groups_to_proto(query.group_by))
    message.start_time.FromDatetime(start)
    message.end_time.FromDatetime(end)
    return message


def from_reply(query: ReportQuery, reply: Any, config: Config) -> Report:
    """The report an operator reads, from the ledger's Get*Report reply."""
    if query.kind == "vendors":
        return vendor_report(query, vendor_lines(reply), config)
    if query.kind == "buyers":
        return buyer_report(query, buyer_lines(reply), config)
    return margin_report(query, margin_totals(reply), config.account.currency)
