"""The ledger outbox: every lead record is committed in the gateway's own database before the
vendor hears the lead's outcome, then forwarded to the ledger in batches and deleted once the
ledger has it.

A gateway crash after the answer, a ledger outage or a lost reply therefore loses nothing: what
is left in the table is replayed, and RecordLeads is idempotent by lead id, so a record that
reached the ledger before its reply was lost is simply acknowledged again. Records wait for the
ledger only in memory order; their commit is grouped (leadflow.batching), so a busy gateway pays
for one transaction per burst of leads rather than one per lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from datetime import UTC, datetime, timedelta

import grpc

from gateway.clients import Downstream
from gateway.store import GatewayStore, OutboxRecord
from leadflow import tracing
from leadflow.batching import GroupCommit
from leadflow.ledger.v1 import ledger_service_pb2

log = logging.getLogger(__name__)

BATCH = 200  # records per RecordLeads call (the ledger takes at most 500)
BATCH_BYTES = 1024 * 1024  # and well under gRPC's 4 MiB message limit (attempts carry bodies)
# How long a record may wait for others to share its RecordLeads call. The ledger's cost is mostly
# per call (a transaction, a commit, the round trip, and on the gateway the delete that follows),
# so under a steady load a call every few milliseconds would spend CPU the leads in flight need.
# The record is durable already, and a read through the gateway does not wait (flushed()).
LINGER_S = 0.25
ACKNOWLEDGED = frozenset(
    {ledger_service_pb2.RECORD_STATUS_CREATED, ledger_service_pb2.RECORD_STATUS_ALREADY_RECORDED}
)


class LedgerOutbox:
    def __init__(
        self,
        store: GatewayStore,
        downstream: Downstream,
        sweep_interval_s: float = 1.0,
        replay_after_s: float = 5.0,
        linger_s: float = LINGER_S,
    ) -> None:
        self._store = store
        self._downstream = downstream
        self._sweep_interval_s = sweep_interval_s
        # Older records than this are replayed from the table: their forwarding failed, or the
        # gateway that committed them stopped before forwarding them.
        self._replay_after = timedelta(seconds=replay_after_s)
        self._commits = GroupCommit(store.put_records)
        # (commit number, the serialized record, the lead's trace context: None when tracing is
        # off). Records stay serialized from the commit to the ledger: RecordLeads carries them
        # as they are (Downstream.record_leads), never copied into a message and encoded again.
        self._waiting: deque[tuple[int, bytes, object | None]] = deque()
        self._committed = 0  # records committed by this gateway so far
        self._forwarded = 0  # of those, how many the forwarder has been through (sent or not)
        self._wanted = 0  # what flushed() callers wait for: sent without lingering
        self._progress = asyncio.Condition()
        self._linger_s = linger_s
        self._wake = asyncio.Event()  # records are waiting
        self._hurry = asyncio.Event()  # and should go without lingering
        self._tasks: list[asyncio.Task[None]] = []
        self._ledger_down = False

    async def record(
        self, request: ledger_service_pb2.RecordLeadRequest, result: bytes | None = None
    ) -> None:
        """Return once the record is durable (and, for an asynchronous intake, its `result`
        with it); it reaches the ledger soon after."""
        record = OutboxRecord(request.lead.id, request.SerializeToString(), result)
        await self._commits.submit(record)
        self._committed += 1
        self._waiting.append((self._committed, record.request, tracing.current_context()))
        self._wake.set()
        if len(self._waiting) >= BATCH:
            self._hurry.set()

    async def flushed(self, timeout_s: float = 5.0) -> None:
        """Wait until the records committed before this call have been offered to the ledger,
        so that a read from the ledger sees them (a ledger that is down does not stall it)."""
        target = self._committed
        self._wanted = max(self._wanted, target)
        self._hurry.set()
        async with self._progress:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._forwarded >= target), timeout_s
                )

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._forward()), asyncio.create_task(self._sweep())]

    async def stop(self) -> None:
        """Forward what is waiting (records not sent stay in the table), then stop."""
        await self.flushed()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def replay(self) -> int:
        """Send the table's older records to the ledger; how many it acknowledged."""
        before = datetime.now(UTC) - self._replay_after
        sent = 0
        while True:
            rows = await self._store.stale_records(before, BATCH)
            if not rows:
                return sent
            acknowledged = await self._send(rows)
            sent += acknowledged
            if acknowledged < len(rows):
                return sent  # the ledger is down or refusing: try again at the next sweep

    async def _forward(self) -> None:
        """One RecordLeads call at a time, each with what waited for up to the linger time."""
        while True:
            await self._wake.wait()
            if not self._due():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._linger_s)
            self._wake.clear()
            self._hurry.clear()
            batch = [self._waiting.popleft() for _ in range(min(BATCH, len(self._waiting)))]
            if not batch:
                continue
            try:
                # One call for many leads: in the first lead's trace, linked to the others'.
                with tracing.batch_span(
                    "forward lead records", [context for _, _, context in batch], records=len(batch)
                ):
                    await self._send([request for _, request, _ in batch])
            except Exception:  # the records stay in the table for the sweep
                log.exception("forwarding lead records to the ledger failed")
            async with self._progress:
                self._forwarded = batch[-1][0]
                self._progress.notify_all()
            if self._waiting:
                self._wake.set()

    def _due(self) -> bool:
        """Whether what waits should be sent now: a full batch, or a reader waits for it."""
        return len(self._waiting) >= BATCH or self._forwarded < self._wanted

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                if replayed := await self.replay():
                    log.info("%d lead records replayed to the ledger", replayed)
            except Exception:  # the loop must outlive a database hiccup
                log.exception("replaying lead records failed")

    async def _send(self, records: list[bytes]) -> int:
        """RecordLeads calls of at most BATCH_BYTES; how many records were acknowledged."""
        acknowledged = 0
        for chunk in _chunks(records):
            done = await self._send_chunk(chunk)
            if done is None:
                break  # the ledger is down: the rest waits for the sweep
            acknowledged += done
        return acknowledged

    async def _send_chunk(self, records: list[bytes]) -> int | None:
        """One RecordLeads call; acknowledged records leave the table, rejected ones are set
        aside. How many were acknowledged (None when the ledger is unavailable)."""
        try:
            reply = await self._downstream.record_leads(records)
        except grpc.aio.AioRpcError as exc:
            if not self._ledger_down:  # once per outage, not once per batch
                log.warning("ledger unavailable (%s): lead records wait", exc.code().name)
            self._ledger_down = True
            return None
        if self._ledger_down:
            log.info("ledger available again")
            self._ledger_down = False
        done = [r.lead_id for r in reply.results if r.status in ACKNOWLEDGED]
        rejected = [(r.lead_id, r.error) for r in reply.results if r.status not in ACKNOWLEDGED]
        for lead_id, error in rejected:
            log.error(
                "the ledger rejected lead %s's record: %s",
                lead_id,
                error,
                extra={"lead_id": lead_id},
            )
        await self._store.settle_records(done, rejected)
        return len(done)


def _chunks(records: list[bytes]) -> list[list[bytes]]:
    chunks: list[list[bytes]] = [[]]
    size = 0
    for record in records:
        record_size = len(record)
        if chunks[-1] and size + record_size > BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(record)
        size += record_size
    return chunks
