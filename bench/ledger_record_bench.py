"""Recording leads in the ledger: one record() call per lead against record_many in batches (what
RecordLeads does), on SQLite and on PostgreSQL, straight from the store.

Each lead is what the gateway records for a sold lead: its fields, a source event and two
recipient events (one sale, one refusal) of two delivery attempts each. Every run starts on an
empty ledger of its own: an SQLite file in a temporary directory, and on PostgreSQL the schema
`bench_ledger_record`, dropped again afterwards.

    .venv/bin/python -m bench.ledger_record_bench [--leads 2000] [--batch 50]

TEST_DATABASE_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test) names the database.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bench.stores import empty_store
from leadflow.wire import DeliveryAttempt, PriceAudit
from ledger_service.ledger import Lead, LeadRecord, RecipientEvent, SourceEvent, check_record
from ledger_service.store import LedgerStore, Verdict

SCHEMA = "bench_ledger_record"
START = datetime(2026, 3, 1, tzinfo=UTC)
WARMUP = 50
FIELDS_JSON = (
    '{"first_name":{"type":"text","raw":"Ada","valid":true},'
    '"last_name":{"type":"text","raw":"Lovelace","valid":true},'
    '"email":{"type":"email","raw":"ada@example.com","normal":"ada@example.com","valid":true},'
    '"phone":{"type":"phone","raw":"(555) 010-4477","normal":"+15550104477","valid":true},'
    '"zip":{"type":"zip","raw":"60614","normal":"60614","valid":true},'
    '"state":{"type":"state","raw":"IL","valid":true},'
    '"price":{"type":"money","raw":"12.50","normal":12.50,"valid":true},'
    '"consent":{"type":"bool","raw":"yes","normal":true,"valid":true}}'
)
REQUEST = (
    "POST https://buyer.example.com/leads\n\nfirst_name=Ada&last_name=Lovelace&"
    "email=ada%40example.com&phone=%2B15550104477&zip=60614&state=IL&api_key=****"
)


def attempts(response: str) -> tuple[DeliveryAttempt, ...]:
    return (
        DeliveryAttempt(1, REQUEST, "", 0, 5000, "timed out after 5000 ms"),
        DeliveryAttempt(2, REQUEST, response, 200, 180),
    )


def recipient(event_id: str, buyer_id: str, outcome: str, price: str, step: int) -> RecipientEvent:
    sold = outcome == "success"
    return RecipientEvent(
        id=event_id,
        stage_index=0,
        stage_name="exclusive",
        strategy="priority",
        step_index=step,
        buyer_id=buyer_id,
        outcome=outcome,
        reason="" if sold else "Duplicate lead",
        sale_price=Decimal(price),
        price_audit=PriceAudit(layer="buyer_rules", rule_index=2, amount=Decimal(price)),
        reference=f"ref-{event_id}" if sold else "",
        attempts=attempts(
            'HTTP 200\n\n{"accepted": true, "id": "ref-1"}' if sold else "HTTP 200\n\nduplicate"
        ),
        duration_ms=5190,
    )


def record(n: int) -> LeadRecord:
    lead_id = f"01JBENCH{n:018d}"
    return LeadRecord(
        lead=Lead(
            id=lead_id,
            flow_id=f"flow-{n % 5}",
            source_id=f"source-{n % 20:02d}",
            fields_json=FIELDS_JSON,
            submit_time=START + timedelta(seconds=n),
        ),
        source_event=SourceEvent(
            outcome="success",
            reason="",
            purchase_price=Decimal("12.50"),
            price_paid=Decimal("12.50"),
            price_audit=PriceAudit(layer="source_service", amount=Decimal("12.50")),
            revenue=Decimal("31.00"),
            duration_ms=5400,
        ),
        recipient_events=(
            recipient(f"{lead_id}-1", f"buyer-{n % 50:02d}", "failure", "35.00", 0),
            recipient(f"{lead_id}-2", f"buyer-{(n + 1) % 50:02d}", "success", "31.00", 1),
        ),
    )


async def one_per_call(store: LedgerStore, records: Sequence[LeadRecord]) -> None:
    for item in records:
        assert await store.record(item)


def batches_of(size: int) -> Callable[[LedgerStore, Sequence[LeadRecord]], Awaitable[None]]:
    async def run(store: LedgerStore, records: Sequence[LeadRecord]) -> None:
        for start in range(0, len(records), size):
            results = await store.record_many(records[start : start + size])
            assert all(result.verdict is Verdict.CREATED for result in results)

    return run


async def timed(
    backend: str,
    label: str,
    write: Callable[[LedgerStore, Sequence[LeadRecord]], Awaitable[None]],
    leads: int,
) -> tuple[float, float]:
    """Microseconds per lead, wall clock and this process's CPU (the ledger's side)."""
    records = [record(n) for n in range(WARMUP + leads)]
    async with empty_store(LedgerStore.open, backend, SCHEMA) as store:
        await write(store, records[:WARMUP])  # connections opened, statements compiled
        wall, cpu = time.perf_counter(), time.process_time()
        await write(store, records[WARMUP:])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        postings = len(await store.postings())
        assert sum((await store.trial_balance()).values()) == 0
    assert postings == 2 * (WARMUP + leads)
    wall_us, cpu_us = wall / leads * 1e6, cpu / leads * 1e6
    print(f"  {backend:<10} {label:<28} {wall_us:8.0f} µs/lead wall {cpu_us:8.0f} µs/lead CPU")
    return wall_us, cpu_us


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    check_record(record(0))
    print(f"{args.leads} leads, 2 recipient events of 2 attempts each, 2 postings per lead:")
    for backend in ("sqlite", "postgresql"):
        single = await timed(backend, "record(), one per call", one_per_call, args.leads)
        batched = await timed(
            backend, f"record_many, batches of {args.batch}", batches_of(args.batch), args.leads
        )
        print(
            f"  {backend:<10} batches: {single[0] / batched[0]:.1f}x less wall time, "
            f"{single[1] / batched[1]:.1f}x less CPU"
        )


if __name__ == "__main__":
    asyncio.run(main())
