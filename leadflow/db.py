"""Storage plumbing every service shares: engines for SQLite and PostgreSQL, one schema per
service, and the column types that hide their differences (aware datetimes)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import DateTime, Insert, MetaData, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from leadflow import tracing

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# A pooled PostgreSQL connection idle for longer than this is pinged before it is used again
# (_check_on_checkout).
IDLE_PING_S = 1.0
_IDLE_SINCE = "leadflow_idle_since"


def metadata(service: str | None = None) -> MetaData:
    """A service's tables; `service` names its Alembic revisions (leadflow.migrate.SERVICES),
    which then make and upgrade them instead of `create_all`."""
    info = {"service": service} if service else {}
    return MetaData(naming_convention=NAMING_CONVENTION, info=info)


@overload
def aware(value: datetime | str) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | str | None) -> datetime | None:
    """A datetime read back from either engine as aware UTC: SQLite hands back naive UTC (and
    ISO text where an aggregate such as max() loses the column type), PostgreSQL aware values."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def insert_ignore(table: Any, dialect: Dialect | str, index_elements: Any = None) -> Insert:
    """INSERT … ON CONFLICT DO NOTHING on either engine: idempotent by key, never aborting the
    transaction; `index_elements` names the conflict target (any unique key when None)."""
    name = dialect if isinstance(dialect, str) else dialect.name
    if name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    if name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    raise ValueError(f"unsupported database {name!r}")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite hands back naive ones, PostgreSQL aware ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store aware UTC datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return aware(value)


def database_url(configured: str | None, data_dir: str | Path, service: str) -> str:
    """LEADFLOW_DATABASE_URL when set, else an embedded SQLite file per service."""
    if configured:
        return configured
    path = Path(data_dir).resolve() / f"{service}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


def create_engine(url: str, schema: str) -> AsyncEngine:
    """An engine whose connections see only `schema` on PostgreSQL (one schema per service)."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        tracing.instrument_engine(engine)
        return engine
    if backend == "postgresql":
        engine = create_async_engine(
            url,
            pool_size=10,
            max_overflow=20,
            connect_args={"server_settings": {"search_path": schema}},
        )
        _check_on_checkout(engine)
        tracing.instrument_engine(engine)
        return engine
    raise ValueError(
        f"unsupported database {backend!r}: use sqlite+aiosqlite or postgresql+asyncpg"
    )


def _check_on_checkout(engine: AsyncEngine) -> None:
    """A pooled connection that has gone (PostgreSQL restarted, a backend was terminated, an
    idle timeout) is replaced at checkout instead of failing the transaction that gets it.

    Not SQLAlchemy's pool_pre_ping, which on asyncpg costs BEGIN, a query and ROLLBACK (three
    round trips) before every transaction: measured 100-190 us of client and 30-90 us of server
    CPU per transaction, on every write of every lead. Here a connection the server closed is
    seen for free (asyncpg has read the server's goodbye while it sat in the pool), and only one
    idle for over IDLE_PING_S, which a busy pool never has, pays the ping for what a closed
    socket does not show (a network that dropped it silently). A connection that dies while it
    is in use fails its transaction, as with pre-ping; SQLAlchemy then replaces the whole pool.
    """

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None:  # connected just now
            return
        if _closed(dbapi_connection):
            raise DisconnectionError("the server closed the connection")
        if time.monotonic() - idle_since > IDLE_PING_S:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                raise DisconnectionError(f"ping failed: {exc}") from exc

    event.listen(engine.sync_engine, "checkin", checkin)
    event.listen(engine.sync_engine, "checkout", checkout)


def _closed(dbapi_connection: Any) -> bool:
    """Whether asyncpg knows its connection is closed (it saw the socket end)."""
    return bool(dbapi_connection.driver_connection.is_closed())


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout waits for a lock instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


async def create_schema(engine: AsyncEngine, schema: str, meta: MetaData) -> None:
    """Bring the service's schema and tables to their newest revision (what `leadflow migrate`
    runs); once they are there, only reads the version. Tables outside the services (benches)
    are created if missing."""
    service = meta.info.get("service")
    if service is not None:
        from leadflow.migrate import upgrade  # migrate imports this module

        await upgrade(engine, schema, service)
        return
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two replicas starting at once both try: serialize on an advisory lock.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(meta.create_all)


async def open_engine(url: str, schema: str, meta: MetaData) -> AsyncEngine:
    """An engine on `url` whose schema and tables are current (upgraded if not); disposed again
    when that fails, so a store that cannot start leaks no connections."""
    engine = create_engine(url, schema)
    try:
        await create_schema(engine, schema, meta)
    except BaseException:
        await engine.dispose()
        raise
    return engine
