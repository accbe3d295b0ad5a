"""How long purchase pricing takes against a 50-price list with nested rule sets.

    .venv/bin/python -m bench.pricing_bench [--leads 20000]

Prices a realistic lead through the pricing domain (the work pricing_service does per
QuotePurchasePrice, without the gRPC hop): the lead context, then the last matching of 50 prices,
each with a rule set of three rules one of which nests two more. Prints per-lead microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from datetime import UTC, datetime
from time import perf_counter

import aiohttp
import yaml

from leadflow.config import parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData
from pricing_service.pricing import Pricer
from pricing_service.services import PricingServiceClient

STATES = ["CA", "TX", "NY", "FL", "WA", "NV", "AZ", "OR", "IL", "OH"]


def config_text(prices: int) -> str:
    rules = []
    for i in range(prices):
        rules.append(
            {
                "amount": f"{10 + i % 40}.{i % 100:02d}",
                "rule_set": [
                    {"lhv": "state", "op": "is included in", "rhv": STATES[i % 10 : i % 10 + 3]},
                    {"lhv": "loan_amount", "op": "is greater than", "rhv": 1000 * i},
                    {
                        "lhv": "phone_1",
                        "op": "format is valid",
                        "rule_set": {
                            "op": "or",
                            "rules": [
                                {"lhv": "credit_score", "op": "is between", "rhv": "600-850"},
                                {"lhv": "email.domain", "op": "does not include", "rhv": "spam"},
                            ],
                        },
                    },
                ],
            }
        )
    config = {
        "account": {"name": "Bench"},
        "sources": [{"id": "vendor", "name": "Vendor", "api_key": "k"}],
        "buyers": [
            {"id": "b", "name": "B", "delivery": {"type": "http", "url": "http://127.0.0.1:9/"}}
        ],
        "flows": [
            {
                "id": "loans",
                "name": "Loans",
                "fields": {"loan_amount": "number", "credit_score": "number"},
                "pricing": {"prices": [{"amount": 5}, *rules]},
                "sources": [{"source": "vendor"}],
                "stages": [{"name": "s", "steps": [{"buyer": "b"}]}],
            }
        ],
    }
    return yaml.safe_dump(config)


async def run(leads: int, prices: int) -> None:
    config = parse_config(config_text(prices), {})
    fields = parse_lead(
        {
            "first_name": "Ada",
            "email": "ada@example.com",
            "phone_1": "512-555-0142",
            "state": "TX",
            "loan_amount": "$30,000",
            "credit_score": "712",
        },
        {"loan_amount": "number", "credit_score": "number"},
    )
    lead = LeadData("L1", "loans", "vendor", fields, datetime.now(UTC))
    async with aiohttp.ClientSession() as session:
        pricer = Pricer(config, PricingServiceClient(session))
        quote = await pricer.purchase(lead)
        for _ in range(500):  # warm up caches (compiled paths, zone data)
            await pricer.purchase(lead)
        samples = []
        for _ in range(leads):
            started = perf_counter()
            await pricer.purchase(lead)
            samples.append(perf_counter() - started)
    samples.sort()
    mean = statistics.fmean(samples) * 1e6
    p50 = samples[len(samples) // 2] * 1e6
    p99 = samples[int(len(samples) * 0.99)] * 1e6
    print(
        f"pricing: prices={prices + 1} leads={leads} price={quote.price} "
        f"layer={quote.audit.layer} rule_index={quote.audit.rule_index} "
        f"mean_us={mean:.1f} p50_us={p50:.1f} p99_us={p99:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--prices", type=int, default=49, help="rule prices besides the base")
    args = parser.parse_args()
    asyncio.run(run(args.leads, args.prices))


if __name__ == "__main__":
    main()
