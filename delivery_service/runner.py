"""Files and mails to batch buyers: queueing, the cron scheduler, sending under a lease,
recovery of a dead replica's batches, and reporting final outcomes to the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from time import perf_counter

import grpc

from delivery_service import metrics
from delivery_service.batches import (
    REALTIME,
    Backoff,
    Batch,
    OutcomeReport,
    QueueState,
    batch_spec,
    next_run,
)
from delivery_service.files import FileBuilder, OutgoingFile, QueuedLead, buyer_time_zone
from delivery_service.http_adapter import DeliveryResult
from delivery_service.mail_adapter import MailAdapter
from delivery_service.sftp_adapter import NameCallback, SendResult, SftpAdapter
from delivery_service.store import MAX_BATCH_LEADS, DeliveryStore
from leadflow import ids, kit
from leadflow.config import Buyer, Config, SftpDelivery
from leadflow.errors import RuleRefused
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from leadflow.templates import TemplateError
from leadflow.wire import DeliveryAttempt, LeadData, outcome_to_proto, to_proto

log = logging.getLogger(__name__)

LEDGER_DEADLINE_S = 10.0
MAX_REPORT_DELAY_S = 300.0
REPORT_BATCH = 200
REPORT_CONCURRENCY = 16


class UnknownBatchTarget(LookupError):
    """No such buyer or batch."""


class BatchRefused(RuleRefused):
    """The buyer takes no files, or the batch cannot be resent in its state."""


@dataclass(frozen=True)
class RunnerSettings:
    """How often the scheduler looks, how long a lease lasts, how failed files back off."""

    tick_seconds: float = 1.0
    lease_seconds: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)


def replica_id() -> str:
    """Who holds a lease: unique per process, readable in the batches table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FileBuyer:
    """A buyer that receives files or mails: its compiled templates and its adapter."""

    buyer: Buyer
    builder: FileBuilder
    adapter: SftpAdapter | MailAdapter

    @property
    def schedule(self) -> str:
        return self.builder.spec.schedule

    @property
    def kind(self) -> str:
        return self.adapter.name


def build_file_buyers(config: Config) -> dict[str, FileBuyer]:
    allow_private = config.account.allow_private_network_delivery
    found: dict[str, FileBuyer] = {}
    for buyer in config.buyers:
        spec = batch_spec(buyer)
        if spec is None:
            continue
        adapter: SftpAdapter | MailAdapter = (
            SftpAdapter(buyer.id, spec, allow_private_network=allow_private)
            if isinstance(spec, SftpDelivery)
            else MailAdapter(buyer.id, spec)
        )
        found[buyer.id] = FileBuyer(buyer, FileBuilder(config, buyer, spec), adapter)
    return found


async def send_file(
    target: FileBuyer,
    file: OutgoingFile,
    leads: Sequence[QueuedLead],
    number: int,
    *,
    recovering_name: str | None = None,
    on_name: NameCallback | None = None,
) -> SendResult:
    """One try at sending a file through the buyer's adapter."""
    if isinstance(target.adapter, SftpAdapter):
        result = await target.adapter.send(
            file,
            number,
            recovering_name=recovering_name,
            on_name=on_name,
        )
    else:
        subject = target.builder.subject_for(file, leads)
        result = await target.adapter.send(file, subject, number)
    return result


# Ledger answers that a retry cannot change.
REFUSED_FOR_GOOD = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT}
)
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


class OutcomeReporter:
    """Hands final outcomes to the ledger (RecordDeliveryOutcome), keeping each until it is
    taken: a ledger that is down, or does not implement the call yet, delays it, never drops it."""

    def __init__(self, store: DeliveryStore, ledger_address: str | None, currency: str) -> None:
        self._store = store
        self._currency = currency
        self._channel = kit.channel(ledger_address) if ledger_address else None
        self._stub: ledger_service_pb2_grpc.LedgerServiceAsyncStub | None = (
            ledger_service_pb2_grpc.LedgerServiceStub(self._channel) if self._channel else None
        )
        self._warned: set[str] = set()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def report_due(self) -> int:
        """Report what is due; the number the ledger took."""
        if self._stub is None:
            if "no-ledger" not in self._warned and await self._store.unreported_count():
                self._warned.add("no-ledger")
                log.warning("LEADFLOW_LEDGER_ADDR is not set: batch outcomes wait in the queue")
            return 0
        now = _now()
        due = await self._store.due_reports(
            now, now + timedelta(seconds=LEDGER_DEADLINE_S * 3), REPORT_BATCH
        )
        if not due:
            return 0
        slots = asyncio.Semaphore(REPORT_CONCURRENCY)

        async def one(report: OutcomeReport) -> bool:
            async with slots:
                return await self._report(report)

        results = await asyncio.gather(*(one(report) for report in due))
        return sum(results)

    async def _report(self, report: OutcomeReport) -> bool:
        assert self._stub is not None
        request = ledger_service_pb2.RecordDeliveryOutcomeRequest(
            recipient_event_id=report.event_id,
            outcome=outcome_to_proto(report.outcome),
            reason=report.reason,
            sale_price=to_proto(report.sale_price, self._currency),
            attempts=[attempt.to_proto() for attempt in report.attempts],
            batch_id=report.batch_id,
        )
        request.complete_time.FromDatetime(report.complete_time)
        try:
            await self._stub.RecordDeliveryOutcome(request, timeout=LEDGER_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if exc.code() in REFUSED_FOR_GOOD:
                # Retrying cannot change the answer (the event is not queued, the request is
                # invalid): the outcome is parked, still unreported, for an operator to see
                # (leadflow_delivery_outcomes_unreported counts it).
                log.error(
                    "ledger refused the outcome of %s for good (%s: %s); not retried",
                    report.event_id,
                    code,
                    exc.details(),
                )
                await self._store.report_failed(report.event_id, f"{code}: {exc.details()}", NEVER)
                return False
            if code not in self._warned:
                # One line per kind of refusal, not one per lead per second.
                self._warned.add(code)
                log.warning(
                    "ledger did not take a batch outcome (%s: %s); kept and retried",
                    code,
                    exc.details(),
                )
            delay = min(2.0 ** min(report.tries + 1, 16), MAX_REPORT_DELAY_S)
            await self._store.report_failed(
                report.event_id, f"{code}: {exc.details()}", _now() + timedelta(seconds=delay)
            )
            return False
        await self._store.reported(report.event_id, _now())
        return True


class BatchRunner:
    """Queues leads for batch buyers and sends their files: on schedule, on demand, on retry."""

    def __init__(
        self,
        config: Config,
        store: DeliveryStore,
        settings: RunnerSettings,
        ledger_address: str | None = None,
        owner: str | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._settings = settings
        self.owner = owner or replica_id()
        self.buyers = build_file_buyers(config)
        self.reporter = OutcomeReporter(store, ledger_address, config.account.currency)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._gauged: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self, grace: float = 10.0) -> None:
        """Stop scheduling; let files being sent finish (bounded); a cut-off one is recovered
        by whichever replica sees its lease expire."""
        self._stopping.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = set(self._tasks)
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.reporter.close()

    def _spawn(self, coroutine: object) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                # A database hiccup must not end the scheduler: the next tick tries again.
                log.exception("batch scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.tick_seconds)

    # --- one lead ---------------------------------------------------------------------------

    async def queue(
        self,
        buyer: Buyer,
        lead: LeadData,
        event_id: str,
        sale_price: Decimal,
        purchase_price: Decimal | None,
    ) -> DeliveryResult:
        """Keep the lead for the buyer's next file: outcome `queued` (no revenue yet)."""
        queued = QueuedLead(event_id, buyer.id, lead, sale_price, purchase_price)
        await self._store.queue(queued, _now())
        return DeliveryResult("queued")

    async def deliver_realtime(
        self,
        buyer: Buyer,
        lead: LeadData,
        event_id: str,
        sale_price: Decimal,
        purchase_price: Decimal | None,
    ) -> DeliveryResult:
        """A file (SFTP) or mail of its own for one lead, sent now; no retry (the next step
        is the fallback, as for HTTP buyers without `retry`)."""
        target = self.buyers[buyer.id]
        queued = QueuedLead(event_id, buyer.id, lead, sale_price, purchase_price)
        try:
            file = target.builder.build(
                event_id, _now(), [queued], realtime_mail=isinstance(target.adapter, MailAdapter)
            )
        except TemplateError as exc:
            return DeliveryResult("error", f"cannot build the file: {exc}")
        result = await send_file(target, file, [queued], 1)
        if result.ok:
            return DeliveryResult("success", attempts=(result.attempt,))
        return DeliveryResult("error", result.reason, attempts=(result.attempt,))

    # --- batches ----------------------------------------------------------------------------

    def _target(self, buyer_id: str) -> FileBuyer:
        if buyer_id not in self._config.buyers_by_id:
            raise UnknownBatchTarget(f"unknown buyer {buyer_id!r}")
        target = self.buyers.get(buyer_id)
        if target is None:
            raise BatchRefused(f"buyer {buyer_id!r} does not receive files or mails")
        return target

    def _lock(self, buyer_id: str) -> asyncio.Lock:
        return self._locks.setdefault(buyer_id, asyncio.Lock())

    async def deliver_pending(
        self, buyer_id: str, kind: str = "manual", request_id: str | None = None
    ) -> Batch | None:
        """Send the buyer's pending leads now, in as many files as MAX_BATCH_LEADS needs; the
        first file, or None when nothing was pending."""
        target = self._target(buyer_id)
        first: Batch | None = None
        # A failure's backoff is kept on the schedule row: it must exist before the first file.
        zone = buyer_time_zone(self._config, target.buyer)
        upcoming = None if target.schedule == REALTIME else next_run(target.schedule, zone, _now())
        await self._store.set_schedule(buyer_id, target.schedule, zone, upcoming)
        async with self._lock(buyer_id):
            while True:
                batch = await self._deliver_one(target, kind, request_id if first is None else None)
                if batch is None:
                    return first
                first = first or batch
                if batch.status != "delivered" or batch.lead_count < MAX_BATCH_LEADS:
                    return first

    async def _deliver_one(
        self, target: FileBuyer, kind: str, request_id: str | None
    ) -> Batch | None:
        now = _now()
        batch_id = ids.new_id()
        opened = await self._store.open_batch(
            batch_id=batch_id,
            buyer_id=target.buyer.id,
            kind=kind,
            owner=self.owner,
            lease_until=now + timedelta(seconds=self._settings.lease_seconds),
            now=now,
            name_for=lambda leads: target.builder.name_for(batch_id, now, leads),
            request_id=request_id,
        )
        if opened is None:
            return None
        batch, leads = opened
        if not leads:  # the request id was used before: that batch is the answer
            return batch
        return await self._send(target, batch, leads)

    async def resend(self, batch_id: str, request_id: str | None = None) -> Batch:
        original = await self._store.get_batch(batch_id, with_events=True)
        if original is None:
            raise UnknownBatchTarget(f"unknown batch {batch_id!r}")
        target = self._target(original.buyer_id)
        if original.status != "delivered":
            raise BatchRefused(
                f"batch {batch_id} is {original.status}, only a delivered batch can be resent"
                + (
                    "; its leads are queued for the next file"
                    if original.status == "failed" and original.kind != "resend"
                    else ""
                ),
            )
        source = original.resend_of if original.kind == "resend" and original.resend_of else None
        leads = await self._store.batch_leads(source or original.id)
        now = _now()
        new_id = ids.new_id()
        batch, created = await self._store.open_resend(
            batch_id=new_id,
            original=replace(original, id=source or original.id),
            owner=self.owner,
            lease_until=now + timedelta(seconds=self._settings.lease_seconds),
            now=now,
            file_name=target.builder.name_for(new_id, now, leads),
            request_id=request_id,
        )
        if not created:
            return batch
        return await self._send(target, batch, leads)

    async def _send(
        self,
        target: FileBuyer,
        batch: Batch,
        leads: Sequence[QueuedLead],
        *,
        recovering: bool = False,
    ) -> Batch:
        """Build the batch's file, send it while renewing the lease, record what happened."""
        heartbeat = asyncio.create_task(self._renew(batch.id))
        try:
            result, size = await self._attempt(target, batch, leads, recovering)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        now = _now()
        if result.ok:
            done = await self._store.complete_batch(
                batch,
                self.owner,
                result.attempt,
                size=size,
                remote_name=result.remote_name,
                now=now,
            )
            if done and batch.kind != "resend":
                metrics.delivered(target.buyer.id, target.kind, "success").inc(len(leads))
            log.info(
                "batch %s to buyer %s: delivered %d lead(s) as %s",
                batch.id,
                target.buyer.id,
                len(leads),
                result.remote_name,
            )
        else:
            retry_time = await self._store.fail_batch(
                batch,
                self.owner,
                result.attempt,
                reason=result.reason,
                size=size,
                now=now,
                backoff=self._settings.backoff,
            )
            if batch.kind != "resend":
                metrics.DELIVERY_RETRIES.labels(target.buyer.id).inc()
            log.warning(
                "batch %s to buyer %s failed (%s); its %d lead(s) wait for the next file%s",
                batch.id,
                target.buyer.id,
                result.reason,
                len(leads),
                f", retried at {retry_time.isoformat()}" if retry_time else "",
            )
        final = await self._store.get_batch(batch.id, with_events=True)
        return final or batch

    async def _attempt(
        self, target: FileBuyer, batch: Batch, leads: Sequence[QueuedLead], recovering: bool
    ) -> tuple[SendResult, int]:
        """One try at the batch's file: the result and the file's size."""
        try:
            file = target.builder.build(batch.id, batch.create_time, leads, batch.file_name)
        except TemplateError as exc:
            reason = f"cannot build the file: {exc}"
            attempt = DeliveryAttempt(number=batch.tries, request="", error=reason)
            return SendResult(False, reason, attempt), 0

        async def on_name(name: str) -> None:
            await self._store.set_remote_name(batch.id, self.owner, name)

        start = perf_counter()
        result = await send_file(
            target,
            file,
            leads,
            batch.tries,
            recovering_name=batch.remote_name if recovering else None,
            on_name=on_name,
        )
        metrics.delivery_seconds(target.buyer.id, target.kind).observe(perf_counter() - start)
        return result, len(file.content)

    async def _renew(self, batch_id: str) -> None:
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            until = _now() + timedelta(seconds=self._settings.lease_seconds)
            try:
                if not await self._store.renew_lease(batch_id, self.owner, until):
                    log.warning("lost the lease of batch %s", batch_id)
                    return
            except Exception:
                log.exception("cannot renew the lease of batch %s", batch_id)

    async def _recover(self, batch: Batch) -> None:
        """Finish a batch whose replica died mid-send: same leads, same name, same bytes."""
        target = self.buyers.get(batch.buyer_id)
        leads = await self._store.batch_leads(
            batch.resend_of if batch.kind == "resend" and batch.resend_of else batch.id
        )
        if target is None:
            attempt = DeliveryAttempt(number=batch.tries, request="", error="not a file buyer")
            await self._store.fail_batch(
                batch,
                self.owner,
                attempt,
                reason=f"buyer {batch.buyer_id!r} no longer receives files or mails",
                size=0,
                now=_now(),
                backoff=self._settings.backoff,
            )
            return
        log.warning(
            "recovering batch %s of buyer %s (try %d)", batch.id, batch.buyer_id, batch.tries
        )
        async with self._lock(batch.buyer_id):
            await self._send(target, batch, leads, recovering=True)

    # --- listing ----------------------------------------------------------------------------

    async def queues(self, buyer_id: str | None) -> list[QueueState]:
        counts = await self._store.pending_counts()
        schedules = await self._store.schedules()
        states = []
        for target in self.buyers.values():
            if buyer_id and target.buyer.id != buyer_id:
                continue
            state = schedules.get(target.buyer.id)
            states.append(
                QueueState(
                    buyer_id=target.buyer.id,
                    schedule=target.schedule,
                    pending=counts.get(target.buyer.id, 0),
                    next_run_time=(
                        state.next_run_time
                        if state is not None and target.schedule != REALTIME
                        else None
                    ),
                    retry_time=state.retry_time if state is not None else None,
                    failures=state.failures if state is not None else 0,
                )
            )
        return states

    async def list_batches(
        self, buyer_id: str | None, limit: int, before: str | None
    ) -> list[Batch]:
        if buyer_id and buyer_id not in self._config.buyers_by_id:
            raise UnknownBatchTarget(f"unknown buyer {buyer_id!r}")
        return await self._store.list_batches(buyer_id, limit, before)

    # --- the scheduler ----------------------------------------------------------------------

    async def tick(self) -> None:
        """One look at everything due: cron runs, retries, dead replicas' batches, leads of
        buyers that stopped taking batches, outcomes for the ledger, the pending gauge."""
        now = _now()
        await self._due_runs(now)
        await self._orphans()
        for batch in await self._store.expired_batches(now):
            lease_until = now + timedelta(seconds=self._settings.lease_seconds)
            taken = await self._store.take_over(batch, self.owner, now, lease_until)
            if taken is not None:
                self._spawn(self._recover(taken))
        await self.reporter.report_due()
        metrics.OUTCOMES_UNREPORTED.set(await self._store.unreported_count())

    async def _due_runs(self, now: datetime) -> None:
        scheduled = [t for t in self.buyers.values() if t.schedule != REALTIME]
        if not scheduled:  # no schedule to look at (HTTP and real-time buyers only)
            return
        states = await self._store.schedules()
        for target in scheduled:
            buyer = target.buyer
            zone = buyer_time_zone(self._config, buyer)
            state = states.get(buyer.id)
            if state is None or (state.schedule, state.time_zone) != (target.schedule, zone):
                await self._store.set_schedule(
                    buyer.id, target.schedule, zone, next_run(target.schedule, zone, now)
                )
                continue
            if state.next_run_time is not None and state.next_run_time <= now:
                upcoming = next_run(target.schedule, zone, now)
                if await self._store.claim_run(state, upcoming, retry=False):
                    self._spawn(self._run(buyer.id, "scheduled"))
            elif (
                state.retry_time is not None
                and state.retry_time <= now
                and await self._store.claim_run(state, None, retry=True)
            ):
                self._spawn(self._run(buyer.id, "retry"))

    async def _run(self, buyer_id: str, kind: str) -> None:
        try:
            await self.deliver_pending(buyer_id, kind)
        except Exception:
            log.exception("%s batch for buyer %s failed", kind, buyer_id)

    async def _orphans(self) -> None:
        """Pending leads whose buyer no longer batches: real-time file buyers get them in one
        last file now; buyers gone, or now on HTTP, close them as `error`."""
        counts = await self._store.pending_counts()
        # Every batch buyer is on the gauge (0 included), and so is any buyer with leads left.
        gauged = {t.buyer.id for t in self.buyers.values() if t.schedule != REALTIME}
        gauged |= set(counts) | self._gauged
        for buyer_id in gauged:
            metrics.BATCH_PENDING.labels(buyer_id).set(counts.get(buyer_id, 0))
        self._gauged = gauged
        for buyer_id in counts:
            target = self.buyers.get(buyer_id)
            if target is not None:
                if target.schedule == REALTIME and not self._lock(buyer_id).locked():
                    self._spawn(self._run(buyer_id, "manual"))
                continue
            reason = (
                f"buyer {buyer_id!r} is no longer configured"
                if buyer_id not in self._config.buyers_by_id
                else f"buyer {buyer_id!r} no longer receives files or mails"
            )
            closed = await self._store.close_pending(buyer_id, reason, _now(), "")
            if closed:
                log.warning(
                    "closed %d queued lead(s) of buyer %s: %s", len(closed), buyer_id, reason
                )
