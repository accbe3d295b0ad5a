"""Dashboards as code: writes dashboards/delivery.json and dashboards/margin.json.

Run `python deploy/grafana/generate.py` after changing a panel; a unit test fails while the JSON
files differ from what this script writes. Every query uses the provisioned datasource (fixed
uid, provisioning/datasources/prometheus.yml), so the files import as they are.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "leadflow-prometheus"}
HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
RANGE = "$__range"
RATE = "$__rate_interval"

Panel = dict[str, Any]


# --- PromQL ------------------------------------------------------------------------------------


def over_range(selector: str, window: str = RANGE) -> str:
    """What a counter added over the window, per series, to the cent where no process restarted.

    `increase()` extrapolates to the window's edges (a few percent off for money) and misses a
    series' first value when the series starts inside the window. So: the last value less the
    value just before the window; a series born inside the window counts whole (it started at
    zero); only a series that reset (a restarted process) falls back to `increase()`.
    """
    last = f"max_over_time({selector}[{window}])"
    return (
        f"((({last} - {selector} offset {window}) or {last})"
        f" unless resets({selector}[{window}]) > 0)"
        f" or increase({selector}[{window}])"
    )


def per_hour(selector: str) -> str:
    return f"rate({selector}[{RATE}]) * 3600"


def signed_sum(by: str, parts: Sequence[tuple[str, str, str]]) -> str:
    """sum by (`by`) of +/- terms, a term missing for a group counting as zero: each term gets
    its own `part` label so `or` keeps every series, then the sum adds them up."""
    terms = []
    for sign, name, expr in parts:
        value = f"-({expr})" if sign == "-" else f"({expr})"
        terms.append(f'label_replace({value}, "part", "{name}", "", "")')
    grouping = f"by ({by}) " if by else ""
    return f"sum {grouping}(\n  " + "\n  or ".join(terms) + "\n)"


def sum_by(by: str, expr: str) -> str:
    return f"sum by ({by}) ({expr})" if by else f"sum({expr})"


# --- Panels ------------------------------------------------------------------------------------


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False
) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
        "editorMode": "code",
    }


def _field_config(unit: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(extra or {})
    return {"defaults": defaults, "overrides": []}


def timeseries(
    title: str, targets: list[dict[str, Any]], unit: str, description: str, w: int = 12
) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": _field_config(
            unit, {"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}}
        ),
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (w, 8),
    }


def stat(title: str, expr: str, unit: str, description: str, decimals: int | None = None) -> Panel:
    extra: dict[str, Any] = {"decimals": decimals} if decimals is not None else {}
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, instant=True)],
        "fieldConfig": _field_config(unit, extra),
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        },
        "_size": (4, 4),
    }


def table(
    title: str,
    columns: list[tuple[str, str]],
    by: Sequence[str],
    unit: str,
    description: str,
    units: dict[str, str] | None = None,
) -> Panel:
    """One row per group, one column per (name, instant query): Grafana joins them on `by`;
    `units` overrides the unit of named columns."""
    targets = [
        target(expr, ref=chr(ord("A") + i), instant=True, table=True)
        for i, (_, expr) in enumerate(columns)
    ]
    renames = {f"Value #{chr(ord('A') + i)}": name for i, (name, _) in enumerate(columns)}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "decimals": 2},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": name},
                    "properties": [{"id": "unit", "value": column_unit}],
                }
                for name, column_unit in (units or {}).items()
            ],
        },
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": {key: i for i, key in enumerate(by)},
                    "renameByName": renames,
                },
            },
        ],
        "_size": (24, 8),
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: Iterable[Panel]) -> list[Panel]:
    """Ids and grid positions, left to right and top to bottom; a row starts a new line."""
    placed = []
    x = y = line_height = 0
    for number, panel in enumerate(panels, start=1):
        w, h = panel.pop("_size")
        if panel["type"] == "row" or x + w > 24:
            x, y, line_height = 0, y + line_height, 0
        panel["id"] = number
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        placed.append(panel)
        x += w
        line_height = max(line_height, h)
        if panel["type"] == "row":
            x, y, line_height = 0, y + h, 0
    return placed


def variable(name: str, label: str, metric: str) -> dict[str, Any]:
    query = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values", "qryType": 1},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["leadflow"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["leadflow"],
                "title": "leadflow",
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


# --- Delivery ----------------------------------------------------------------------------------


def delivery() -> dict[str, Any]:
    sel = 'buyer=~"$buyer", adapter=~"$adapter"'
    deliveries = f"leadflow_deliveries_total{{{sel}}}"
    attempts = f'leadflow_deliveries_total{{{sel}, outcome!="queued"}}'
    success = f'leadflow_deliveries_total{{{sel}, outcome="success"}}'
    errors = f'leadflow_deliveries_total{{{sel}, outcome="error"}}'
    failures = f'leadflow_deliveries_total{{{sel}, outcome="failure"}}'
    retries = 'leadflow_delivery_retries_total{buyer=~"$buyer"}'
    pending = 'leadflow_batch_pending_leads{buyer=~"$buyer"}'
    buckets = f"leadflow_delivery_duration_seconds_bucket{{{sel}}}"
    grpc = 'grpc_server_handled_total{grpc_service="leadflow.delivery.v1.DeliveryService"}'
    grpc_seconds = (
        'grpc_server_handling_seconds_bucket{grpc_service="leadflow.delivery.v1.DeliveryService"}'
    )

    def quantile(q: str, ref: str) -> dict[str, Any]:
        expr = f"histogram_quantile({q}, sum by (buyer, adapter, le) (rate({buckets}[{RATE}])))"
        return target(expr, f"p{q[2:].ljust(2, '0')} {{{{buyer}}}} ({{{{adapter}}}})", ref)

    panels = [
        row("Over the selected range"),
        stat(
            "Deliveries",
            sum_by("", over_range(attempts)),
            "short",
            "Leads delivered or attempted (success, failure, error); queued batch leads count "
            "once their file is sent.",
            0,
        ),
        stat(
            "Success rate",
            f"{sum_by('', over_range(success))} / {sum_by('', over_range(attempts))}",
            "percentunit",
            "Deliveries the buyer accepted, of all deliveries.",
        ),
        stat(
            "Errors",
            sum_by("", over_range(errors)),
            "short",
            "Deliveries that could not be made (after retries): timeouts, connection and HTTP "
            "errors, SFTP and SMTP failures.",
            0,
        ),
        stat(
            "Rejections",
            sum_by("", over_range(failures)),
            "short",
            "Deliveries the buyer answered with a rejection.",
            0,
        ),
        stat(
            "Retries",
            sum_by("", over_range(retries)),
            "short",
            "Delivery attempts repeated after an error (HTTP retries, batch file retries).",
            0,
        ),
        stat(
            "Batch backlog",
            f"sum(max by (buyer) ({pending}))",
            "short",
            "Leads waiting for their buyer's next batch file, now.",
            0,
        ),
        row("Deliveries"),
        timeseries(
            "Deliveries by buyer and outcome",
            [target(sum_by("buyer, outcome", f"rate({deliveries}[{RATE}])"))],
            "ops",
            "Per second; `queued` is a lead put in a batch queue.",
        ),
        timeseries(
            "Success rate by buyer",
            [
                target(
                    f"{sum_by('buyer', f'rate({success}[{RATE}])')}"
                    f" / {sum_by('buyer', f'rate({attempts}[{RATE}])')}",
                    "{{buyer}}",
                )
            ],
            "percentunit",
            "Accepted deliveries over all deliveries (queued leads left out).",
        ),
        timeseries(
            "Errors by buyer and adapter",
            [target(sum_by("buyer, adapter", f"rate({errors}[{RATE}])"))],
            "ops",
            "Deliveries ending in error, per second.",
        ),
        timeseries(
            "Rejections by buyer",
            [target(sum_by("buyer", f"rate({failures}[{RATE}])"), "{{buyer}}")],
            "ops",
            "Deliveries the buyer rejected, per second.",
        ),
        row("Latency"),
        timeseries(
            "Delivery time p50 / p95 / p99 by buyer and adapter",
            [quantile("0.5", "A"), quantile("0.95", "B"), quantile("0.99", "C")],
            "s",
            "From the first attempt to the buyer's answer, retries and backoff included; for "
            "batch buyers, the time to send one file.",
            24,
        ),
        row("Retries and batches"),
        timeseries(
            "Retries by buyer",
            [target(sum_by("buyer", f"rate({retries}[{RATE}])"), "{{buyer}}")],
            "ops",
            "Delivery attempts repeated after an error, per second.",
        ),
        timeseries(
            "Batch backlog by buyer",
            [target(f"max by (buyer) ({pending})", "{{buyer}}")],
            "short",
            "Leads queued for a batch buyer and not yet in a delivered file (every delivery "
            "replica reports the same database queue: max, not sum).",
        ),
        table(
            "Deliveries by buyer, adapter and outcome",
            [("Deliveries", sum_by("buyer, adapter, outcome", over_range(deliveries)))],
            ("buyer", "adapter", "outcome"),
            "short",
            "Over the selected range.",
        ),
        row("Delivery service"),
        timeseries(
            "Delivery RPCs by method and code",
            [target(sum_by("grpc_method, grpc_code", f"rate({grpc}[{RATE}])"))],
            "reqps",
            "gRPC calls the delivery service handled, per second.",
        ),
        timeseries(
            "Delivery RPC time p95 by method",
            [
                target(
                    "histogram_quantile(0.95, sum by (grpc_method, le) "
                    f"(rate({grpc_seconds}[{RATE}])))",
                    "{{grpc_method}}",
                )
            ],
            "s",
            "Server-side handling time of the delivery service's RPCs.",
        ),
    ]
    return dashboard(
        "leadflow-delivery",
        "leadflow / Delivery",
        "Deliveries to buyers: volume, success, latency, retries, errors and batch backlog.",
        [
            variable("buyer", "Buyer", "leadflow_deliveries_total"),
            variable("adapter", "Adapter", "leadflow_deliveries_total"),
        ],
        panels,
    )


# --- Margin ------------------------------------------------------------------------------------

REVENUE = 'leadflow_sale_revenue_dollars_total{flow=~"$flow", buyer=~"$buyer"}'
COST = 'leadflow_purchase_cost_dollars_total{flow=~"$flow", source=~"$source"}'
RETURNS = 'leadflow_returns_dollars_total{flow=~"$flow", source=~"$source", buyer=~"$buyer"}'
CREDITS = RETURNS.replace("}", ', kind="credit"}')
CHARGEBACKS = RETURNS.replace("}", ', kind="chargeback"}')
# Margin is per flow: revenue has no source and cost no buyer, so only the flow filter applies.
M_REVENUE = 'leadflow_sale_revenue_dollars_total{flow=~"$flow"}'
M_COST = 'leadflow_purchase_cost_dollars_total{flow=~"$flow"}'
M_CREDITS = 'leadflow_returns_dollars_total{flow=~"$flow", kind="credit"}'
M_CHARGEBACKS = 'leadflow_returns_dollars_total{flow=~"$flow", kind="chargeback"}'


def margin_expr(by: str, amount: Any) -> str:
    """Revenue - purchase cost - return credits + vendor chargebacks, as the ledger's margin
    report computes it; `amount` turns a selector into dollars (over the range, or per hour)."""
    return signed_sum(
        by,
        [
            ("+", "revenue", amount(M_REVENUE)),
            ("-", "cost", amount(M_COST)),
            ("-", "credits", amount(M_CREDITS)),
            ("+", "chargebacks", amount(M_CHARGEBACKS)),
        ],
    )


def margin_percent_expr(by: str, amount: Any) -> str:
    return f"{margin_expr(by, amount)}\n/ ({sum_by(by, amount(M_REVENUE))} > 0)"


def margin() -> dict[str, Any]:
    def over(selector: str) -> str:
        return over_range(selector)

    panels = [
        row("Over the selected range"),
        stat(
            "Revenue",
            sum_by("", over(REVENUE)),
            "currencyUSD",
            "Sale prices of successful deliveries (real time and batch).",
            2,
        ),
        stat(
            "Purchase cost",
            sum_by("", over(COST)),
            "currencyUSD",
            "Purchase prices of accepted leads, paid to vendors.",
            2,
        ),
        stat(
            "Return credits",
            sum_by("", over(CREDITS)),
            "currencyUSD",
            "Credits of approved buyer returns.",
            2,
        ),
        stat(
            "Margin",
            margin_expr("", over),
            "currencyUSD",
            "Revenue less purchase cost and return credits, plus vendor chargebacks (flow "
            "filter only).",
            2,
        ),
        stat(
            "Margin %",
            margin_percent_expr("", over),
            "percentunit",
            "Margin over revenue (flow filter only).",
        ),
        stat(
            "Vendor chargebacks",
            sum_by("", over(CHARGEBACKS)),
            "currencyUSD",
            "Purchase prices taken back from vendors for returned leads (return_to_source).",
            2,
        ),
        table(
            "Margin by flow",
            [
                ("Revenue", sum_by("flow", over(M_REVENUE))),
                (
                    "Cost",
                    signed_sum(
                        "flow",
                        [("+", "cost", over(M_COST)), ("-", "chargebacks", over(M_CHARGEBACKS))],
                    ),
                ),
                ("Return credits", sum_by("flow", over(M_CREDITS))),
                ("Margin", margin_expr("flow", over)),
                ("Margin %", margin_percent_expr("flow", over)),
            ],
            ("flow",),
            "currencyUSD",
            "Per flow over the selected range, as `leadflow report margin` computes it (cost is "
            "purchases less vendor chargebacks): each to the cent unless a service restarted "
            "inside the range.",
            {"Margin %": "percentunit"},
        ),
        row("Over time"),
        timeseries(
            "Revenue per hour by flow",
            [target(sum_by("flow", per_hour(REVENUE)), "{{flow}}")],
            "currencyUSD",
            "Sale revenue, dollars per hour.",
            8,
        ),
        timeseries(
            "Purchase cost per hour by flow and source",
            [target(sum_by("flow, source", per_hour(COST)), "{{flow}} / {{source}}")],
            "currencyUSD",
            "Purchase prices paid to vendors, dollars per hour.",
            8,
        ),
        timeseries(
            "Margin per hour by flow",
            [target(margin_expr("flow", per_hour), "{{flow}}")],
            "currencyUSD",
            "Revenue less cost and return credits, plus chargebacks, dollars per hour.",
            8,
        ),
        timeseries(
            "Margin % by flow",
            [target(margin_percent_expr("flow", per_hour), "{{flow}}")],
            "percentunit",
            "Margin over revenue.",
            8,
        ),
        timeseries(
            "Revenue per hour by buyer",
            [target(sum_by("buyer", per_hour(REVENUE)), "{{buyer}}")],
            "currencyUSD",
            "Sale revenue by buyer, dollars per hour.",
            8,
        ),
        timeseries(
            "Return credits per hour by buyer",
            [
                target(
                    sum_by(
                        "buyer", per_hour('leadflow_return_credits_dollars_total{buyer=~"$buyer"}')
                    ),
                    "{{buyer}}",
                )
            ],
            "currencyUSD",
            "Credits of approved returns, dollars per hour.",
            8,
        ),
        row("By source and buyer"),
        table(
            "Cost by flow and source",
            [("Purchase cost", sum_by("flow, source", over(COST)))],
            ("flow", "source"),
            "currencyUSD",
            "Over the selected range.",
        ),
        table(
            "Revenue by flow and buyer",
            [("Revenue", sum_by("flow, buyer", over(REVENUE)))],
            ("flow", "buyer"),
            "currencyUSD",
            "Over the selected range.",
        ),
        table(
            "Returns by flow, source and buyer",
            [
                ("Return credits", sum_by("flow, source, buyer", over(CREDITS))),
                ("Vendor chargebacks", sum_by("flow, source, buyer", over(CHARGEBACKS))),
            ],
            ("flow", "source", "buyer"),
            "currencyUSD",
            "Over the selected range.",
        ),
    ]
    return dashboard(
        "leadflow-margin",
        "leadflow / Margin",
        "Revenue, purchase cost, margin and return credits by flow, source and buyer.",
        [
            variable("flow", "Flow", "leadflow_leads_total"),
            variable("source", "Source", "leadflow_leads_total"),
            variable("buyer", "Buyer", "leadflow_deliveries_total"),
        ],
        panels,
    )


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


BOARDS = {"delivery.json": delivery, "margin.json": margin}


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards; with --check, only report (exit 1) those that are out of date."""
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, build in BOARDS.items():
        path = DASHBOARDS / name
        text = render(build())
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    for name in stale:
        print(f"deploy/grafana/dashboards/{name} is out of date: run deploy/grafana/generate.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
