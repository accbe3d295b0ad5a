"""Per-buyer circuit breakers for real-time HTTP delivery (issue 8): after a run of consecutive
errors a buyer is not called for a cool-down; then one probe decides whether it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from delivery_service.metrics import CIRCUIT_OPENED, CIRCUIT_REFUSED, CIRCUIT_STATE
from leadflow.config import CircuitBreakerSpec

CLOSED, OPEN, HALF_OPEN = 0, 1, 2


@dataclass
class _Circuit:
    spec: CircuitBreakerSpec
    errors: int = 0
    state: int = CLOSED
    opened_at: float = 0.0
    probing: bool = False


class Breakers:
    """Circuits of the buyers whose delivery has a `circuit_breaker`; state is per process (each
    delivery replica learns on its own that a buyer is down)."""

    def __init__(
        self,
        specs: dict[str, CircuitBreakerSpec],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._circuits = {buyer: _Circuit(spec) for buyer, spec in specs.items()}
        for buyer in specs:
            CIRCUIT_STATE.labels(buyer).set(CLOSED)

    def admit(self, buyer_id: str) -> tuple[str | None, bool]:
        """(None, probe?) when the buyer may be called, the probe of a half-open circuit or
        not; (reason, False) when the circuit refuses the call."""
        circuit = self._circuits.get(buyer_id)
        if circuit is None or circuit.state == CLOSED:
            return None, False
        if circuit.state == OPEN:
            remaining = circuit.opened_at + circuit.spec.cooldown_s - self._clock()
            if remaining > 0:
                return self._refuse(buyer_id, circuit, remaining), False
            self._set(buyer_id, circuit, HALF_OPEN)
        if circuit.probing:  # one probe at a time; the others wait for its verdict
            return self._refuse(buyer_id, circuit, 0), False
        circuit.probing = True
        return None, True

    def record(self, buyer_id: str, errored: bool | None, probe: bool) -> None:
        """The end of an admitted call: errored, answered, or None when it never finished
        (cancelled), which only frees the probe slot."""
        circuit = self._circuits.get(buyer_id)
        if circuit is None:
            return
        was_probe = probe
        if probe:
            circuit.probing = False
        if errored is None:
            return
        if not errored:
            circuit.errors = 0
            self._set(buyer_id, circuit, CLOSED)
            return
        circuit.errors += 1
        if (was_probe and circuit.state == HALF_OPEN) or circuit.errors >= circuit.spec.errors:
            if circuit.state != OPEN:
                CIRCUIT_OPENED.labels(buyer_id).inc()
            circuit.opened_at = self._clock()
            self._set(buyer_id, circuit, OPEN)

    def state(self, buyer_id: str) -> int:
        circuit = self._circuits.get(buyer_id)
        return CLOSED if circuit is None else circuit.state

    def _refuse(self, buyer_id: str, circuit: _Circuit, remaining: float) -> str:
        CIRCUIT_REFUSED.labels(buyer_id).inc()
        wait = f"; next try in {remaining:.0f} s" if remaining > 0 else "; a probe is running"
        return f"Circuit open after {circuit.errors} consecutive delivery errors{wait}"

    @staticmethod
    def _set(buyer_id: str, circuit: _Circuit, state: int) -> None:
        circuit.state = state
        CIRCUIT_STATE.labels(buyer_id).set(state)
