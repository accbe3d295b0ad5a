"""Lead records the ledger could not take when they were made, replayed until it does.

RecordLead is idempotent by lead id, so a record that did reach the ledger before its reply was
lost is simply acknowledged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from gateway.clients import Downstream
from gateway.store import GatewayStore
from leadflow.ledger.v1 import ledger_service_pb2

log = logging.getLogger(__name__)


class LedgerOutbox:
    def __init__(
        self, store: GatewayStore, downstream: Downstream, interval_s: float = 1.0
    ) -> None:
        self._store = store
        self._downstream = downstream
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def record(self, request: ledger_service_pb2.RecordLeadRequest) -> None:
        """Record now, or park the record durably for replay; never loses it."""
        try:
            await self._downstream.record_lead(request)
        except grpc.aio.AioRpcError as exc:
            log.warning("ledger unavailable (%s): lead %s parked", exc.code().name, request.lead.id)
            await self._store.park(request.lead.id, request.SerializeToString())

    async def replay(self) -> int:
        """Send parked records, oldest first, until the ledger refuses one; how many were sent."""
        sent = 0
        for lead_id, payload in await self._store.parked():
            request = ledger_service_pb2.RecordLeadRequest.FromString(payload)
            try:
                await self._downstream.record_lead(request)
            except grpc.aio.AioRpcError:
                break
            await self._store.unpark(lead_id)
            sent += 1
        return sent

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                if await self.replay():
                    log.info("parked lead records replayed to the ledger")
            except Exception:  # the loop must outlive a database hiccup
                log.exception("replaying parked lead records failed")
            await asyncio.sleep(self._interval_s)
