"""The baseline the suite is measured against: the same I/O per lead in one minimal process.

    .venv/bin/python -m bench.baseline --port 8099 --buyer-url URL [--database-url URL]

Per submission: parse the JSON body, one POST of the lead to the buyer (a reused HTTP
connection pool), one database commit (the lead and the buyer's answer in one row), a 201 with
the lead id. SQLite (a file in a temporary directory) unless `--database-url` names PostgreSQL.
Prints `baseline ready` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp
import orjson
import uvloop
from aiohttp import web
from sqlalchemy import Column, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncEngine

from leadflow.db import metadata as new_metadata
from leadflow.db import open_engine

SCHEMA = "bench_baseline"
metadata = new_metadata()
leads = Table(
    "baseline_leads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("body", Text, nullable=False),
    Column("outcome", String(32), nullable=False),
)
ENGINE_KEY = web.AppKey("engine", AsyncEngine)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
BUYER_KEY = web.AppKey("buyer", str)


def _digits(value: object) -> str:
    digits = "".join(c for c in str(value or "") if c.isdigit())
    return digits[-10:]


async def submit(request: web.Request) -> web.Response:
    try:
        fields = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"outcome": "failure", "reason": "bad JSON"}, status=400)
    if not isinstance(fields, dict):
        return web.json_response({"outcome": "failure", "reason": "not an object"}, status=400)
    lead_id = str(uuid.uuid4())
    async with request.app[SESSION_KEY].post(
        request.app[BUYER_KEY],
        # As the suite's mapping does: the phone as the buyer wants it, digits only.
        data=orjson.dumps({"id": lead_id, "phone": _digits(fields.get("phone_1")), **fields}),
        headers={"Content-Type": "application/json"},
    ) as response:
        answer = orjson.loads(await response.read())
    outcome = str(answer.get("status", "error"))
    async with request.app[ENGINE_KEY].begin() as conn:
        await conn.execute(
            leads.insert().values(id=lead_id, body=orjson.dumps(fields).decode(), outcome=outcome)
        )
    body = orjson.dumps({"outcome": "success", "lead": {"id": lead_id}})
    return web.Response(status=201, body=body, content_type="application/json")


async def serve(port: int, buyer_url: str, database_url: str) -> None:
    # The suite's engine settings (pool, SQLite WAL pragmas, a schema of its own on PostgreSQL).
    engine = await open_engine(database_url, SCHEMA, metadata)
    app = web.Application()
    app[ENGINE_KEY] = engine
    app[BUYER_KEY] = buyer_url
    app.router.add_post("/submit", submit)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        app[SESSION_KEY] = session
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("baseline ready", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--buyer-url", required=True)
    parser.add_argument("--database-url", help="postgresql+asyncpg://…; SQLite when omitted")
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'baseline.db'}"
        with contextlib.suppress(KeyboardInterrupt):
            # The same event loop as the suite's services, so the comparison is like for like.
            uvloop.run(serve(args.port, args.buyer_url, url))


if __name__ == "__main__":
    main()
