"""The bench's load generator: loopback only, leads the demo flow accepts, honest quantiles."""

from __future__ import annotations

import random

import pytest

from bench.load import LoadResult, realistic_lead, run_load
from leadflow.fields import parse_lead


async def test_load_refuses_a_target_other_than_loopback() -> None:
    with pytest.raises(SystemExit, match=r"127\.0\.0\.1 only"):
        await run_load("http://example.com/submit", "k", count=1, seconds=1)


def test_realistic_leads_vary_and_carry_a_valid_phone_and_state() -> None:
    rng = random.Random(3)
    leads = [realistic_lead(rng, i) for i in range(50)]
    assert len({lead["email"] for lead in leads}) == 50
    for lead in leads:
        parsed = parse_lead(lead, {"vehicle_year": "number"})
        for name in ("phone_1", "state", "email", "postal_code"):
            field = parsed[name]
            assert isinstance(field, dict)
            assert field["valid"] is True, (name, field)


def test_quantiles_come_from_the_recorded_latencies() -> None:
    result = LoadResult("t", latencies=[i / 1000 for i in range(1, 1001)], seconds=2.0)
    result.statuses[201] = 1000
    assert result.per_s == 500
    assert result.quantile_ms(0.5) == pytest.approx(500.5, abs=1)
    assert result.quantile_ms(0.99) == pytest.approx(990, abs=2)
