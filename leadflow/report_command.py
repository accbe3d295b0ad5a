"""`leadflow report KIND`: a report from the ledger's gRPC API or straight from its storage.

The command lives above the services (it may read the ledger's store), so the reports' shapes in
`leadflow.reports` stay core: the gateway and the ledger use them without pulling in a store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

from leadflow.config import Config, ConfigError, parse_config
from leadflow.reports import (
    Report,
    ReportError,
    ReportQuery,
    buyer_report,
    from_reply,
    ledger_request,
    margin_report,
    parse_query,
    render,
    vendor_report,
)

REPORT_DEADLINE_S = 60.0
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_report_config(path: str) -> Config:
    """The configuration for names, zone and currency. A report needs no secret, so a `${VAR}`
    that is not set (an API key, say) is read as a placeholder instead of refusing the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot read the configuration {path}: {exc.strerror}") from None
    env = dict(os.environ)
    for match in _ENV_REFERENCE.finditer(text):
        name, default = match.group(1), match.group(2)
        if name not in env and default is None:
            env[name] = "unset"
    return parse_config(text, env)


async def _from_ledger(query: ReportQuery, config: Config, address: str) -> Report:
    from leadflow import kit
    from leadflow.ledger.v1 import ledger_service_pb2_grpc

    channel = kit.channel(address)
    try:
        stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
        method: Any = {
            "vendors": stub.GetVendorReport,
            "buyers": stub.GetBuyerReport,
            "margin": stub.GetMarginReport,
        }[query.kind]
        reply = await method(ledger_request(query), timeout=REPORT_DEADLINE_S)
    finally:
        await channel.close()
    return from_reply(query, reply, config)


def ledger_database_url(database_url: str | None, data_dir: str) -> str:
    """LEADFLOW_DATABASE_URL, else the embedded ledger.db under data_dir, which must exist."""
    if database_url:
        return database_url
    path = Path(data_dir).resolve() / "ledger.db"
    if not path.is_file():
        raise ReportError(f"no ledger database at {path} (set --data-dir or --ledger)")
    return f"sqlite+aiosqlite:///{path}"


async def _from_storage(query: ReportQuery, config: Config, url: str) -> Report:
    from ledger_service.store import LedgerStore

    store = LedgerStore.connect(url, "ledger")
    try:
        start, end = query.window
        if query.kind == "vendors":
            return vendor_report(query, await store.vendor_report(start, end), config)
        if query.kind == "buyers":
            return buyer_report(query, await store.buyer_report(start, end), config)
        totals = await store.margin_report(start, end, query.group_by)
        return margin_report(query, totals, config.account.currency)
    finally:
        await store.close()


def run_cli(args: argparse.Namespace) -> int:
    """`leadflow report KIND --from --to [--tz] [--group-by] [--format]`: from the ledger's gRPC
    API when --ledger (or LEADFLOW_LEDGER_ADDR) names one, else straight from the ledger's
    storage (LEADFLOW_DATABASE_URL, or ledger.db under --data-dir), read-only."""
    import grpc

    try:
        config = load_report_config(args.config)
        query = parse_query(
            args.kind,
            args.from_date,
            args.to_date,
            args.tz,
            args.group_by,
            config.account.time_zone,
        )
        if args.ledger:
            report = asyncio.run(_from_ledger(query, config, args.ledger))
        else:
            database_url = os.environ.get("LEADFLOW_DATABASE_URL") or None
            url = ledger_database_url(database_url, args.data_dir)
            report = asyncio.run(_from_storage(query, config, url))
        body, _ = render(report, args.format)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    except ReportError as exc:
        print(f"leadflow report: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"leadflow report: ledger at {args.ledger}: {exc.code().name}", file=sys.stderr)
        return 1
    sys.stdout.write(body.decode())
    return 0
