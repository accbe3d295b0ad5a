"""Routing end to end (issue 4): the suite as processes (`leadflow up`, embedded SQLite) selling
to real buyer HTTP servers: waterfalls, shared stages, round robin, weights, auctions, hours,
territory, duplicates and the inbound ping."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from tests.e2e.harness import BuyerServer, Suite, start_suite

pytestmark = pytest.mark.timeout(180)

SOURCE_KEY = "routing-source-key"
ADMIN_KEY = "routing-admin-key"
POST = {
    "outcome_search_term": "accepted",
    "outcome_search_path": "status",
    "reason_path": "message",
}


def _buyer(buyer_id: str, url: str, **extra: Any) -> dict[str, Any]:
    mapping = {
        "buyer": "{{buyer.id}}",
        "price": "{{sale_price}}",
        "bid": "{{bid.id}}",
        "comments": "{{lead.comments}}",
        "state": "{{lead.state}}",
    }
    return {
        "id": buyer_id,
        "name": buyer_id.title(),
        "delivery": {"type": "http", "url": url, "mapping": mapping, "response": POST},
        **extra,
    }


def _ping(url: str, timeout_ms: int) -> dict[str, Any]:
    return {
        "type": "http",
        "url": url,
        "timeout_ms": timeout_ms,
        "response": {"price_path": "bid", "reference_path": "bid_id"},
    }


def _flow(flow_id: str, stages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": flow_id.title(),
        "sources": [{"source": "vendor"}],
        "stages": stages,
        **extra,
    }


def config_text(url: str, slow_url: str) -> str:
    buyers = [
        _buyer("rejecter", f"{url}/reject"),
        _buyer("taker", f"{url}/take"),
        *(_buyer(f"s{i}", f"{url}/shared/{i}") for i in (1, 2, 3)),
        _buyer("rr-a", f"{url}/rr/a"),
        _buyer("rr-b", f"{url}/rr/b"),
        _buyer("w-a", f"{url}/w/a"),
        _buyer("w-b", f"{url}/w/b"),
        *(
            _buyer(f"bid{n}", f"{url}/post/{n}", ping=_ping(f"{url}/ping/{n}", 1000))
            for n in (5, 9, 7)
        ),
        _buyer("slow", f"{slow_url}/post", ping=_ping(f"{slow_url}/ping", 5000)),
        _buyer("closed", f"{url}/take", hours={"time_zone": "UTC"}),
        _buyer("ca-only", f"{url}/take", territory={"states": ["CA"]}),
        _buyer("perf-a", f"{url}/reject", pricing={"prices": [{"amount": 20}]}),
        _buyer("perf-b", f"{url}/take", pricing={"prices": [{"amount": 10}]}),
    ]
    flows = [
        _flow(
            "waterfall",
            [
                {
                    "name": "first",
                    "exclusive": True,
                    "steps": [{"buyer": "rejecter"}, {"buyer": "taker"}],
                },
                {"name": "second", "steps": [{"buyer": "s1"}]},
            ],
        ),
        _flow(
            "shared",
            [{"name": "shared", "sell": 2, "steps": [{"buyer": f"s{i}"} for i in (1, 2, 3)]}],
        ),
        _flow(
            "rr",
            [
                {
                    "name": "rr",
                    "strategy": "round_robin",
                    "steps": [{"buyer": "rr-a"}, {"buyer": "rr-b"}],
                }
            ],
        ),
        _flow(
            "weighted",
            [
                {
                    "name": "weighted",
                    "strategy": "weighted",
                    "steps": [{"buyer": "w-a", "weight": 3}, {"buyer": "w-b", "weight": 1}],
                }
            ],
        ),
        _flow(
            "auction",
            [
                {
                    "name": "auction",
                    "strategy": "auction",
                    "deadline_ms": 800,
                    "exclusive": True,
                    "steps": [{"buyer": b} for b in ("bid5", "bid9", "bid7", "slow")],
                }
            ],
        ),
        _flow(
            "eligibility",
            [{"name": "main", "steps": [{"buyer": b} for b in ("closed", "ca-only", "taker")]}],
        ),
        _flow(
            "closed", [{"name": "main", "steps": [{"buyer": "taker"}]}], hours={"time_zone": "UTC"}
        ),
        _flow(
            "dupes",
            [{"name": "main", "steps": [{"buyer": "taker"}]}],
            duplicates={"fields": ["email", "phone_1"], "within_days": 30},
        ),
        _flow(
            "perf",
            [
                {
                    "name": "perf",
                    "strategy": "performance",
                    "steps": [{"buyer": "perf-a"}, {"buyer": "perf-b"}],
                }
            ],
        ),
        _flow(
            "pinged",
            [{"name": "main", "steps": [{"buyer": "taker"}]}],
            pricing={
                "prices": [
                    {"amount": 7},
                    {
                        "amount": 12,
                        "rule_set": [{"lhv": "state", "op": "is equal to", "rhv": "CA"}],
                    },
                    {"amount": 0, "rule_set": [{"lhv": "state", "op": "is equal to", "rhv": "NY"}]},
                ]
            },
        ),
    ]
    config = {
        "account": {
            "name": "Routing E2E",
            "time_zone": "America/Chicago",
            "admin_api_key": ADMIN_KEY,
            "allow_private_network_delivery": True,
        },
        "sources": [{"id": "vendor", "name": "Vendor", "api_key": SOURCE_KEY}],
        "buyers": buyers,
        "flows": flows,
    }
    return orjson.dumps(config).decode()  # JSON is YAML


class Log:
    """Every request the buyers received, by path, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, dict[str, Any]]] = []

    def add(self, path: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((path, data))

    def mark(self) -> int:
        with self.lock:
            return len(self.items)

    def since(self, mark: int) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return list(self.items[mark:])


def respond(log: Log) -> Any:
    def answer(path: str, data: dict[str, Any]) -> dict[str, Any]:
        log.add(path, data)
        if path.startswith("/ping/"):
            number = path.rsplit("/", 1)[1]
            return {"bid": number, "bid_id": f"B{number}"}
        if path == "/reject" or (path == "/post/9" and data.get("comments") == "reject"):
            return {"status": "rejected", "message": "Not today"}
        return {"status": "accepted"}

    return answer


@pytest.fixture(scope="module")
def log() -> Log:
    return Log()


@pytest.fixture(scope="module")
def suite(log: Log, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    buyers = BuyerServer(respond(log))
    buyers.start()

    def sleepy(path: str, data: dict[str, Any]) -> dict[str, Any]:
        log.add("/slow" + path, data)
        if path == "/ping":
            time.sleep(3)  # far past the auction's 800 ms deadline
        return {"bid": "100", "status": "accepted"}

    slow = BuyerServer(sleepy)
    slow.start()
    root = tmp_path_factory.mktemp("routing")
    config = root / "leadflow.yaml"
    config.write_text(
        config_text(f"http://127.0.0.1:{buyers.port}", f"http://127.0.0.1:{slow.port}")
    )
    with pytest.MonkeyPatch.context() as patch:
        # Performance ranking reads fresh ledger statistics on every lead (default: a minute).
        patch.setenv("LEADFLOW_ROUTING_STATS_SECONDS", "0")
        running = start_suite(config, root / "data")
    yield running
    try:
        assert running.stop() == 0, "".join(running.output)
    finally:
        buyers.stop()
        slow.stop()


def submit(suite: Suite, flow: str, lead: dict[str, Any], verb: str = "submit") -> dict[str, Any]:
    status, _, body = suite.request(
        "POST",
        f"/flows/{flow}/sources/vendor/{verb}",
        orjson.dumps(lead),
        {"Content-Type": "application/json"},
        SOURCE_KEY,
    )
    assert status == (201 if verb == "submit" else 200), body
    result: dict[str, Any] = orjson.loads(body)
    return result


def recipients(suite: Suite, lead_id: str) -> list[dict[str, Any]]:
    status, _, body = suite.request("GET", f"/leads/{lead_id}", key=ADMIN_KEY)
    assert status == 200, body
    events: list[dict[str, Any]] = orjson.loads(body)["recipient_events"]
    return events


def outcomes(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(e["buyer_id"], e["outcome"], e["reason"]) for e in events]


LEAD = {"first_name": "Ada", "email": "ada@example.com", "phone_1": "5125550142", "state": "TX"}


def test_exclusive_waterfall_cascades_past_a_rejection_to_one_sale(suite: Suite) -> None:
    body = submit(suite, "waterfall", LEAD)
    assert body["outcome"] == "success"
    assert outcomes(recipients(suite, body["lead"]["id"])) == [
        ("rejecter", "failure", "Not today"),
        ("taker", "success", None),
    ]


def test_shared_stage_sells_to_exactly_sell_of_more_eligible_buyers(suite: Suite) -> None:
    body = submit(suite, "shared", LEAD)
    events = recipients(suite, body["lead"]["id"])
    assert [(e["buyer_id"], e["outcome"]) for e in events] == [("s1", "success"), ("s2", "success")]


def test_round_robin_alternates_strictly_over_six_leads(suite: Suite, log: Log) -> None:
    mark = log.mark()
    for _ in range(6):
        assert submit(suite, "rr", LEAD)["outcome"] == "success"
    paths = [path for path, _ in log.since(mark)]
    assert paths in (["/rr/a", "/rr/b"] * 3, ["/rr/b", "/rr/a"] * 3)


def test_weighted_three_to_one_over_400_leads_lands_within_two_percent(
    suite: Suite, log: Log
) -> None:
    mark = log.mark()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: submit(suite, "weighted", LEAD), range(400)))
    assert all(r["outcome"] == "success" for r in results)
    counts = Counter(path for path, _ in log.since(mark))
    assert counts["/w/a"] + counts["/w/b"] == 400
    assert abs(counts["/w/a"] / 400 - 0.75) <= 0.02, counts


def test_auction_posts_to_the_best_bid_at_the_bid_and_closes_by_its_deadline(
    suite: Suite, log: Log
) -> None:
    mark = log.mark()
    started = time.monotonic()
    body = submit(suite, "auction", LEAD)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"the auction took {elapsed:.2f}s; the slow bidder sleeps 3s"
    events = recipients(suite, body["lead"]["id"])
    assert [(e["buyer_id"], e["outcome"], e["reason"]) for e in events] == [
        ("slow", "skip", "No bid within the auction deadline"),
        ("bid9", "success", None),
    ]
    assert (events[1]["sale_price"], events[1]["pricing"]["layer"]) == (9, "bid")
    posts = [(path, data) for path, data in log.since(mark) if path.startswith("/post/")]
    assert posts == [
        ("/post/9", {"buyer": "bid9", "price": "9.00", "bid": "B9", "comments": "", "state": "TX"})
    ]
    pings = [data for path, data in log.since(mark) if "ping" in path]
    assert len(pings) == 4
    for ping in pings:
        assert not {"first_name", "email", "phone_1"} & set(ping), ping
        assert ping == {"state": "TX"}


def test_a_rejected_auction_post_cascades_to_the_next_bid(suite: Suite, log: Log) -> None:
    mark = log.mark()
    body = submit(suite, "auction", {**LEAD, "comments": "reject"})
    events = recipients(suite, body["lead"]["id"])
    assert [(e["buyer_id"], e["outcome"], e["sale_price"]) for e in events[1:]] == [
        ("bid9", "failure", 9),
        ("bid7", "success", 7),
    ]
    posts = [path for path, _ in log.since(mark) if path.startswith("/post/")]
    assert posts == ["/post/9", "/post/7"]


def test_closed_and_out_of_territory_buyers_are_skipped_with_their_reasons(suite: Suite) -> None:
    body = submit(suite, "eligibility", LEAD)
    # Steps a states-only territory rules out are skipped first, in bulk.
    assert outcomes(recipients(suite, body["lead"]["id"])) == [
        ("ca-only", "skip", "Outside territory"),
        ("closed", "skip", "Outside hours of operation"),
        ("taker", "success", None),
    ]


def test_a_closed_flow_fails_the_lead_with_the_hours_reason(suite: Suite, log: Log) -> None:
    mark = log.mark()
    body = submit(suite, "closed", LEAD)
    assert (body["outcome"], body["reason"], body["price"]) == (
        "failure",
        "Outside hours of operation",
        0,
    )
    assert log.since(mark) == []


def test_twenty_identical_leads_at_once_are_accepted_once(suite: Suite) -> None:
    lead = {**LEAD, "email": "twin@example.com"}
    barrier = threading.Barrier(20)

    def one(_: int) -> dict[str, Any]:
        barrier.wait()
        return submit(suite, "dupes", lead)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert Counter(r["outcome"] for r in results) == {"success": 1, "failure": 19}
    assert {r.get("reason") for r in results if r["outcome"] == "failure"} == {"Duplicate lead"}


def test_inbound_ping_quotes_a_price_that_a_later_submit_is_paid_once(suite: Suite) -> None:
    quote = submit(suite, "pinged", {"state": "CA"}, verb="ping")
    assert (quote["outcome"], quote["price"]) == ("success", 12)
    assert quote["ping_id"] and quote["expires_at"].endswith("Z")
    # Submitted as Texas (priced 7 today), but the ping's 12 is honoured: once.
    first = submit(suite, "pinged", {**LEAD, "ping_id": quote["ping_id"]})
    again = submit(suite, "pinged", {**LEAD, "ping_id": quote["ping_id"]})
    assert (first["outcome"], first["price"]) == ("success", 12)
    assert (again["outcome"], again["price"]) == ("success", 7)
    no_bid = submit(suite, "pinged", {"state": "NY"}, verb="ping")
    assert (no_bid["outcome"], no_bid["reason"], no_bid["price"]) == ("failure", "no bid", 0)


def test_a_ping_whose_lead_ended_in_error_is_honoured_when_the_lead_comes_again(
    suite: Suite,
) -> None:
    quote = submit(suite, "pinged", {"state": "CA"}, verb="ping")
    routing = suite.child_pid("routing_service")
    os.kill(routing, signal.SIGSTOP)  # admission times out: the lead ends in error, unpaid
    try:
        failed = submit(suite, "pinged", {**LEAD, "ping_id": quote["ping_id"]})
    finally:
        os.kill(routing, signal.SIGCONT)
    assert (failed["outcome"], failed["price"]) == ("error", 0)
    retried = submit(suite, "pinged", {**LEAD, "ping_id": quote["ping_id"]})
    assert (retried["outcome"], retried["price"]) == ("success", 12)


def test_the_ping_endpoint_authenticates_like_submit(suite: Suite) -> None:
    status, _, _ = suite.request("GET", "/flows/pinged/sources/vendor/ping?state=CA", key="wrong")
    assert status == 401
    status, _, body = suite.request(
        "GET", "/flows/pinged/sources/vendor/ping?state=CA", key=SOURCE_KEY
    )
    assert status == 200 and orjson.loads(body)["outcome"] == "success"


def test_performance_ranks_by_expected_revenue_from_the_ledger(suite: Suite) -> None:
    # Both new: no statistics, so the quotes rank them (20 before 10); perf-a rejects.
    first = submit(suite, "perf", LEAD)
    assert outcomes(recipients(suite, first["lead"]["id"])) == [
        ("perf-a", "failure", "Not today"),
        ("perf-b", "success", None),
    ]
    # Now the ledger says perf-a accepts 0% (expected 20 x 0 = 0), perf-b 100% (10): b first.
    second = submit(suite, "perf", LEAD)
    assert outcomes(recipients(suite, second["lead"]["id"])) == [("perf-b", "success", None)]
