"""`leadflow migrate`: upgrade every stateful service's schema to its newest Alembic revision and,
on PostgreSQL, give the services' role what it needs and nothing more (SPEC 10).

Each service keeps its revisions beside its tables (`<package>/migrations/versions`) and its own
version table (`alembic_version_<service>`) in its schema, or its SQLite file. The services run
the same upgrade when they open their storage, but it does nothing once the schema is current: a
role that may not run DDL starts fine on a migrated database and is told to run `leadflow
migrate` on one that is not.

`python -m leadflow.migrate --check` (in `make lint`) fails when a service's tables and its
revisions disagree; `python -m leadflow.migrate revision SERVICE -m MESSAGE` writes the next
revision from the difference.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from leadflow import db

# The role `leadflow migrate` grants the services' privileges to, unless told another.
APP_ROLE = "leadflow_app"
# The first revision of every service: the schema `create_all` made before there were revisions.
BASELINE = "0001"
_INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Service:
    """A stateful service's storage: its tables and revisions."""

    name: str  # the default schema (and the SQLite file's name)
    package: str
    # Ledger rows are never changed or removed (SPEC 9): the services' role may only add them.
    append_only: bool = False

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"

    @property
    def metadata(self) -> MetaData:
        meta: MetaData = importlib.import_module(f"{self.package}.tables").Base.metadata
        return meta

    @property
    def location(self) -> Path:
        return Path(importlib.import_module(f"{self.package}.migrations").__file__ or "").parent


SERVICES = {
    s.name: s
    for s in (
        Service("gateway", "gateway"),
        Service("ledger", "ledger_service", append_only=True),
        Service("delivery", "delivery_service"),
        Service("routing", "routing_service"),
    )
}


class MigrationError(Exception):
    """Storage that cannot be brought to the current revision: the message says what to do."""


@cache
def _script(service: str) -> ScriptDirectory:
    # Parsed once per process: every store open consults it.
    return ScriptDirectory(str(SERVICES[service].location))


def _config(service: Service, **attributes: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(service.location))
    config.attributes.update(service=service, **attributes)
    return config


def configure(context: Any, service: Service, connection: Connection) -> None:
    """The one configuration of every run: upgrades and new revisions alike.
    `context` is an EnvironmentContext, or the `alembic.context` module proxying one (env.py)."""
    context.configure(
        connection=connection,
        target_metadata=service.metadata,
        version_table=service.version_table,
        # SQLite alters a table by copying it: batch operations do that for both databases.
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )


def _render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    # A revision is frozen: it names the column type the database gets, not our Python wrapper.
    if kind == "type" and isinstance(obj, db.UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_env() -> None:
    """What each service's migrations/env.py runs (new revisions, the `alembic` command)."""
    from alembic import context

    service = context.config.attributes["service"]
    connection = context.config.attributes["connection"]
    configure(context, service, connection)
    with context.begin_transaction():
        context.run_migrations()


def _current(connection: Connection, service: Service) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": service.version_table})
    return context.get_current_revision()


def _head(service: Service) -> str | None:
    return _script(service.name).get_current_head()


def _upgrade(connection: Connection, service: Service, target: str = "head") -> str:
    """Upgrade to `target` (the newest revision unless told); returns where it started: a
    revision, `empty` or `unversioned` (made by create_all before revisions existed)."""
    script = _script(service.name)
    current = _current(connection, service)
    start = current or "empty"
    baseline = script.get_revision(BASELINE) if script.get_heads() else None
    if current is None and baseline is not None:
        names = set(inspect(connection).get_table_names())
        existing = set(baseline.module.TABLES) & names
        if existing == set(baseline.module.TABLES):
            # Made by `create_all` before revisions existed: exactly the baseline revision.
            MigrationContext.configure(
                connection, opts={"version_table": service.version_table}
            ).stamp(script, BASELINE)
            start = "unversioned"
        elif existing:
            raise MigrationError(
                f"{service.name}: some of its tables exist ({', '.join(sorted(existing))}) but "
                "no revision is recorded: this is not a database leadflow made"
            )
    config = _config(service, connection=connection)
    with EnvironmentContext(
        config,
        script,
        fn=lambda rev, _context: script._upgrade_revs(target, rev),
        destination_rev=target,
    ) as context:
        configure(context, service, connection)
        with context.begin_transaction():
            context.run_migrations()
    return start


async def upgrade(engine: AsyncEngine, schema: str, service: str, target: str = "head") -> str:
    """Bring `service`'s schema on `engine` to its newest revision and say where it started;
    nothing is run, and nothing is needed but SELECT on the version table, when it already is
    there."""
    spec = SERVICES[service]
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(_current, spec)
            if current is not None and current == (_head(spec) if target == "head" else target):
                return current
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting at once (and `leadflow migrate`) upgrade one at a time.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema}
                )
                if not await _schema_exists(conn, schema):
                    await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            start: str = await conn.run_sync(_upgrade, spec, target)
    except DBAPIError as exc:
        if _sqlstate(exc) != _INSUFFICIENT_PRIVILEGE:
            raise
        raise MigrationError(
            f"schema {schema!r} is not at {service}'s current revision {_head(spec)} and this "
            "database role may not upgrade it: run `leadflow migrate` as the schema owner "
            "(LEADFLOW_MIGRATE_DATABASE_URL)"
        ) from exc
    return start


async def _schema_exists(conn: AsyncConnection, schema: str) -> bool:
    found = await conn.scalar(
        text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
    )
    return bool(found)


def _sqlstate(exc: DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(code) if code else None


# --- leadflow migrate --------------------------------------------------------------------------


async def migrate(
    database_url: str | None,
    data_dir: Path,
    *,
    app_url: str | None = None,
    app_role: str = APP_ROLE,
    schemas: Mapping[str, str] | None = None,
    target: str = "head",
) -> list[str]:
    """Upgrade every service's storage to `target` (the newest revision unless told), as
    `database_url`'s role (the owner), and, on PostgreSQL when the services connect as another
    role (`app_url`), set that role's privileges. Returns what it did, a line each, for the
    operator."""
    schemas = schemas or {name: name for name in SERVICES}
    done: list[str] = []
    for name, service in SERVICES.items():
        schema = schemas[name]
        engine = db.create_engine(db.database_url(database_url, data_dir, name), schema)
        try:
            start = await upgrade(engine, schema, name, target)
            done.append(f"{name}: {start} -> {_head(service) if target == 'head' else target}")
        finally:
            await engine.dispose()
    if database_url and make_url(database_url).get_backend_name() == "postgresql":
        done += await _set_roles(database_url, app_url, app_role, schemas)
    return done


def grants(service: Service, schema: str, role: str) -> list[str]:
    """The statements that give `role` exactly what the service needs in `schema`."""
    quoted = _quote(role)
    rights = "SELECT, INSERT" if service.append_only else "SELECT, INSERT, UPDATE, DELETE"
    statements = [f"GRANT USAGE ON SCHEMA {_quote(schema)} TO {quoted}"]
    for table in [service.version_table, *(t.name for t in service.metadata.sorted_tables)]:
        name = f"{_quote(schema)}.{_quote(table)}"
        # Whatever the role held before (an older grant, a hand-made one) goes first.
        statements.append(f"REVOKE ALL ON {name} FROM {quoted}")
        granted = "SELECT" if table == service.version_table else rights
        statements.append(f"GRANT {granted} ON {name} TO {quoted}")
    statements.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {_quote(schema)} TO {quoted}")
    return statements


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _set_roles(
    owner_url: str, app_url: str | None, app_role: str, schemas: Mapping[str, str]
) -> list[str]:
    owner = make_url(owner_url)
    app = make_url(app_url) if app_url else None
    if app is None or app.username == owner.username:
        return [
            "roles: the services connect as the schema owner, so they could bypass the "
            "ledger's append-only triggers: set LEADFLOW_MIGRATE_DATABASE_URL to the owner "
            "and LEADFLOW_DATABASE_URL to another role (README: Database schema and roles)"
        ]
    done: list[str] = []
    engine = db.create_engine(owner_url, "public")
    try:
        async with engine.begin() as conn:
            # Two migrations at once would both try to create the roles.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('leadflow roles'))"))
            if not await _role_exists(conn, app_role):
                await _ddl(conn, f"CREATE ROLE {_quote(app_role)} NOLOGIN", app_role)
                done.append(f"roles: created {app_role}")
            user = app.username
            if user and user != app_role:
                if not await _role_exists(conn, user):
                    password = f" PASSWORD {_literal(app.password)}" if app.password else ""
                    await _ddl(conn, f"CREATE ROLE {_quote(user)} LOGIN{password}", user)
                    done.append(f"roles: created {user}")
                member = await conn.scalar(
                    text("SELECT pg_has_role(:u, :r, 'MEMBER')"), {"u": user, "r": app_role}
                )
                if not member:
                    await _ddl(conn, f"GRANT {_quote(app_role)} TO {_quote(user)}", user)
                    done.append(f"roles: granted {app_role} to {user}")
            for role in {app_role, user or app_role}:
                await _refuse_powerful(conn, role, schemas)
            for name, service in SERVICES.items():
                for statement in grants(service, schemas[name], app_role):
                    await conn.execute(text(statement))
            done.append(f"roles: {app_role} may read and append ledger rows, nothing more")
    finally:
        await engine.dispose()
    return done


async def _role_exists(conn: AsyncConnection, role: str) -> bool:
    found = await conn.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": role})
    return bool(found)


async def _ddl(conn: AsyncConnection, statement: str, role: str) -> None:
    try:
        await conn.execute(text(statement))
    except DBAPIError as exc:
        if _sqlstate(exc) != _INSUFFICIENT_PRIVILEGE:
            raise
        raise MigrationError(
            f"the owner role may not create or grant role {role!r}: create the roles yourself "
            "(README: Database schema and roles) and run `leadflow migrate` again"
        ) from exc


async def _refuse_powerful(conn: AsyncConnection, user: str, schemas: Mapping[str, str]) -> None:
    """A services' role that is a superuser or owns the tables can disable the ledger's
    triggers: refuse it rather than pretend the ledger is protected (and, for the owner, rather
    than revoke its own privileges)."""
    superuser = await conn.scalar(
        text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = :u"), {"u": user}
    )
    owns = await conn.scalar(
        text(
            "SELECT count(*) FROM pg_tables WHERE schemaname = :s "
            "AND pg_has_role(:u, tableowner, 'MEMBER')"
        ),
        {"s": schemas["ledger"], "u": user},
    )
    if superuser or owns:
        raise MigrationError(
            f"the services' role {user!r} is a superuser or owns the ledger's tables: "
            "it could bypass the ledger's append-only triggers; give the services a role of "
            "their own (README: Database schema and roles)"
        )


# --- python -m leadflow.migrate: --check and new revisions --------------------------------------


@contextlib.contextmanager
def _scratch(service: Service) -> Iterator[Connection]:
    """A connection to a throwaway SQLite file upgraded to the service's newest revision."""
    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        try:
            with engine.begin() as conn:
                _upgrade(conn, service)
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()


def differences(connection: Connection, service: Service) -> list[Any]:
    """What autogenerate would write for `service` against the database on `connection`."""
    context = MigrationContext.configure(
        connection,
        opts={
            "version_table": service.version_table,
            "compare_type": True,
            "target_metadata": service.metadata,
        },
    )
    return list(compare_metadata(context, service.metadata))


def check(names: Sequence[str]) -> int:
    failed = 0
    for name in names:
        service = SERVICES[name]
        with _scratch(service) as conn:
            diff = differences(conn, service)
        if diff:
            failed += 1
            print(f"{name}: its tables and its migrations disagree:", file=sys.stderr)
            for item in diff:
                print(f"  {item}", file=sys.stderr)
            print(
                f"  add a revision: python -m leadflow.migrate revision {name} -m '...'",
                file=sys.stderr,
            )
        else:
            print(f"{name}: tables match revision {_head(service)}")
    return 1 if failed else 0


def revision(name: str, message: str) -> None:
    service = SERVICES[name]
    head = _head(service)
    rev_id = f"{int(head or '0') + 1:04d}"
    with _scratch(service) as conn:
        command.revision(
            _config(service, connection=conn),
            message=message,
            autogenerate=True,
            rev_id=rev_id,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leadflow.migrate")
    parser.add_argument(
        "--check", action="store_true", help="fail when tables and revisions differ"
    )
    sub = parser.add_subparsers(dest="command")
    new = sub.add_parser("revision", help="write the next revision from the tables' changes")
    new.add_argument("service", choices=sorted(SERVICES))
    new.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    if args.command == "revision":
        revision(args.service, args.message)
        return 0
    if args.check:
        return check(sorted(SERVICES))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
