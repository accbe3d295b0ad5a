"""When a recorded HTTP delivery is surely over, and which buyers get a cut-off one again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from delivery_service.attempts import SENT_MARGIN, longest_delivery, orphan_time, resends
from leadflow.config import Buyer, HttpDelivery


def http(**extra: Any) -> HttpDelivery:
    return HttpDelivery.model_validate({"type": "http", "url": "https://b.example", **extra})


@pytest.mark.parametrize(
    ("extra", "seconds"),
    [
        ({"timeout_ms": 5000}, 5.0),
        ({"timeout_ms": 1000, "retry": {"attempts": 3, "max_backoff_ms": 500}}, 4.0),
        ({"timeout_ms": 2000, "retry": {"idempotent": True}}, 2.0),
    ],
    ids=["one-attempt", "retries-and-backoffs", "idempotent-only"],
)
def test_the_longest_delivery_counts_every_attempt_and_backoff(
    extra: dict[str, Any], seconds: float
) -> None:
    assert longest_delivery(http(**extra)) == timedelta(seconds=seconds)


def test_an_unanswered_delivery_is_an_orphan_only_past_its_longest_run_and_a_margin() -> None:
    buyer = Buyer.model_validate(
        {
            "id": "b",
            "name": "B",
            "delivery": {"type": "http", "url": "https://b.x", "timeout_ms": 3000},
        }
    )
    sent = datetime(2026, 3, 1, tzinfo=UTC)

    assert orphan_time(buyer, sent) == sent + timedelta(seconds=3) + SENT_MARGIN


@pytest.mark.parametrize(
    ("delivery", "expected"),
    [
        ({"type": "http", "url": "https://b.x", "retry": {"idempotent": True}}, True),
        ({"type": "http", "url": "https://b.x", "retry": {"attempts": 3}}, False),
        ({"type": "http", "url": "https://b.x"}, False),
    ],
    ids=["idempotent", "retries-only", "no-retry"],
)
def test_only_a_buyer_that_deduplicates_gets_a_cut_off_delivery_again(
    delivery: dict[str, Any], expected: bool
) -> None:
    buyer = Buyer.model_validate({"id": "b", "name": "B", "delivery": delivery})

    assert resends(buyer) is expected
    assert resends(None) is False
