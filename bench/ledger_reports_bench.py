"""Ledger reports over a million events on PostgreSQL (issue 6, acceptance 5).

Generates leads, source and recipient events, delivery results and their journal postings (as
RecordLead, RecordDeliveryOutcome and approved returns write them) into a schema of its own,
bulk-loaded with COPY, then times the vendor, buyer and margin reports, straight from the store
and through the ledger's gRPC server.

    .venv/bin/python -m bench.ledger_reports_bench [--leads 1000000] [--keep]

TEST_DATABASE_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test) names the database;
the schema `bench_ledger` is dropped and rebuilt unless --keep finds it loaded already.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from leadflow import reports
from leadflow.ledger.v1 import ledger_service_pb2_grpc
from ledger_service.config import Settings
from ledger_service.journal import (
    buyer_receivable,
    chargebacks,
    cost,
    returns,
    revenue,
    vendor_payable,
)
from ledger_service.server import Deps, create_server
from ledger_service.store import LedgerStore

URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_ledger"
YEAR = datetime(2025, 1, 1, tzinfo=UTC)
SOURCES = [f"source-{n:02d}" for n in range(20)]
BUYERS = [f"buyer-{n:02d}" for n in range(50)]
FLOWS = [f"flow-{n}" for n in range(5)]
AUDIT = '{"layer":"flow_rules","rule_index":0,"amount_micros":0,"service_status":0,' + (
    '"service_latency_ms":0,"service_error":"","fallback_used":false,"note":""}'
)
CHUNK = 50_000


def generate(leads: int, seed: int = 7) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """Chunks of rows per table. Each lead: a source event (80% accepted) and one or two
    recipient events (60% sold, 30% failed, 10% error); 2% of sales are returned, half of those
    charged back to the vendor."""
    rng = random.Random(seed)
    seconds = 365 * 24 * 3600
    tables: dict[str, list[tuple[Any, ...]]] = _empty()
    now = datetime.now(UTC)
    for n in range(leads):
        lead_id = f"{n:024x}"
        at = YEAR + timedelta(seconds=rng.randrange(seconds))
        flow, source = rng.choice(FLOWS), rng.choice(SOURCES)
        accepted = rng.random() < 0.8
        price = rng.randrange(100, 5_000) * 10_000
        paid = price if accepted else 0
        offers = []
        if accepted:
            for position in range(rng.choice((1, 1, 2))):
                roll = rng.random()
                outcome = "success" if roll < 0.6 else "failure" if roll < 0.9 else "error"
                offers.append(
                    (position, rng.choice(BUYERS), outcome, rng.randrange(500, 9_000) * 10_000)
                )
        sold_total = sum(sale for _, _, outcome, sale in offers if outcome == "success")
        tables["leads"].append((lead_id, flow, source, "{}", "USD", at, now))
        tables["source_events"].append(
            (lead_id, "success" if accepted else "failure", "", price, paid, sold_total, AUDIT, 40)
        )
        if accepted:
            tables["postings"].append(
                _posting(
                    f"purchase:{lead_id}",
                    "purchase",
                    lead_id,
                    flow,
                    source,
                    "",
                    "",
                    "",
                    cost(flow),
                    vendor_payable(source),
                    paid,
                    at,
                    now,
                )
            )
        for position, buyer, outcome, sale in offers:
            event_id = f"{lead_id}-{position + 1}"
            tables["recipient_events"].append(
                (
                    event_id,
                    lead_id,
                    position,
                    0,
                    "stage",
                    "priority",
                    position,
                    buyer,
                    outcome,
                    "",
                    sale,
                    AUDIT,
                    "",
                    "[]",
                    120,
                )
            )
            tables["delivery_results"].append(
                (
                    event_id,
                    lead_id,
                    flow,
                    source,
                    buyer,
                    outcome,
                    "",
                    sale,
                    at,
                    False,
                    "",
                    "[]",
                    now,
                )
            )
            if outcome != "success":
                continue
            tables["postings"].append(
                _posting(
                    f"sale:{event_id}",
                    "sale",
                    lead_id,
                    flow,
                    source,
                    buyer,
                    event_id,
                    "",
                    buyer_receivable(buyer),
                    revenue(flow),
                    sale,
                    at,
                    now,
                )
            )
            if rng.random() < 0.02:
                feedback_id = f"fb{event_id}"
                later = at + timedelta(days=rng.randrange(1, 20))
                tables["postings"].append(
                    _posting(
                        f"return:{feedback_id}",
                        "return",
                        lead_id,
                        flow,
                        source,
                        buyer,
                        event_id,
                        feedback_id,
                        returns(flow),
                        buyer_receivable(buyer),
                        sale,
                        later,
                        now,
                    )
                )
                if rng.random() < 0.5 and paid and position == 0:
                    tables["postings"].append(
                        _posting(
                            f"chargeback:{lead_id}",
                            "chargeback",
                            lead_id,
                            flow,
                            source,
                            buyer,
                            "",
                            feedback_id,
                            vendor_payable(source),
                            chargebacks(flow),
                            paid,
                            later,
                            now,
                        )
                    )
        if (n + 1) % CHUNK == 0:
            yield tables
            tables = _empty()
    if tables["leads"]:
        yield tables


def _empty() -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: []
        for name in ("leads", "source_events", "recipient_events", "delivery_results", "postings")
    }


def _posting(*values: Any) -> tuple[Any, ...]:
    (pid, kind, lead, flow, source, buyer, event, feedback, debit, credit, amount, at, now) = values
    return (
        pid,
        kind,
        lead,
        flow,
        source,
        buyer,
        event,
        feedback,
        debit,
        credit,
        amount,
        "USD",
        at,
        now,
    )


COLUMNS = {
    "leads": [
        "id",
        "flow_id",
        "source_id",
        "fields_json",
        "currency",
        "submit_time",
        "record_time",
    ],
    "source_events": [
        "lead_id",
        "outcome",
        "reason",
        "purchase_price_micros",
        "price_paid_micros",
        "revenue_micros",
        "price_audit",
        "duration_ms",
    ],
    "recipient_events": [
        "id",
        "lead_id",
        "position",
        "stage_index",
        "stage_name",
        "strategy",
        "step_index",
        "buyer_id",
        "outcome",
        "reason",
        "sale_price_micros",
        "price_audit",
        "reference",
        "attempts",
        "duration_ms",
    ],
    "delivery_results": [
        "recipient_event_id",
        "lead_id",
        "flow_id",
        "source_id",
        "buyer_id",
        "outcome",
        "reason",
        "sale_price_micros",
        "complete_time",
        "batch",
        "batch_id",
        "attempts",
        "record_time",
    ],
    "postings": [
        "id",
        "kind",
        "lead_id",
        "flow_id",
        "source_id",
        "buyer_id",
        "recipient_event_id",
        "feedback_id",
        "debit_account",
        "credit_account",
        "amount_micros",
        "currency",
        "effective_time",
        "post_time",
    ],
}


async def load(leads: int, keep: bool) -> dict[str, int]:
    dsn = URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        if keep and await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", SCHEMA
        ):
            print(f"reusing schema {SCHEMA}")
        else:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            store = await LedgerStore.open(URL, SCHEMA)  # tables, indexes and triggers
            await store.close()
            started = time.perf_counter()
            for chunk in generate(leads):
                for table in COLUMNS:  # in foreign-key order
                    await conn.copy_records_to_table(
                        table, records=chunk[table], columns=COLUMNS[table], schema_name=SCHEMA
                    )
            print(f"loaded in {time.perf_counter() - started:.0f} s; VACUUM ANALYZE…")
            # What autovacuum does on a live database: visibility map and planner statistics.
            for table in COLUMNS:
                await conn.execute(f'VACUUM ANALYZE "{SCHEMA}"."{table}"')
        return {
            table: int(await conn.fetchval(f'SELECT count(*) FROM "{SCHEMA}"."{table}"'))
            for table in COLUMNS
        }
    finally:
        await conn.close()


async def timed(label: str, call: Callable[[], Awaitable[Any]], runs: int = 5) -> float:
    await call()  # warm: plans cached, pages in memory
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    median = statistics.median(samples)
    print(f"  {label:<52} median {median * 1000:7.1f} ms   max {max(samples) * 1000:7.1f} ms")
    return median


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse a loaded bench schema")
    args = parser.parse_args()
    counts = await load(args.leads, args.keep)
    events = counts["source_events"] + counts["recipient_events"]
    print(f"{events:,} events ({counts['leads']:,} leads), {counts['postings']:,} postings")

    store = await LedgerStore.open(URL, SCHEMA)
    running = await create_server(Settings(host="127.0.0.1", grpc_port=0), Deps(store))
    port = running.port
    year = (YEAR, YEAR.replace(year=2026))
    march = (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))
    results: dict[str, float] = {}
    try:
        print("store (SQL only):")
        results["vendors year"] = await timed(
            "vendors, whole year (every event)", lambda: store.vendor_report(*year)
        )
        await timed("vendors, one month", lambda: store.vendor_report(*march))
        await timed("buyers, whole year", lambda: store.buyer_report(*year))
        await timed("margin by flow, whole year", lambda: store.margin_report(*year, ["flow"]))
        await timed(
            "margin by source,buyer, one month",
            lambda: store.margin_report(*march, ["source", "buyer"]),
        )
        await timed(
            "margin by source,buyer, whole year",
            lambda: store.margin_report(*year, ["source", "buyer"]),
            runs=3,
        )
        print("gRPC GetVendorReport (server on 127.0.0.1, as the gateway calls it):")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
            query = reports.parse_query("vendors", "2025-01-01", "2026-01-01", "UTC", None, "UTC")
            request = reports.ledger_request(query)
            results["vendors year rpc"] = await timed(
                "vendors, whole year, over gRPC", lambda: stub.GetVendorReport(request, timeout=30)
            )
    finally:
        await running.stop(1)
        await store.close()
    took = results["vendors year rpc"]
    verdict = "PASS" if took < 1.0 else "FAIL"
    print(f"{verdict}: vendors report over {events:,} events in {took * 1000:.0f} ms (goal < 1 s)")


if __name__ == "__main__":
    asyncio.run(main())
