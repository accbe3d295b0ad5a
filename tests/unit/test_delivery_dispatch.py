"""The route of a delivery (HTTP, a file or mail now, the batch queue) and the retry cache."""

from __future__ import annotations

from typing import Any

import pytest

from delivery_service.dispatch import NO_QUEUE, Plan, RecentResults, Route, plan, retry_key
from leadflow.config import Buyer

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIRy/aZ7RvxsaEgGdUwwgat8KNExTUPZkjXa7G144vRf"
SFTP = {"type": "sftp", "host": "h", "password": "p", "host_key": HOST_KEY}
EMAIL = {"type": "email", "smtp": {"host": "mail.example"}, "to": ["ops@buyer.example"]}
HTTP = {"type": "http", "url": "https://buyer.example/leads"}


def buyer(delivery: dict[str, Any] | None) -> Buyer:
    return Buyer.model_validate({"id": "acme", "name": "Acme", "delivery": delivery})


@pytest.mark.parametrize(
    ("delivery", "has_adapter", "has_queue", "expected"),
    [
        (HTTP, True, True, Plan(Route.HTTP)),
        (HTTP, True, False, Plan(Route.HTTP)),  # HTTP needs no queue
        (HTTP, False, True, Plan(Route.NONE, "buyer 'acme' has no delivery")),
        (None, False, True, Plan(Route.NONE, "buyer 'acme' has no delivery")),
        (SFTP, False, True, Plan(Route.FILE_NOW)),  # realtime is the default schedule
        ({**SFTP, "schedule": "realtime"}, False, True, Plan(Route.FILE_NOW)),
        ({**SFTP, "schedule": "0 * * * *"}, False, True, Plan(Route.QUEUE)),
        ({**SFTP, "schedule": "@hourly"}, False, True, Plan(Route.QUEUE)),
        (EMAIL, False, True, Plan(Route.FILE_NOW)),
        ({**EMAIL, "schedule": "30 17 * * 1-5"}, False, True, Plan(Route.QUEUE)),
        # Even a real-time file goes through the queue's storage: without it, nothing is sent.
        (SFTP, False, False, Plan(Route.NONE, NO_QUEUE)),
        ({**EMAIL, "schedule": "30 17 * * 1-5"}, False, False, Plan(Route.NONE, NO_QUEUE)),
        # A file buyer is never sent over HTTP, whatever adapters exist.
        ({**SFTP, "schedule": "@hourly"}, True, True, Plan(Route.QUEUE)),
    ],
    ids=[
        "http",
        "http-without-storage",
        "http-without-adapter",
        "no-delivery",
        "sftp-default-realtime",
        "sftp-realtime",
        "sftp-cron",
        "sftp-nickname",
        "email-realtime",
        "email-cron",
        "sftp-without-storage",
        "email-cron-without-storage",
        "file-buyer-with-adapter",
    ],
)
def test_a_delivery_goes_now_or_into_the_queue_by_the_buyers_delivery(
    delivery: dict[str, Any] | None, has_adapter: bool, has_queue: bool, expected: Plan
) -> None:
    assert plan(buyer(delivery), has_adapter=has_adapter, has_queue=has_queue) == expected


def test_only_a_request_with_an_id_is_retriable_and_per_buyer() -> None:
    assert retry_key("acme", "") is None
    assert retry_key("acme", "r1") == ("acme", "r1")
    assert retry_key("acme", "r1") != retry_key("globex", "r1")


def test_a_retry_gets_the_first_result() -> None:
    recent: RecentResults[str] = RecentResults(10)
    recent.put(("acme", "r1"), "first")

    assert recent.get(("acme", "r1")) == "first"
    assert recent.get(("globex", "r1")) is None
    assert recent.get(("acme", "r2")) is None


def test_the_least_recently_asked_result_is_forgotten_first() -> None:
    recent: RecentResults[str] = RecentResults(2)
    recent.put(("acme", "r1"), "one")
    recent.put(("acme", "r2"), "two")
    recent.get(("acme", "r1"))  # asked again: now the most recent
    recent.put(("acme", "r3"), "three")

    assert len(recent) == 2
    assert recent.get(("acme", "r2")) is None
    assert recent.get(("acme", "r1")) == "one"
    assert recent.get(("acme", "r3")) == "three"


def test_putting_a_key_again_replaces_its_result_and_keeps_one_entry() -> None:
    recent: RecentResults[str] = RecentResults(2)
    recent.put(("acme", "r1"), "one")
    recent.put(("acme", "r2"), "two")
    recent.put(("acme", "r1"), "again")
    recent.put(("acme", "r3"), "three")

    assert len(recent) == 2
    assert recent.get(("acme", "r1")) == "again"
    assert recent.get(("acme", "r2")) is None


@pytest.mark.parametrize("size", [0, -5])
def test_a_cache_sized_zero_or_less_still_holds_the_latest_result(size: int) -> None:
    # A retry racing its first call must find it: at least one delivery is always remembered.
    recent: RecentResults[str] = RecentResults(size)
    recent.put(("acme", "r1"), "one")
    recent.put(("acme", "r2"), "two")

    assert len(recent) == 1
    assert recent.get(("acme", "r2")) == "two"
    assert recent.get(("acme", "r1")) is None
