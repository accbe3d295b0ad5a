"""The bench's load generator: loopback only, leads the demo flow accepts, honest quantiles."""

from __future__ import annotations

import os
import random
import time

import pytest

from bench.load import LoadResult, realistic_lead, run_load
from bench.run import FLOWS, Histogram, cpu_seconds, hops_summary
from leadflow.config import load_config
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


def test_a_run_tag_keeps_emails_apart_across_runs() -> None:
    # The production flow checks duplicates on email: a second run must not repeat the first's.
    first = realistic_lead(random.Random(1), 7, ".run1")
    second = realistic_lead(random.Random(1), 7, ".run2")
    assert first["email"] != second["email"]
    email = parse_lead(second, {})["email"]
    assert isinstance(email, dict) and email["valid"] is True


def test_the_production_flow_has_what_issue_14_measures() -> None:
    config = load_config(FLOWS["production"])
    assert all(buyer.caps for buyer in config.buyers)
    flow = config.flows[0]
    assert flow.duplicates is not None and flow.duplicates.fields == ["email"]
    steps = flow.stages[0].steps
    assert flow.stages[0].exclusive and len(steps) == 2
    assert sum(1 for step in steps if step.caps) == 1
    assert flow.acceptance is not None and flow.pricing is not None


def test_cpu_seconds_reads_a_process_cpu_and_zero_once_it_has_gone() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) > before
    assert cpu_seconds(2**22 + 1) == 0.0  # above Linux's largest pid: never a process


def test_a_hop_histogram_reads_its_mean_and_quantiles_off_the_phase_alone() -> None:
    before = Histogram(total=100.0, count=1000, buckets={0.01: 1000, 0.1: 1000, float("inf"): 1000})
    # The phase: 100 observations, 90 under 10 ms and 10 between 10 and 100 ms, 2 s in all.
    after = Histogram(total=102.0, count=1100, buckets={0.01: 1090, 0.1: 1100, float("inf"): 1100})
    phase = after.minus(before)
    assert phase.count == 100 and phase.mean_ms == pytest.approx(20.0)
    assert phase.quantile_ms(0.5) == pytest.approx(10 * 50 / 90)
    assert phase.quantile_ms(0.99) == pytest.approx(10 + 90 * 9 / 10)


def test_each_hop_s_own_time_is_its_mean_less_the_hop_it_wraps() -> None:
    def hist(mean_ms: float) -> Histogram:
        return Histogram(total=mean_ms / 1000 * 10, count=10, buckets={float("inf"): 10})

    empty = {hop: Histogram() for hop in ("lead", "pricing", "distribute", "deliver", "buyer")}
    spent = {"lead": 30.0, "pricing": 2.0, "distribute": 25.0, "deliver": 12.0, "buyer": 10.0}
    summary = hops_summary(empty, {hop: hist(ms) for hop, ms in spent.items()})
    assert "distribute mean=25.0" in summary and "own=13.0" in summary
    assert "deliver mean=12.0" in summary and "own=2.0" in summary
    assert summary.endswith("gateway own=3.0")
