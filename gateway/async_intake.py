"""Asynchronous submission (`Prefer: respond-async`): the lead is committed, answered 202 with its
status URL at once, and processed in the background by a pool of workers.

Nothing accepted is lost. A submission waits in the gateway's database until a gateway claims it
(one conditional UPDATE, so exactly one does); one left unclaimed by a gateway that stopped is
claimed by the next sweep of any gateway. Its result is stored in the same transaction as the
lead's ledger record (gateway.outbox). A claimed submission that never finished (its gateway died
while processing it) is recorded as an error after the lease, never processed again: a buyer may
already have it, and no buyer gets a lead twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.orchestrator import Orchestrator
from gateway.store import GatewayStore, IntakeRow
from leadflow import tracing
from leadflow.batching import GroupCommit
from leadflow.ids import new_lead_id

log = logging.getLogger(__name__)

WORKERS = 32
SWEEP_LIMIT = 500


@dataclass(frozen=True)
class Submission:
    """What the vendor sent, as the orchestrator takes it."""

    fields: dict[str, Any]
    override_price: str
    ping_id: str

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"fields": self.fields, "override_price": self.override_price, "ping_id": self.ping_id}
        )

    @classmethod
    def from_json(cls, data: bytes) -> Submission:
        value = orjson.loads(data)
        return cls(value["fields"], value["override_price"], value["ping_id"])


class AsyncIntake:
    def __init__(
        self,
        store: GatewayStore,
        orchestrator: Orchestrator,
        *,
        workers: int = WORKERS,
        sweep_interval_s: float = 2.0,
        unclaimed_after_s: float = 10.0,
        lease_s: float = 600.0,
    ) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._workers = workers
        self._sweep_interval_s = sweep_interval_s
        # Another gateway's unclaimed intake is taken over after this long (it may just be busy:
        # the claim decides who processes it).
        self._unclaimed_after = timedelta(seconds=unclaimed_after_s)
        # Longer than any lead's processing can take (the sum of its calls' deadlines).
        self._lease = timedelta(seconds=lease_s)
        self._commits = GroupCommit(store.add_intakes)
        self._queue: asyncio.Queue[IntakeRow] = asyncio.Queue()
        # Lead ids in the queue: a sweep during a backlog must not queue them again.
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()  # workers processing a lead
        # With tracing on, the trace of each accepted request, by lead id: its processing goes
        # on in that trace. Only for what this gateway accepted (a swept row has none).
        self._traces: dict[str, object] = {}
        self._stopping = False

    async def accept(self, flow_id: str, source_id: str, submission: Submission) -> str:
        """Commit the submission and queue it; its lead id, once durable."""
        row = IntakeRow(new_lead_id(), flow_id, source_id, submission.to_json())
        await self._commits.submit(row)
        if (trace := tracing.current_context()) is not None:
            self._traces[row.lead_id] = trace
        self._enqueue(row)
        return row.lead_id

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._sweep()))

    async def stop(self) -> None:
        """Finish the leads being processed; what is still queued stays for the next sweep."""
        self._stopping = True
        for task in self._tasks:
            if task not in self._busy:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def sweep(self) -> None:
        """Take over unclaimed intakes and record lapsed ones as interrupted."""
        now = datetime.now(UTC)
        for row in await self._store.unclaimed_intakes(now - self._unclaimed_after, SWEEP_LIMIT):
            self._enqueue(row)
        lapsed_before = now - self._lease
        for row in await self._store.lapsed_intakes(lapsed_before, SWEEP_LIMIT):
            if not await self._store.claim_intake(row.lead_id, lapsed_before):
                continue  # another gateway took it
            submission = Submission.from_json(row.submission)
            log.warning(
                "lead %s: its gateway stopped while processing it",
                row.lead_id,
                extra={"lead_id": row.lead_id},
            )
            await self._orchestrator.interrupted(
                row.lead_id, row.flow_id, row.source_id, submission.fields
            )

    def _enqueue(self, row: IntakeRow) -> None:
        if row.lead_id not in self._queued:
            self._queued.add(row.lead_id)
            self._queue.put_nowait(row)

    async def _work(self) -> None:
        worker = asyncio.current_task()
        assert worker is not None
        while not self._stopping:
            row = await self._queue.get()
            self._queued.discard(row.lead_id)
            self._busy.add(worker)
            trace = self._traces.pop(row.lead_id, None)
            try:
                if await self._store.claim_intake(row.lead_id):
                    with tracing.continued(trace):
                        await self._process(row)
            except Exception:  # the worker must outlive one lead; the lease will catch it
                log.exception(
                    "lead %s: asynchronous processing failed",
                    row.lead_id,
                    extra={"lead_id": row.lead_id},
                )
            finally:
                self._busy.discard(worker)

    async def _process(self, row: IntakeRow) -> None:
        submission = Submission.from_json(row.submission)
        await self._orchestrator.submit(
            row.flow_id,
            row.source_id,
            submission.fields,
            submission.override_price,
            ping_id=submission.ping_id,
            lead_id=row.lead_id,
        )

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # the loop must outlive a database hiccup
                log.exception("sweeping asynchronous intakes failed")
