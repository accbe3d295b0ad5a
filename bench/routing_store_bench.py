"""routing's storage per lead of the production flow (bench/production.yaml), straight from the
store: admission (duplicate key, the first stage's cap usage, the first step's buyer and step
caps reserved) and the lead's settlement (the key committed, the sale counted, the holds
committed into the counters), on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.routing_store_bench [--leads 2000] [--concurrency 1]

Prints wall-clock and this process's CPU (worker threads included) per lead. With
--concurrency N, N leads are in flight at once (all on the same buyer's counters, as in the
production flow). Every run starts on an empty store: an SQLite file in a temporary directory,
and on PostgreSQL the schema `bench_routing_store`, dropped again afterwards.
TEST_DATABASE_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/test) names the database.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from bench.stores import empty_store
from routing_service.caps import CapRule, Claim
from routing_service.store import DuplicateClaim, RoutingStore, SaleRecord, step_scope

SCHEMA = "bench_routing_store"
WARMUP = 50
HOLD = timedelta(minutes=5)
ZONE = "America/Chicago"


def rule(key: str, scope: str, max_leads: int | None, max_micros: int | None) -> CapRule:
    return CapRule(key, scope, "day", 1, ZONE, max_leads, max_micros, None, "Cap reached")


ACME = rule("buyer:acme:0", "buyer", 10_000_000, None)
ACME_STEP = rule("step:auto-insurance:0:0:0", "step", None, 1_000_000_000_000)
BUDGET = rule("buyer:budget:0", "buyer", 10_000_000, None)
PRICE = 28_000_000


async def one_lead(store: RoutingStore, n: int, now: datetime) -> None:
    lead_id = f"lead-{n}"
    duplicate = DuplicateClaim("auto-insurance", f"digest-{n}", "Duplicate lead")
    acme = [Claim(ACME, ACME.window(now), PRICE), Claim(ACME_STEP, ACME_STEP.window(now), PRICE)]
    probe = [*acme, Claim(BUDGET, BUDGET.window(now), 12_000_000)]

    def first_offer(
        full: set[tuple[str, datetime]],
    ) -> tuple[str, Sequence[Claim]] | None:
        return step_scope(0, 0), acme

    refusal, _, held = await store.admit_and_probe(lead_id, duplicate, [], HOLD, probe, first_offer)
    assert refusal is None and held is not None and held.refusal is None
    sale = SaleRecord("auto-insurance", 0, 0, "acme", now.date().isoformat())
    committed, _ = await store.settle_lead(
        lead_id, True, duplicate, now + timedelta(days=30), [sale], now, (), acme
    )
    assert committed == 2


async def run(store: RoutingStore, first: int, count: int, concurrency: int) -> None:
    now = datetime.now(UTC)
    numbers = iter(range(first, first + count))

    async def worker() -> None:
        for n in numbers:
            await one_lead(store, n, now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def timed(backend: str, leads: int, concurrency: int) -> None:
    async with empty_store(RoutingStore.open, backend, SCHEMA) as store:
        await run(store, 0, WARMUP, concurrency)  # connections opened, statements prepared
        wall, cpu = time.perf_counter(), time.process_time()
        await run(store, WARMUP, leads, concurrency)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        now = datetime.now(UTC)
        counter = await store.counter(ACME.key, ACME.window(now))
        assert counter is not None and (counter[0], counter[2]) == (WARMUP + leads, 0), counter
    print(
        f"  {backend:<10} concurrency {concurrency:<3} {wall / leads * 1e6:8.0f} µs/lead wall"
        f" {cpu / leads * 1e6:8.0f} µs/lead CPU {leads / wall:8.0f} leads/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"{args.leads} leads: admission with the first step reserved, then settlement")
    for backend in args.databases.split(","):
        await timed(backend, args.leads, args.concurrency)


if __name__ == "__main__":
    asyncio.run(main())
