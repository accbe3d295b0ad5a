"""The circuit breaker's states: closed, open for a cool-down, one half-open probe."""

from __future__ import annotations

from delivery_service.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from leadflow.config import CircuitBreakerSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(breakers: Breakers, times: int) -> None:
    for _ in range(times):
        reason, probe = breakers.admit("b")
        assert reason is None
        breakers.record("b", True, probe)


def test_only_one_probe_runs_while_half_open_and_its_answer_closes_the_circuit() -> None:
    clock = Clock()
    breakers = Breakers({"b": CircuitBreakerSpec(errors=2, cooldown_s=10)}, clock)
    _fail(breakers, 2)
    assert breakers.state("b") == OPEN
    reason, _ = breakers.admit("b")
    assert reason is not None and reason.startswith("Circuit open after 2")
    clock.now += 10
    assert breakers.admit("b") == (None, True)
    assert breakers.state("b") == HALF_OPEN
    reason, probe = breakers.admit("b")
    assert reason is not None and not probe  # a second caller does not probe as well
    breakers.record("b", False, True)
    assert breakers.state("b") == CLOSED
    assert breakers.admit("b") == (None, False)


def test_a_cancelled_probe_frees_the_slot_for_the_next_caller() -> None:
    clock = Clock()
    breakers = Breakers({"b": CircuitBreakerSpec(errors=1, cooldown_s=1)}, clock)
    _fail(breakers, 1)
    clock.now += 1
    assert breakers.admit("b") == (None, True)
    breakers.record("b", None, True)
    assert breakers.admit("b") == (None, True)


def test_buyers_without_a_breaker_are_always_admitted() -> None:
    breakers = Breakers({})
    for _ in range(100):
        breakers.record("x", True, False)
    assert breakers.admit("x") == (None, False)
