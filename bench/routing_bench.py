"""How long routing takes to choose buyers for a lead among 1,000 configured buyers.

    .venv/bin/python -m bench.routing_bench [--leads 5000] [--buyers 1000]

One stage of 1,000 steps, each buyer with a territory (3 of 10 states), hours of operation in
one of four zones and a criteria rule on a custom number field; leads vary by state and credit
score. Measured per lead, in this process: the lead's facts (rule context, place), the screen of
every step (territory, hours, criteria, with a skip reason for each ineligible one) and the
strategy's order, for `priority` and for `weighted` (with per-buyer sales counts in hand), and
Router.rank itself (what DistributeLead does per stage, with the lead's facts and sale quotes;
with no caps and no priority ties it reads nothing from the database), then the encoding of the
DistributeLead message that carries the stage's skips (a recipient event for every ineligible
step). Prints CPU time per lead and wall-clock p50 and p99 microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from time import perf_counter, process_time

import orjson

from leadflow.common.v1 import lead_pb2
from leadflow.config import parse_config
from leadflow.fields import parse_lead
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.routing.v1 import routing_service_pb2
from leadflow.wire import LeadData
from routing_service.peers import Addresses, Peers
from routing_service.quotes import SaleQuotes
from routing_service.router import Ranking, Router
from routing_service.routing import RoutingPlan, screen
from routing_service.store import RoutingStore
from routing_service.strategies import by_deficit, by_priority

STATES = ["CA", "TX", "NY", "FL", "WA", "NV", "AZ", "OR", "IL", "OH"]
ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]
HOURS = [
    {day: ["08:00-20:00"] for day in ("monday", "tuesday", "wednesday", "thursday", "friday")},
    {day: ["00:00-24:00"] for day in ("monday", "tuesday", "wednesday", "thursday", "friday")},
    {
        **{day: ["09:00-17:00"] for day in ("monday", "tuesday", "wednesday", "thursday")},
        "friday": ["09:00-12:00"],
    },
    {day: ["00:00-24:00"] for day in ("saturday", "sunday", "monday")},
]


def config_text(buyers: int, strategy: str, tiered: bool, seed: int = 7) -> str:
    """`tiered`: buyers' minimum credit scores come in 50-point tiers (as buyer filters
    usually do); otherwise every buyer has its own threshold (the worst case)."""
    rng = random.Random(seed)
    buyer_list = []
    for i in range(buyers):
        buyer_list.append(
            {
                "id": f"b{i}",
                "name": f"Buyer {i}",
                "time_zone": ZONES[i % len(ZONES)],
                "territory": {"states": rng.sample(STATES, 3)},
                "hours": HOURS[i % len(HOURS)],
                "criteria": [
                    {
                        "lhv": "credit_score",
                        "op": "is greater than",
                        "rhv": 500 + (rng.randrange(6) * 50 if tiered else rng.randrange(300)),
                    }
                ],
                "delivery": {"type": "http", "url": "http://127.0.0.1:9/"},
            }
        )
    config = {
        "account": {"name": "Bench", "time_zone": "America/Chicago"},
        "sources": [{"id": "vendor", "name": "Vendor", "api_key": "k"}],
        "buyers": buyer_list,
        "flows": [
            {
                "id": "loans",
                "name": "Loans",
                "fields": {"credit_score": "number"},
                "sources": [{"source": "vendor"}],
                "stages": [
                    {
                        "name": "main",
                        "strategy": strategy,
                        "sell": 3,
                        "steps": [
                            {"buyer": f"b{i}", "priority": i + 1, "weight": 1 + i % 4}
                            for i in range(buyers)
                        ],
                    }
                ],
            }
        ],
    }
    return orjson.dumps(config).decode()


def make_leads(count: int, seed: int = 11) -> list[LeadData]:
    rng = random.Random(seed)
    # A Wednesday afternoon in Chicago: most buyers are open.
    start = datetime(2026, 3, 4, 20, 0, tzinfo=UTC)
    return [
        LeadData(
            f"L{i}",
            "loans",
            "vendor",
            parse_lead(
                {
                    "state": rng.choice(STATES),
                    "postal_code": "90210",
                    "credit_score": str(rng.randrange(450, 850)),
                    "email": "ada@example.com",
                },
                {"credit_score": "number"},
            ),
            start + timedelta(seconds=i),
        )
        for i in range(count)
    ]


def measure(label: str, leads: list[LeadData], work: Callable[[LeadData], int]) -> None:
    for lead in leads[:200]:  # warm up (compiled paths, zone data)
        work(lead)
    samples = []
    eligible = 0
    cpu = process_time()
    for lead in leads:
        started = perf_counter()
        eligible += work(lead)
        samples.append(perf_counter() - started)
    report(label, samples, eligible / len(leads), process_time() - cpu)


def report(label: str, samples: list[float], eligible: float, cpu: float) -> None:
    """Wall-clock percentiles, and the CPU time per lead (what other load cannot inflate)."""
    samples.sort()
    p50 = samples[len(samples) // 2] * 1e6
    p99 = samples[int(len(samples) * 0.99)] * 1e6
    print(
        f"routing {label}: leads={len(samples)} eligible_per_lead={eligible:.0f} "
        f"cpu_mean_us={cpu / len(samples) * 1e6:.1f} wall_p50_us={p50:.1f} wall_p99_us={p99:.1f}"
    )


def skips_message(lead_id: str, ranking: Ranking) -> routing_service_pb2.DistributeLeadResponse:
    """The stage's skipped steps as routing_service.distribution reports them."""
    stage = ranking.stage
    response = routing_service_pb2.DistributeLeadResponse()
    add = response.recipients.append
    for n, (step, reason, attempts) in enumerate(ranking.skipped, start=1):
        event = ledger_service_pb2.RecipientEvent(
            id=f"{lead_id}-{n}",
            stage_index=stage.index,
            stage_name=stage.name,
            strategy=stage.strategy,
            step_index=step.index,
            buyer_id=step.buyer_id,
            outcome=lead_pb2.OUTCOME_SKIP,
            reason=reason,
        )
        if attempts:
            event.attempts.extend(attempts)
        add(event)
    return response


async def run(count: int, buyers: int) -> None:
    for tiered in (False, True):
        await run_one(count, buyers, tiered)


async def run_one(count: int, buyers: int, tiered: bool) -> None:
    leads = make_leads(count)
    plan = RoutingPlan(parse_config(config_text(buyers, "priority", tiered), {}))
    label = f"buyers={buyers} criteria={'tiered' if tiered else 'distinct'}"
    stage = plan.stage("loans", 0)

    def priority(lead: LeadData) -> int:
        result = screen(stage, plan.facts(lead, Decimal(10)), ())
        return len(by_priority(result.eligible))

    measure(f"screen+priority {label}", leads, priority)

    sales = {f"b{i}": i % 17 for i in range(buyers)}
    total = sum(sales.values())

    def weighted(lead: LeadData) -> int:
        result = screen(stage, plan.facts(lead, Decimal(10)), ())
        return len(by_deficit(result.eligible, stage.shares, sales, total))

    measure(f"screen+weighted {label}", leads, weighted)

    with TemporaryDirectory() as tmp:
        store = await RoutingStore.open(f"sqlite+aiosqlite:///{Path(tmp) / 'r.db'}", "routing")
        peers = Peers(Addresses())
        router = Router(plan, store, peers)
        price = Decimal(10)
        protos = {lead.id: lead.to_proto() for lead in leads}  # as DistributeLead receives it

        async def rank(lead: LeadData) -> Ranking:
            facts = plan.facts(lead, price)
            quotes = SaleQuotes({}, protos[lead.id], price, peers)
            return await router.rank(stage, facts, (), price, quotes)

        try:
            for lead in leads[:200]:
                await rank(lead)
            samples = []
            eligible = 0
            cpu = process_time()
            for lead in leads:
                started = perf_counter()
                ranking = await rank(lead)
                samples.append(perf_counter() - started)
                eligible += len(ranking.offers)
            cpu = process_time() - cpu
            report(f"Router.rank priority {label}", samples, eligible / len(leads), cpu)
            # What DistributeLead adds on top: a recipient event per ineligible step, streamed.
            ranking = await rank(leads[0])
            samples = []
            cpu = process_time()
            for _ in leads:
                started = perf_counter()
                skips_message(leads[0].id, ranking).SerializeToString()
                samples.append(perf_counter() - started)
            cpu = process_time() - cpu
            label = f"{label} skipped={len(ranking.skipped)}"
            report(
                f"DistributeLead skip events encoding {label}", samples, len(ranking.offers), cpu
            )
        finally:
            await peers.close()
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--buyers", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(run(args.leads, args.buyers))


if __name__ == "__main__":
    main()
