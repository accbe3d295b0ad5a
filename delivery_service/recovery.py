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
    """The writes of the delivery path, in one group commit: the attempts, answers and
    deletions that arrive while a transaction is being written share the next one (a delivery
    waits for the write of its attempt and of its answer, never for the deletion). One writer
    rather than one per kind: SQLite has a single writer anyway, and three concurrent
    transactions queued on its lock cost three commits where one does."""

    def __init__(self, store: DeliveryStore) -> None:
        self._writes: GroupCommit[SentAttempt | Answer | str] = GroupCommit(
            lambda items: store.write_attempts(
                [item for item in items if isinstance(item, SentAttempt)],
                [item for item in items if isinstance(item, Answer)],
                [item for item in items if isinstance(item, str)],  # event ids to forget
            )
        )
        self._tasks: set[asyncio.Task[None]] = set()

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
        """The caller has the answer: the row is not needed (written in the background)."""
        task = asyncio.get_running_loop().create_task(self._forget(event_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, event_id: str) -> None:
        try:
            await self._writes.submit(event_id)
        except Exception:
            # Harmless: recovery reports the answer, the ledger says it is settled, and it goes.
            log.warning("could not drop the settled attempt %s", event_id, exc_info=True)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks))


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
