"""The `leadflow` command: up, check, migrate, report."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from leadflow.config import ConfigError, load_config


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok ({len(config.flows)} flows, {len(config.sources)} sources, "
        f"{len(config.buyers)} buyers)"
    )
    return 0


def _up(args: argparse.Namespace) -> int:
    from leadflow.supervisor import up

    if _check(argparse.Namespace(file=args.config)) != 0:
        return 2
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(up(Path(args.config), Path(args.data_dir), args.http_port, args.port_base))


def _migrate(args: argparse.Namespace) -> int:
    from leadflow.migrate import MigrationError, migrate

    # The schema owner migrates; the services' own URL names the role that gets their privileges.
    app_url = os.environ.get("LEADFLOW_DATABASE_URL") or None
    owner_url = os.environ.get("LEADFLOW_MIGRATE_DATABASE_URL") or None
    url = owner_url or app_url
    try:
        done = asyncio.run(
            migrate(url, Path(args.data_dir), app_url=app_url, app_role=args.app_role)
        )
    except MigrationError as exc:
        print(f"leadflow migrate: {exc}", file=sys.stderr)
        return 1
    for line in done:
        print(line)
    if url is None:
        print(f"migrated: SQLite files in {args.data_dir}")
    else:
        print("migrated: " + ("LEADFLOW_MIGRATE" if owner_url else "LEADFLOW") + "_DATABASE_URL")
    return 0


def _report(args: argparse.Namespace) -> int:
    from leadflow.report_command import run_cli

    return run_cli(args)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="leadflow", description="Open lead-distribution engine.")
    commands = root.add_subparsers(dest="command", required=True)
    env_config = os.environ.get("LEADFLOW_CONFIG", "leadflow.yaml")
    env_data = os.environ.get("LEADFLOW_DATA_DIR", "data")

    up = commands.add_parser("up", help="run every service, supervised, until Ctrl-C")
    up.add_argument("--config", default=env_config)
    up.add_argument("--data-dir", default=env_data)
    up.add_argument("--http-port", type=int, default=8080)
    up.add_argument("--port-base", type=int, default=50050)
    up.set_defaults(run=_up)

    check = commands.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(run=_check)

    migrate = commands.add_parser(
        "migrate",
        help="upgrade every service's tables to the current revision (as the schema owner)",
    )
    migrate.add_argument("--data-dir", default=env_data)
    migrate.add_argument(
        "--app-role",
        default=os.environ.get("LEADFLOW_APP_ROLE", "leadflow_app"),
        help="PostgreSQL: the role granted the services' privileges (default leadflow_app)",
    )
    migrate.set_defaults(run=_migrate)

    report = commands.add_parser("report", help="vendor, buyer and margin reports")
    report.add_argument("kind", choices=["vendors", "buyers", "margin"])
    report.add_argument("--from", dest="from_date", required=True)
    report.add_argument("--to", dest="to_date", required=True)
    report.add_argument("--tz", help="IANA zone of the dates (default: the account's)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.add_argument("--group-by", help="margin: flow, source, buyer or a comma list")
    report.add_argument("--config", default=env_config, help="for names, zone and currency")
    report.add_argument("--data-dir", default=env_data, help="embedded storage (ledger.db)")
    report.add_argument(
        "--ledger",
        default=os.environ.get("LEADFLOW_LEDGER_ADDR") or None,
        help="ask a running ledger (host:port) instead of reading its storage",
    )
    report.set_defaults(run=_report)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.run(args))
