"""The `leadflow` command: up, check, schema, migrate, report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

from leadflow.config import ConfigError, parse_config
from leadflow.config_locate import locate


def _check(args: argparse.Namespace) -> int:
    """SPEC 3: every problem as `FILE:LINE:COL: PATH: message`, one a line; exit 1 if any."""
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{args.file}: cannot read it: {exc.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"{args.file}: not UTF-8 text", file=sys.stderr)
        return 1
    try:
        config = parse_config(text)
    except ConfigError as exc:
        for located in sorted(
            locate(text, exc.problems), key=lambda item: (item.line or 0, item.column or 0)
        ):
            print(located.render(args.file), file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok ({len(config.flows)} flows, {len(config.sources)} sources, "
        f"{len(config.buyers)} buyers)"
    )
    return 0


def config_schema() -> dict[str, object]:
    """The configuration's JSON Schema (draft 2020-12), for editors: `leadflow schema`."""
    from leadflow.config import Config

    schema = Config.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "leadflow configuration"
    definitions = schema.get("$defs", {})
    if isinstance(definitions, dict) and "RuleSetSpec" in definitions:
        # A rule set may also be written as a plain list of rules (SPEC 3), which the model
        # accepts before validation and pydantic's schema cannot see.
        definitions["RuleSetSpec"] = {
            "anyOf": [
                definitions["RuleSetSpec"],
                {"type": "array", "items": {"$ref": "#/$defs/Rule"}},
            ]
        }
    return schema


def _schema(_args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
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


def _env(name: str, fallback: str) -> str:
    return os.environ.get(name) or fallback


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="leadflow", description="Open lead-distribution engine.")
    root.add_argument("--version", action="version", version=f"leadflow {version('leadflow')}")
    commands = root.add_subparsers(dest="command", required=True)
    env_config = _env("LEADFLOW_CONFIG", "leadflow.yaml")
    env_data = _env("LEADFLOW_DATA_DIR", "data")
    config_help = "configuration file (default: %(default)s; environment LEADFLOW_CONFIG)"
    data_help = "embedded storage directory (default: %(default)s; environment LEADFLOW_DATA_DIR)"

    up = commands.add_parser(
        "up",
        help="run every service, supervised, until Ctrl-C",
        description="Run every service as a supervised child process; Ctrl-C stops them "
        "gracefully. Prints `leadflow ready http://127.0.0.1:PORT` once /healthz is 200.",
    )
    up.add_argument("--config", default=env_config, help=config_help)
    up.add_argument("--data-dir", default=env_data, help=data_help)
    up.add_argument(
        "--http-port",
        type=_port,
        default=8080,
        help="the gateway's HTTP port (default: %(default)s)",
    )
    up.add_argument(
        "--port-base",
        type=_port,
        default=50050,
        help="gRPC ports are B+1..B+5 and metrics ports B+11..B+15 (default: %(default)s)",
    )
    up.set_defaults(run=_up)

    check = commands.add_parser(
        "check",
        help="validate a configuration file",
        description="Print every problem as FILE:LINE:COL: PATH: message; exit 1 if any.",
    )
    check.add_argument("file", help="the YAML configuration file")
    check.set_defaults(run=_check)

    schema = commands.add_parser(
        "schema",
        help="print the configuration's JSON Schema (for editors)",
        description="The JSON Schema of the configuration file, for editors' completion and "
        "validation (e.g. `leadflow schema > leadflow.schema.json`).",
    )
    schema.set_defaults(run=_schema)

    migrate = commands.add_parser(
        "migrate",
        help="upgrade every service's tables to the current revision (as the schema owner)",
        description="Alembic upgrade of every service's schema to head, from an empty database "
        "or any released schema; safe to run again. Connects with LEADFLOW_MIGRATE_DATABASE_URL "
        "(the schema owner), else LEADFLOW_DATABASE_URL, else SQLite files under --data-dir.",
    )
    migrate.add_argument("--data-dir", default=env_data, help=data_help)
    migrate.add_argument(
        "--app-role",
        default=_env("LEADFLOW_APP_ROLE", "leadflow_app"),
        help="PostgreSQL: the role granted the services' privileges (default: %(default)s; "
        "environment LEADFLOW_APP_ROLE)",
    )
    migrate.set_defaults(run=_migrate)

    report = commands.add_parser("report", help="vendor, buyer and margin reports")
    report.add_argument("kind", choices=["vendors", "buyers", "margin"], help="which report")
    report.add_argument(
        "--from", dest="from_date", required=True, help="first day, YYYY-MM-DD (inclusive)"
    )
    report.add_argument(
        "--to", dest="to_date", required=True, help="last day, YYYY-MM-DD (exclusive)"
    )
    report.add_argument("--tz", help="IANA zone of the dates (default: the account's)")
    report.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="output format (default: %(default)s)",
    )
    report.add_argument(
        "--group-by", help="margin: flow, source, buyer or a comma list (default: flow)"
    )
    report.add_argument(
        "--config",
        default=env_config,
        help="for names, zone and currency (default: %(default)s; environment LEADFLOW_CONFIG)",
    )
    report.add_argument(
        "--data-dir",
        default=env_data,
        help="embedded storage with ledger.db (default: %(default)s; environment "
        "LEADFLOW_DATA_DIR)",
    )
    report.add_argument(
        "--ledger",
        default=os.environ.get("LEADFLOW_LEDGER_ADDR") or None,
        help="ask a running ledger (host:port) instead of reading its storage (default: "
        "read the storage; environment LEADFLOW_LEDGER_ADDR)",
    )
    report.set_defaults(run=_report)
    return root


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return port


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.run(args))
