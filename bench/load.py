"""A bounded HTTP load generator for lead submissions: open loop at a fixed rate, or max throughput.

    .venv/bin/python -m bench.load URL --key KEY [--rate 100 | --concurrency 32] [--count 2000]

Only 127.0.0.1 is accepted as a target; every run stops by itself after `--count` leads or
`--seconds`, whichever comes first. Open loop: lead i is due at start + i/rate whatever the
answers before it do, and its latency counts from that due time (no coordinated omission).
Max throughput: `--concurrency` clients each send their next lead as soon as the last answer is in.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import secrets
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
# Mostly states the bench buyer buys (CA pays more), some it does not: the waterfall goes on.
STATES = ["CA", "CA", "TX", "NV", "AZ", "CA", "TX", "FL", "NY", "AZ"]
AREA_CODES = ["512", "415", "702", "602", "213", "214", "305", "212"]


def realistic_lead(rng: random.Random, i: int, tag: str = "") -> dict[str, Any]:
    """A vendor's submission as the demo flow expects it, varied per lead. `tag` makes the
    emails of one run differ from every other run's: a flow with a duplicate check on email
    would reject the second run's leads as duplicates of the first's."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{first.lower()}.{last.lower()}{i}{tag}@example.com",
        "phone_1": f"({rng.choice(AREA_CODES)}) {rng.randrange(200, 999)}-"
        f"{rng.randrange(10000):04d}",
        "state": rng.choice(STATES),
        "postal_code": f"{rng.randrange(10000, 99999)}",
        "vehicle_year": rng.randrange(2005, 2026),
        "address_1": f"{rng.randrange(1, 9999)} Main St",
        "city": "Springfield",
    }


@dataclass
class LoadResult:
    """What one run measured: per-lead latency (seconds) of every answered request."""

    mode: str
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def quantile_ms(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return (
            statistics.quantiles(self.latencies, n=1000, method="inclusive")[round(q * 1000) - 1]
            * 1000
        )

    def summary(self) -> str:
        return (
            f"{self.mode}: sent={self.sent} ok={self.ok} errors={self.errors} "
            f"statuses={dict(self.statuses)} seconds={self.seconds:.2f} "
            f"ok_per_s={self.per_s:.1f} p50_ms={self.quantile_ms(0.5):.1f} "
            f"p99_ms={self.quantile_ms(0.99):.1f}"
        )


def _check_loopback(url: str) -> None:
    if urlsplit(url).hostname != "127.0.0.1":
        raise SystemExit(f"bench traffic goes to 127.0.0.1 only, not {url}")


def _headers(key: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"API:{key}".encode()).decode(),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, since: float, result: LoadResult
) -> None:
    try:
        async with session.post(url, data=body) as response:
            await response.read()
            result.statuses[response.status] += 1
            if 200 <= response.status < 300:
                result.latencies.append(time.perf_counter() - since)
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1


async def run_load(
    url: str,
    key: str,
    *,
    count: int,
    seconds: float,
    rate: float | None = None,
    concurrency: int = 32,
    seed: int = 1,
) -> LoadResult:
    """Send up to `count` leads within `seconds` (then wait at most 10 s for the stragglers)."""
    _check_loopback(url)
    rng = random.Random(seed)
    tag = "." + secrets.token_hex(4)  # unique emails across runs on one database
    bodies = [orjson.dumps(realistic_lead(rng, i, tag)) for i in range(count)]
    result = LoadResult(f"open loop {rate:g}/s" if rate else f"max throughput c={concurrency}")
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0 if rate else concurrency, force_close=False)
    async with aiohttp.ClientSession(
        headers=_headers(key), timeout=timeout, connector=connector
    ) as session:
        start = time.perf_counter()
        deadline = start + seconds
        if rate:
            tasks = []
            for i, body in enumerate(bodies):
                due = start + i / rate
                if due >= deadline:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_one(session, url, body, due, result)))
                result.sent += 1
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=10)
                for task in pending:
                    task.cancel()
                result.errors += len(pending)
        else:
            queue = iter(bodies)

            async def client() -> None:
                for body in queue:
                    if time.perf_counter() >= deadline:
                        return
                    result.sent += 1
                    await _one(session, url, body, time.perf_counter(), result)

            await asyncio.wait_for(
                asyncio.gather(*(client() for _ in range(concurrency))), seconds + 10
            )
        result.seconds = time.perf_counter() - start
    return result


def drive(url: str, key: str, **options: Any) -> LoadResult:
    """run_load on uvloop, as the services run: the generator shares the machine's cores with
    what it measures, so it should take as little of them as it can."""
    return uvloop.run(run_load(url, key, **options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="a submit URL on 127.0.0.1")
    parser.add_argument("--key", required=True, help="the source's API key")
    parser.add_argument("--rate", type=float, help="open loop at this many leads/s")
    parser.add_argument("--concurrency", type=int, default=32, help="max-throughput clients")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    result = drive(
        args.url,
        args.key,
        count=args.count,
        seconds=args.seconds,
        rate=args.rate,
        concurrency=args.concurrency,
    )
    print(result.summary())


if __name__ == "__main__":
    main()
