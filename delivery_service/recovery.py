"""Deliveries whose fate their caller may not know (SPEC 8.1): the durable attempt log, and the
recovery that settles what a crash or a cut-off call left behind.

Each real-time HTTP delivery is written to `http_attempts` before its request leaves, its answer
before it is returned, and the row is deleted once the call that asked for it has ended well.
A row left over is looked at once the delivery must be over:

- an answer was recorded (the process died, or the caller gave up, before it was returned):
  it is reported to the ledger as the late outcome of the recipient event, then routing's
  ResolveStep commits or releases the step's held caps;
- no answer, and the buyer's delivery has `retry: {idempotent: true}`: the same request (same
  `webhook-id`) is sent again and its answer reported the same way;
- no answer otherwise: nothing can be known; the recipient event stays `unknown` for an operator.

The ledger completes only `unknown` (or queued) events, so reporting an answer whose caller did
get it changes nothing (FAILED_PRECONDITION) and the row is simply dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc

from delivery_service.attempts import Answer, HttpAttempt, SentAttempt, orphan_time, resends
from delivery_service.http_adapter import DeliveryResult
from delivery_service.store import DeliveryStore
from leadflow import kit
from leadflow.batching import GroupCommit
from leadflow.config import Buyer, Config
from leadflow.delivery.v1 import delivery_service_pb2
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from leadflow.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from leadflow.wire import outcome_from_proto, outcome_to_proto, to_proto

log = logging.getLogger(__name__)

CALL_DEADLINE_S = 10.0
LEASE = timedelta(seconds=60)
MAX_RETRY_DELAY_S = 300.0
BATCH = 100
CONCURRENCY = 8
# Outcomes that are the buyer's own answer: anything else from a resend (a timeout, a 5xx, an
# open circuit) says nothing of whether the buyer has the lead, so the resend is tried again.
ANSWERED_BY_BUYER = frozenset({"success", "failure"})

Redeliver = Callable[[delivery_service_pb2.DeliverLeadRequest], Awaitable[DeliveryResult]]


def _now() -> datetime:
    return datetime.now(UTC)


class AttemptLog:
    """The writes of the delivery path, in one group commit: the attempts and answers that arrive
    while a transaction is being written share the next one (SQLite has a single writer, and
    each transaction costs a commit and a round of aiosqlite's thread hops whatever it holds).

    A delivery waits for the write of its attempt and of its answer, never for the deletion of
    its row: deletions wait in memory and go with the next write, or on their own after
    FORGET_LINGER_S when no write comes. Under load they add no transaction at all; a deletion
    lost with the process leaves a row that recovery drops after ANSWER_GRACE (the ledger says
    the answer is booked), so the linger stays well under that grace."""

    FORGET_LINGER_S = 0.25

    def __init__(self, store: DeliveryStore) -> None:
        self._forgotten: list[str] = []  # event ids whose rows are no longer needed
        self._writes: GroupCommit[SentAttempt | Answer | None] = GroupCommit(self._write)
        self._store = store
        self._flush: asyncio.Task[None] | None = None

    async def _write(self, items: list[SentAttempt | Answer | None]) -> None:
        forgotten, self._forgotten = self._forgotten, []
        try:
            await self._store.write_attempts(
                [item for item in items if isinstance(item, SentAttempt)],
                [item for item in items if isinstance(item, Answer)],
                forgotten,
            )
        except Exception:
            if forgotten:
                # Harmless: recovery reports the answers, the ledger says they are settled.
                log.warning("could not drop %d settled attempts", len(forgotten), exc_info=True)
            raise

    async def sent(
        self, buyer: Buyer, request: delivery_service_pb2.DeliverLeadRequest, event_id: str
    ) -> None:
        now = _now()
        await self._writes.submit(
            SentAttempt(
                event_id=event_id,
                buyer_id=buyer.id,
                lead_id=request.lead.id,
                request=request.SerializeToString(),
                send_time=now,
                orphan_time=orphan_time(buyer, now),
            )
        )

    async def answered(self, event_id: str, result: DeliveryResult) -> None:
        await self._writes.submit(
            Answer(event_id, result.outcome, result.reason, result.price, result.attempts, _now())
        )

    def done(self, event_id: str) -> None:
        """The caller has the answer: the row is not needed (deleted with a later write)."""
        self._forgotten.append(event_id)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.FORGET_LINGER_S)
        await self._flush_now()

    async def _flush_now(self) -> None:
        if not self._forgotten:
            return  # a write took them along
        with contextlib.suppress(Exception):  # logged by _write; the rows wait for recovery
            await self._writes.submit(None)  # a write of nothing but the waiting deletions

    async def drain(self) -> None:
        """Write the waiting deletions now (the service is stopping)."""
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
        await self._flush_now()


class Recovery:
    """Settles left-over attempts, every `tick_seconds` (the first pass right at start)."""

    def __init__(
        self,
        config: Config,
        store: DeliveryStore,
        redeliver: Redeliver,
        ledger_address: str | None,
        routing_address: str | None,
        tick_seconds: float = 1.0,
    ) -> None:
        self._config = config
        self._store = store
        self._redeliver = redeliver
        self._tick = tick_seconds
        ledger = kit.channel(ledger_address) if ledger_address else None
        routing = kit.channel(routing_address) if routing_address else None
        self._channels = [c for c in (ledger, routing) if c is not None]
        self._ledger: ledger_service_pb2_grpc.LedgerServiceAsyncStub | None = (
            ledger_service_pb2_grpc.LedgerServiceStub(ledger) if ledger else None
        )
        self._routing: routing_service_pb2_grpc.RoutingServiceAsyncStub | None = (
            routing_service_pb2_grpc.RoutingServiceStub(routing) if routing else None
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._warned: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("delivery recovery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._tick)

    async def run_once(self) -> int:
        """Look at what is due; the number of attempts settled."""
        if self._ledger is None:
            if "no-ledger" not in self._warned:
                self._warned.add("no-ledger")
                log.warning("LEADFLOW_LEDGER_ADDR is not set: cut-off deliveries are not settled")
            return 0
        now = _now()
        due = await self._store.due_attempts(now, now + LEASE, BATCH)
        if not due:
            return 0
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(attempt: HttpAttempt) -> bool:
            async with slots:
                try:
                    return await self._settle(attempt)
                except Exception:
                    log.exception("settling the cut-off delivery %s failed", attempt.event_id)
                    await self._later(attempt, "internal error")
                    return False

        return sum(await asyncio.gather(*(one(attempt) for attempt in due)))

    async def _settle(self, attempt: HttpAttempt) -> bool:
        answer = attempt.answer
        if answer is None:
            buyer = self._config.buyers_by_id.get(attempt.buyer_id)
            if not resends(buyer):
                log.warning(
                    "delivery %s to buyer %s was cut off before an answer: its outcome stays "
                    "unknown until an operator resolves it",
                    attempt.event_id,
                    attempt.buyer_id,
                )
                await self._store.forget_attempts([attempt.event_id])
                return True
            request = delivery_service_pb2.DeliverLeadRequest.FromString(attempt.request)
            log.info("resending %s to buyer %s (idempotent)", attempt.event_id, attempt.buyer_id)
            result = await self._redeliver(request)
            if result.outcome not in ANSWERED_BY_BUYER:
                await self._later(attempt, f"resend: {result.outcome}: {result.reason}")
                return False
            answer = Answer(
                attempt.event_id,
                result.outcome,
                result.reason,
                result.price,
                result.attempts,
                _now(),
            )
        return await self._report(attempt, answer)

    async def _report(self, attempt: HttpAttempt, answer: Answer) -> bool:
        assert self._ledger is not None
        request = ledger_service_pb2.RecordDeliveryOutcomeRequest(
            recipient_event_id=attempt.event_id,
            outcome=outcome_to_proto(answer.outcome),
            reason=answer.reason,
            attempts=[item.to_proto() for item in answer.attempts],
        )
        if answer.price is not None:
            request.sale_price.CopyFrom(to_proto(answer.price, self._config.account.currency))
        request.complete_time.FromDatetime(answer.answer_time)
        try:
            recorded = await self._ledger.RecordDeliveryOutcome(request, timeout=CALL_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # The event's outcome is final: its caller had the answer after all.
                await self._store.forget_attempts([attempt.event_id])
                return True
            # NOT_FOUND: the lead is still on its way to the ledger (the gateway's outbox).
            await self._later(attempt, f"ledger: {exc.code().name}: {exc.details()}")
            return False
        if recorded.created:
            log.info(
                "late outcome of %s to buyer %s booked: %s",
                attempt.event_id,
                attempt.buyer_id,
                answer.outcome,
            )
        if self._routing is not None:
            # The outcome the ledger holds (an operator may have resolved it first) decides.
            resolve = routing_service_pb2.ResolveStepRequest(
                lead_id=recorded.lead_id,
                stage_index=recorded.stage_index,
                step_index=recorded.step_index,
                sold=outcome_from_proto(recorded.outcome) == "success",
            )
            try:
                await self._routing.ResolveStep(resolve, timeout=CALL_DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                await self._later(attempt, f"routing: {exc.code().name}: {exc.details()}")
                return False
        elif "no-routing" not in self._warned:
            self._warned.add("no-routing")
            log.warning("LEADFLOW_ROUTING_ADDR is not set: late outcomes leave caps held")
        await self._store.forget_attempts([attempt.event_id])
        return True

    async def _later(self, attempt: HttpAttempt, error: str) -> None:
        delay = min(2.0 ** min(attempt.tries + 1, 16), MAX_RETRY_DELAY_S)
        await self._store.attempt_failed(attempt.event_id, error, _now() + timedelta(seconds=delay))

    async def close(self) -> None:
        await self.stop()
        for channel in self._channels:
            await channel.close()
