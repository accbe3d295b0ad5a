"""delivery_service batches through the real server: a real asyncssh SFTP server, a real aiosmtpd
SMTP server, the durable queue on SQLite and PostgreSQL, and the real ledger for outcomes."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest

from delivery_service.config import Settings
from delivery_service.server import DeliveryServer, Deps, create_server
from delivery_service.store import DeliveryStore
from leadflow.common.v1 import lead_pb2
from leadflow.config import Config, parse_config
from leadflow.delivery.v1 import delivery_service_pb2 as pb
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from leadflow.fields import parse_lead
from leadflow.ledger.v1 import ledger_service_pb2 as ledger_pb
from leadflow.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from leadflow.wire import LeadData, from_proto, to_proto
from ledger_service.config import Settings as LedgerSettings
from ledger_service.server import Deps as LedgerDeps
from ledger_service.server import create_server as create_ledger
from ledger_service.store import LedgerStore
from tests.conftest import Database
from tests.delivery_servers import SftpServer, SmtpServer, read_csv, tls_for_loopback, unzip_one

pytestmark = pytest.mark.timeout(60)

QUEUED = lead_pb2.OUTCOME_QUEUED
SUCCESS = lead_pb2.OUTCOME_SUCCESS
ERROR = lead_pb2.OUTCOME_ERROR
DELIVERED = pb.BATCH_STATUS_DELIVERED
FAILED = pb.BATCH_STATUS_FAILED
NEVER = "0 0 1 1 *"  # once a year: these buyers send when asked
COLUMNS = '{"Lead": "{{lead_id}}", "First Name": "{{first_name}}", Phone: "{{phone_1}}", Price: "{{sale_price}}"}'


def _config(sftp: SftpServer, smtp: SmtpServer, good_key: str, key_file: Path) -> Config:
    def sftp_buyer(buyer_id: str, schedule: str, **over: str) -> str:
        values = {
            "host": "127.0.0.1",
            "port": str(sftp.port),
            "username": "leads",
            "password": "s3cret-pass",
            "host_key": f'"{sftp.host_key_line}"',
            "directory": "/incoming",
            "schedule": f'"{schedule}"',
            "columns": COLUMNS,
        } | over
        body = ", ".join(f"{key}: {value}" for key, value in values.items())
        return f"  - {{id: {buyer_id}, name: {buyer_id}, delivery: {{type: sftp, {body}}}}}"

    smtp_block = f"{{host: 127.0.0.1, port: {smtp.port}, security: none, username: mailer, password: mail-pass}}"
    buyers = "\n".join(
        [
            sftp_buyer("sftp-batch", NEVER),
            sftp_buyer("sftp-cron", "* * * * * *"),
            sftp_buyer("sftp-realtime", "realtime", filename='"lead-{{lead_id}}.csv"'),
            sftp_buyer("sftp-badpass", NEVER, password="wrong-pass"),
            sftp_buyer("sftp-badkey", NEVER, host_key=f'"{good_key}"'),
            sftp_buyer("sftp-late-dir", NEVER, directory="/later"),
            sftp_buyer("sftp-zip", NEVER, zip="true"),
            sftp_buyer("sftp-key", "realtime", password="null", private_key_file=f'"{key_file}"'),
            sftp_buyer(
                "sftp-nokey", "realtime", password="null", private_key_file='"/nonexistent/key"'
            ),
            f"  - {{id: mail-realtime, name: Mail RT, delivery: {{type: email, smtp: {smtp_block}, from: leads@us.example, to: [buyer@them.example], subject: 'Lead {{{{lead.first_name}}}}', columns: {COLUMNS}}}}}",
            f"  - {{id: mail-batch, name: Mail Batch, delivery: {{type: email, smtp: {smtp_block}, from: leads@us.example, to: [buyer@them.example], schedule: '{NEVER}', columns: {COLUMNS}}}}}",
            "  - {id: http-buyer, name: Http, delivery: {type: http, url: 'http://127.0.0.1:9/x'}}",
        ]
    )
    text = textwrap.dedent(
        """
        account: {name: T, allow_private_network_delivery: true, time_zone: America/Chicago}
        sources: [{id: vendor, name: Vendor, api_key: k}]
        buyers:
        """
    )
    text += buyers + textwrap.dedent(
        """
        flows:
          - id: auto
            name: Auto
            sources: [{source: vendor}]
            stages: [{name: one, steps: [{buyer: sftp-batch}]}]
        """
    )
    return parse_config(text, env={})


def _settings(ledger_address: str | None = None) -> Settings:
    return Settings(
        host="127.0.0.1",
        grpc_port=0,
        ledger_addr=ledger_address,
        delivery_tick_seconds=0.05,
        delivery_lease_seconds=1.0,
        delivery_retry_seconds=1.0,
        delivery_max_retry_seconds=2,
        shutdown_grace_seconds=5,
    )


@dataclass
class Rig:
    """The delivery service with its store, the buyers' servers, a stub, and a lead factory."""

    config: Config
    sftp: SftpServer
    smtp: SmtpServer
    database: Database
    stub: pb_grpc.DeliveryServiceStub
    store: DeliveryStore
    start: Callable[..., Awaitable[tuple[DeliveryServer, pb_grpc.DeliveryServiceStub]]]

    def files(self, directory: str = "incoming") -> dict[str, bytes]:
        return self.sftp.files(directory)

    def rows(self, directory: str = "incoming") -> list[dict[str, str]]:
        return [row for content in self.files(directory).values() for row in read_csv(content)]


def lead_request(
    buyer_id: str, n: int, request_id: str | None = None, **fields: str
) -> pb.DeliverLeadRequest:
    lead = LeadData(
        id=f"lead{n:04d}",
        flow_id="auto",
        source_id="vendor",
        fields=parse_lead({"first_name": f"Ada{n}", "phone_1": "(512) 555-1234", **fields}),
        submit_time=datetime(2026, 3, 14, 15, 9, tzinfo=UTC),
    )
    return pb.DeliverLeadRequest(
        request_id=request_id if request_id is not None else f"lead{n:04d}-1",
        lead=lead.to_proto(),
        buyer_id=buyer_id,
        sale_price=to_proto(Decimal("12.50")),
        purchase_price=to_proto(Decimal("4.00")),
    )


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15) -> None:
    """Poll until `check` holds (readiness is polled, never slept)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[SftpServer, SmtpServer, str]]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(tmp_path / "client_key"))
    sftp = SftpServer(tmp_path / "sftp", client_key=client_key)
    smtp = SmtpServer(login=("mailer", "mail-pass"))
    other = SftpServer(tmp_path / "other")  # only its host key is used: the wrong one
    await sftp.start()
    await smtp.start()
    (sftp.root / "incoming").mkdir()
    try:
        yield sftp, smtp, other.host_key_line
    finally:
        await sftp.stop()
        await smtp.stop()


@pytest.fixture
async def rig(
    servers: tuple[SftpServer, SmtpServer, str], database: Database
) -> AsyncIterator[Rig]:
    sftp, smtp, wrong_key = servers
    config = _config(sftp, smtp, wrong_key, sftp.root.parent / "client_key")
    running: list[tuple[DeliveryServer, DeliveryStore, grpc.aio.Channel]] = []

    async def start(
        ledger_address: str | None = None, cfg: Config | None = None
    ) -> tuple[DeliveryServer, pb_grpc.DeliveryServiceStub]:
        store = await DeliveryStore.open(database.url, database.schema)
        server = await create_server(_settings(ledger_address), Deps(cfg or config, store))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        running.append((server, store, channel))
        return server, pb_grpc.DeliveryServiceStub(channel)

    _, stub = await start()
    try:
        yield Rig(config, sftp, smtp, database, stub, running[0][1], start)
    finally:
        for server, store, channel in reversed(running):
            await channel.close()
            await server.stop(1)
            await store.close()


async def pending(stub: pb_grpc.DeliveryServiceStub, buyer_id: str) -> int:
    reply = await stub.ListBatches(pb.ListBatchesRequest(buyer_id=buyer_id))
    return sum(queue.pending_leads for queue in reply.queues)


# --- queueing and deliver-now --------------------------------------------------------------


async def test_lead_for_a_batch_buyer_is_queued_and_waits(rig: Rig) -> None:
    reply = await rig.stub.DeliverLead(lead_request("sftp-batch", 1))
    assert (reply.outcome, reply.reason, list(reply.attempts)) == (QUEUED, "", [])
    assert not reply.HasField("price")
    assert await pending(rig.stub, "sftp-batch") == 1
    assert rig.files() == {}


async def test_retried_deliver_lead_queues_the_lead_once(rig: Rig) -> None:
    for _ in range(3):
        await rig.stub.DeliverLead(lead_request("sftp-batch", 1))
    assert await pending(rig.stub, "sftp-batch") == 1


async def test_deliver_now_writes_one_csv_of_exactly_the_queued_leads(rig: Rig) -> None:
    for n in (1, 2, 3):
        await rig.stub.DeliverLead(lead_request("sftp-batch", n))
    reply = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))
    batch = reply.batch
    assert (batch.status, batch.kind, batch.lead_count) == (DELIVERED, pb.BATCH_KIND_MANUAL, 3)
    assert list(batch.recipient_event_ids) == ["lead0001-1", "lead0002-1", "lead0003-1"]
    (name, content), *others = rig.files().items()
    assert not others and name == batch.file_name and name.startswith("leads-")
    assert batch.size_bytes == len(content)
    assert content.startswith(b"Lead,First Name,Phone,Price\r\n")
    assert read_csv(content) == [
        {"Lead": f"lead000{n}", "First Name": f"Ada{n}", "Phone": "5125551234", "Price": "12.50"}
        for n in (1, 2, 3)
    ]
    (attempt,) = batch.attempts
    assert "s3cret-pass" not in attempt.request and attempt.error == ""
    assert (
        attempt.response.startswith("renamed /incoming/")
        and ".part to /incoming/" in attempt.response
    )
    assert await pending(rig.stub, "sftp-batch") == 0


async def test_delivered_leads_are_not_sent_again(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-batch", 1))
    await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))
    again = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))
    assert not again.HasField("batch")
    await rig.stub.DeliverLead(lead_request("sftp-batch", 2))
    await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))
    assert sorted(row["Lead"] for row in rig.rows()) == ["lead0001", "lead0002"]
    assert len(rig.files()) == 2


async def test_deliver_now_with_a_used_request_id_returns_the_first_batch(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-batch", 1))
    request = pb.DeliverPendingRequest(buyer_id="sftp-batch", request_id="op-1")
    first = await rig.stub.DeliverPending(request)
    await rig.stub.DeliverLead(lead_request("sftp-batch", 2))
    again = await rig.stub.DeliverPending(request)
    assert again.batch.id == first.batch.id
    assert len(rig.files()) == 1 and await pending(rig.stub, "sftp-batch") == 1


async def test_zipped_batch_holds_the_csv(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-zip", 1))
    reply = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-zip"))
    (name, content), *_ = rig.files().items()
    assert name.endswith(".csv.zip") and name == reply.batch.file_name
    inner, csv_content = unzip_one(content)
    assert inner == name.removesuffix(".zip")
    assert [row["Lead"] for row in read_csv(csv_content)] == ["lead0001"]


# --- the schedule --------------------------------------------------------------------------


async def test_scheduled_batch_is_delivered_without_being_asked(rig: Rig) -> None:
    for n in (1, 2):
        await rig.stub.DeliverLead(lead_request("sftp-cron", n))

    async def delivered() -> bool:
        return sorted(row["Lead"] for row in rig.rows()) == ["lead0001", "lead0002"]

    await eventually(delivered)
    reply = await rig.stub.ListBatches(pb.ListBatchesRequest(buyer_id="sftp-cron"))
    assert [b.kind for b in reply.batches] == [pb.BATCH_KIND_SCHEDULED] * len(reply.batches)
    (queue,) = reply.queues
    assert queue.schedule == "* * * * * *" and queue.HasField("next_run_time")


# --- failures ------------------------------------------------------------------------------


async def test_wrong_password_is_an_error_with_its_reason_and_leads_stay_queued(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-badpass", 1))
    reply = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-badpass"))
    assert reply.batch.status == FAILED
    assert reply.batch.reason == (
        "SFTP login refused for user 'leads' on 127.0.0.1 (wrong password or key)"
    )
    assert reply.batch.attempts[0].error == reply.batch.reason
    assert "wrong-pass" not in reply.batch.attempts[0].request
    assert await pending(rig.stub, "sftp-badpass") == 1
    assert rig.files() == {}


async def test_wrong_host_key_is_an_error_and_leads_stay_queued(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-badkey", 1))
    reply = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-badkey"))
    assert reply.batch.status == FAILED
    assert reply.batch.reason == "SFTP host key of 127.0.0.1 does not match the pinned host_key"
    assert await pending(rig.stub, "sftp-badkey") == 1
    assert rig.sftp.logins == []  # the password never went to a server that could not prove itself


async def test_failed_file_is_retried_with_backoff_and_its_leads_roll_into_the_next(
    rig: Rig,
) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-late-dir", 1))
    failed = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-late-dir"))
    assert failed.batch.reason == "SFTP directory /later does not exist on 127.0.0.1"
    listing = await rig.stub.ListBatches(pb.ListBatchesRequest(buyer_id="sftp-late-dir"))
    (queue,) = listing.queues
    assert queue.failures >= 1 and queue.HasField("retry_time") and queue.pending_leads == 1
    await rig.stub.DeliverLead(lead_request("sftp-late-dir", 2))
    (rig.sftp.root / "later").mkdir()

    async def retried() -> bool:
        reply = await rig.stub.ListBatches(pb.ListBatchesRequest(buyer_id="sftp-late-dir"))
        return reply.batches[0].status == DELIVERED

    await eventually(retried)
    assert sorted(row["Lead"] for row in rig.rows("later")) == ["lead0001", "lead0002"]
    listing = await rig.stub.ListBatches(pb.ListBatchesRequest(buyer_id="sftp-late-dir"))
    history = [(b.status, b.kind) for b in listing.batches]
    assert history[0] == (DELIVERED, pb.BATCH_KIND_RETRY)
    assert history[-1] == (FAILED, pb.BATCH_KIND_MANUAL)
    assert set(history[1:-1]) <= {(FAILED, pb.BATCH_KIND_RETRY)}
    assert listing.queues[0].failures == 0


# --- real time -----------------------------------------------------------------------------


async def test_realtime_sftp_writes_a_file_per_lead(rig: Rig) -> None:
    reply = await rig.stub.DeliverLead(lead_request("sftp-realtime", 7))
    assert (reply.outcome, reply.reason) == (SUCCESS, "")
    assert list(rig.files()) == ["lead-lead0007.csv"]
    assert [row["Lead"] for row in rig.rows()] == ["lead0007"]
    assert reply.attempts[0].response.startswith("renamed /incoming/lead-lead0007.csv.part")


async def test_private_key_login_delivers(rig: Rig) -> None:
    reply = await rig.stub.DeliverLead(lead_request("sftp-key", 8))
    assert (reply.outcome, reply.reason) == (SUCCESS, "")
    assert "(private key, pinned ssh-ed25519)" in reply.attempts[0].request
    assert [row["Lead"] for row in rig.rows()] == ["lead0008"]


async def test_unreadable_private_key_file_is_an_error_naming_it(rig: Rig) -> None:
    reply = await rig.stub.DeliverLead(lead_request("sftp-nokey", 8))
    assert (reply.outcome, reply.reason) == (
        ERROR,
        "cannot read private_key_file /nonexistent/key: No such file or directory",
    )


async def test_realtime_mail_carries_the_lead(rig: Rig) -> None:
    reply = await rig.stub.DeliverLead(lead_request("mail-realtime", 3))
    assert (reply.outcome, reply.reason) == (SUCCESS, "")
    (message,) = rig.smtp.messages
    assert message["Subject"] == "Lead Ada3"
    assert message["To"] == "buyer@them.example"
    assert message.get_content().splitlines() == [
        "Lead: lead0003",
        "First Name: Ada3",
        "Phone: 5125551234",
        "Price: 12.50",
    ]
    (attempt,) = reply.attempts
    assert attempt.status_code == 250 and "mail-pass" not in attempt.request


async def test_batch_mail_carries_the_csv_attachment(rig: Rig) -> None:
    for n in (1, 2):
        reply = await rig.stub.DeliverLead(lead_request("mail-batch", n))
        assert reply.outcome == QUEUED
    assert rig.smtp.messages == []
    batch = (await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="mail-batch"))).batch
    assert batch.status == DELIVERED
    (message,) = rig.smtp.messages
    assert message["Subject"].startswith("Leads 2")  # "Leads {{batch.date}}"
    assert message["Message-ID"] == f"<{batch.id}@leadflow>"
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == batch.file_name
    assert attachment.get_content_type() == "text/csv"
    assert [row["Lead"] for row in read_csv(attachment.get_payload(decode=True))] == [
        "lead0001",
        "lead0002",
    ]


async def test_mail_over_the_size_limit_is_refused_with_that_reason(rig: Rig) -> None:
    reply = await rig.stub.DeliverLead(
        lead_request("mail-realtime", 1, first_name="x" * 10_500_000)
    )
    assert reply.outcome == ERROR
    assert reply.reason.startswith("mail of ")
    assert reply.reason.endswith(" bytes is over the 10,485,760-byte limit")
    assert rig.smtp.messages == []


async def test_wrong_smtp_password_fails_fast_with_a_reason(
    rig: Rig, servers: tuple[SftpServer, SmtpServer, str]
) -> None:
    tree = rig.config.model_dump(by_alias=True, exclude_none=True)
    for buyer in tree["buyers"]:
        if buyer["id"] == "mail-realtime":
            buyer["delivery"]["smtp"]["password"] = "nope"
    _, stub = await rig.start(cfg=Config.model_validate(tree))
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await stub.DeliverLead(lead_request("mail-realtime", 1))
    assert reply.outcome == ERROR
    assert reply.reason.startswith("SMTP login refused for 'mailer': 535")
    assert loop.time() - started < 5
    assert "nope" not in reply.attempts[0].request


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_mail_goes_over_starttls_or_tls_with_a_verified_certificate(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, security: str
) -> None:
    context, ca_file = tls_for_loopback(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the client trusts the test's certificate
    secure = SmtpServer(login=("mailer", "mail-pass"), tls=context, implicit_tls=security == "tls")
    await secure.start()
    try:
        tree = rig.config.model_dump(by_alias=True, exclude_none=True)
        for buyer in tree["buyers"]:
            if buyer["id"] == "mail-realtime":
                buyer["delivery"]["smtp"].update(port=secure.port, security=security)
        _, stub = await rig.start(cfg=Config.model_validate(tree))
        reply = await stub.DeliverLead(lead_request("mail-realtime", 5))
    finally:
        await secure.stop()
    assert (reply.outcome, reply.reason) == (SUCCESS, "")
    assert f"({security}) as mailer" in reply.attempts[0].request
    (message,) = secure.messages
    assert message["Subject"] == "Lead Ada5"


async def test_mail_to_a_server_with_an_untrusted_certificate_is_an_error(
    rig: Rig, tmp_path: Path
) -> None:
    context, _ = tls_for_loopback(tmp_path / "tls")
    secure = SmtpServer(login=("mailer", "mail-pass"), tls=context, implicit_tls=True)
    await secure.start()
    try:
        tree = rig.config.model_dump(by_alias=True, exclude_none=True)
        for buyer in tree["buyers"]:
            if buyer["id"] == "mail-realtime":
                buyer["delivery"]["smtp"].update(port=secure.port, security="tls")
        _, stub = await rig.start(cfg=Config.model_validate(tree))
        reply = await stub.DeliverLead(lead_request("mail-realtime", 5))
    finally:
        await secure.stop()
    assert reply.outcome == ERROR
    assert "CERTIFICATE_VERIFY_FAILED" in reply.reason or "certificate" in reply.reason.lower()
    assert secure.messages == []


# --- resend and listing ----------------------------------------------------------------------


async def test_resend_sends_a_copy_of_a_delivered_batch(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-batch", 1))
    first = (await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))).batch
    copy = (await rig.stub.ResendBatch(pb.ResendBatchRequest(batch_id=first.id))).batch
    assert (copy.status, copy.kind, copy.resend_of_batch_id) == (
        DELIVERED,
        pb.BATCH_KIND_RESEND,
        first.id,
    )
    assert list(copy.recipient_event_ids) == ["lead0001-1"]
    assert len(rig.files()) == 2
    assert [row["Lead"] for row in rig.rows()] == ["lead0001", "lead0001"]


async def test_resend_of_a_failed_batch_is_refused(rig: Rig) -> None:
    await rig.stub.DeliverLead(lead_request("sftp-badpass", 1))
    failed = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-badpass"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.ResendBatch(pb.ResendBatchRequest(batch_id=failed.batch.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "queued for the next file" in (caught.value.details() or "")


async def test_unknown_batch_and_non_batch_buyer_are_refused(rig: Rig) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.ResendBatch(pb.ResendBatchRequest(batch_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="http-buyer"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_batches_pages_newest_first(rig: Rig) -> None:
    ids = []
    for n in range(3):
        await rig.stub.DeliverLead(lead_request("sftp-batch", n))
        reply = await rig.stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))
        ids.append(reply.batch.id)
    page = await rig.stub.ListBatches(pb.ListBatchesRequest(buyer_id="sftp-batch", page_size=2))
    assert [b.id for b in page.batches] == ids[::-1][:2] and page.next_page_token
    rest = await rig.stub.ListBatches(
        pb.ListBatchesRequest(buyer_id="sftp-batch", page_size=2, page_token=page.next_page_token)
    )
    assert [b.id for b in rest.batches] == ids[:1] and not rest.next_page_token


# --- restarts, dead replicas and several replicas -----------------------------------------------


async def test_queued_leads_survive_a_restart(rig: Rig) -> None:
    for n in (1, 2):
        await rig.stub.DeliverLead(lead_request("sftp-batch", n))
    # A new server on the same storage (a restarted process) sees the queue and delivers it.
    _, stub = await rig.start()
    reply = await stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))
    assert reply.batch.lead_count == 2
    assert sorted(row["Lead"] for row in rig.rows()) == ["lead0001", "lead0002"]


async def _dead_replica_batch(rig: Rig, leads: int) -> str:
    """A batch as a replica that died mid-send leaves it: leads in it, lease running out."""
    for n in range(1, leads + 1):
        await rig.stub.DeliverLead(lead_request("sftp-batch", n))
    now = datetime.now(UTC)
    opened = await rig.store.open_batch(
        batch_id="deadbeef0001",
        buyer_id="sftp-batch",
        kind="scheduled",
        owner="dead-replica",
        lease_until=now + timedelta(seconds=0.3),
        now=now,
        name_for=lambda _leads: "leads-dead.csv",
    )
    assert opened is not None
    return opened[0].id


async def test_batch_of_a_replica_that_died_mid_send_is_delivered_once(rig: Rig) -> None:
    batch_id = await _dead_replica_batch(rig, 2)
    # Its half-written file is on the server; the lease expires and the batch is taken over.
    (rig.sftp.root / "incoming" / "leads-dead.csv.part").write_bytes(b"Lead,First")
    await rig.store.set_remote_name(batch_id, "dead-replica", "leads-dead.csv")

    async def recovered() -> bool:
        reply = await rig.stub.ListBatches(pb.ListBatchesRequest(buyer_id="sftp-batch"))
        return any(b.id == batch_id and b.status == DELIVERED for b in reply.batches)

    await eventually(recovered)
    assert list(rig.files()) == ["leads-dead.csv"]
    assert sorted(row["Lead"] for row in rig.rows()) == ["lead0001", "lead0002"]
    assert not (rig.sftp.root / "incoming" / "leads-dead.csv.part").exists()


async def test_batch_renamed_before_its_replica_died_is_not_written_twice(rig: Rig) -> None:
    batch_id = await _dead_replica_batch(rig, 1)
    store = rig.store
    batch = await store.get_batch(batch_id)
    assert batch is not None
    leads = await store.batch_leads(batch_id)
    builder = _runner_builder(rig)
    content = builder.build(batch_id, batch.create_time, leads, "leads-dead.csv").content
    (rig.sftp.root / "incoming" / "leads-dead.csv").write_bytes(content)
    await store.set_remote_name(batch_id, "dead-replica", "leads-dead.csv")

    async def recovered() -> bool:
        found = await store.get_batch(batch_id)
        return found is not None and found.status == "delivered"

    await eventually(recovered)
    assert list(rig.files()) == ["leads-dead.csv"]
    done = await store.get_batch(batch_id)
    assert done is not None and "already in place" in done.attempts[-1].response


def _runner_builder(rig: Rig) -> Any:
    from delivery_service.files import FileBuilder

    buyer = rig.config.buyers_by_id["sftp-batch"]
    assert buyer.delivery is not None and buyer.delivery.type == "sftp"
    return FileBuilder(rig.config, buyer, buyer.delivery)


async def test_two_replicas_never_put_a_lead_in_two_files(rig: Rig) -> None:
    _, second = await rig.start()
    stubs = [rig.stub, second]
    total = 120

    async def feed() -> None:
        for n in range(total):
            await stubs[n % 2].DeliverLead(lead_request("sftp-cron", n))
            if n % 10 == 0:
                await asyncio.sleep(0.02)

    async def hammer(stub: pb_grpc.DeliveryServiceStub) -> None:
        for _ in range(15):
            await stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-cron"))
            await asyncio.sleep(0.01)

    # Both schedulers fire every second while both replicas also deliver on demand.
    await asyncio.gather(feed(), hammer(stubs[0]), hammer(stubs[1]))

    async def all_delivered() -> bool:
        return len(rig.rows()) >= total and await pending(rig.stub, "sftp-cron") == 0

    await eventually(all_delivered, within=30)
    ids = [row["Lead"] for row in rig.rows()]
    assert len(rig.files()) > 2  # the replicas really did split the work into several files
    assert len(ids) == total
    assert sorted(ids) == sorted(f"lead{n:04d}" for n in range(total))


# --- outcomes in the ledger ----------------------------------------------------------------


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[str, ledger_grpc.LedgerServiceStub]]:
    store = await LedgerStore.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", "ledger")
    running = await create_ledger(LedgerSettings(host="127.0.0.1", grpc_port=0), LedgerDeps(store))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield f"127.0.0.1:{running.port}", ledger_grpc.LedgerServiceStub(channel)
    finally:
        await running.stop(1)
        await store.close()


def _record_request(request: pb.DeliverLeadRequest) -> ledger_pb.RecordLeadRequest:
    return ledger_pb.RecordLeadRequest(
        lead=request.lead,
        source_event=ledger_pb.SourceEvent(
            outcome=SUCCESS,
            purchase_price=request.purchase_price,
            price_paid=request.purchase_price,
            revenue=to_proto(Decimal(0)),
        ),
        recipient_events=[
            ledger_pb.RecipientEvent(
                id=request.request_id,
                stage_name="one",
                strategy="priority",
                buyer_id=request.buyer_id,
                outcome=QUEUED,
                sale_price=request.sale_price,
            )
        ],
    )


async def test_delivered_file_reports_success_with_the_sale_price_to_the_ledger(
    rig: Rig, ledger: tuple[str, ledger_grpc.LedgerServiceStub]
) -> None:
    address, ledger_stub = ledger
    _, stub = await rig.start(ledger_address=address)
    request = lead_request("sftp-batch", 1)
    await ledger_stub.RecordLead(_record_request(request))
    await stub.DeliverLead(request)
    batch = (await stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))).batch

    async def reported() -> bool:
        reply = await ledger_stub.GetLead(ledger_pb.GetLeadRequest(lead_id="lead0001"))
        return len(reply.delivery_outcomes) == 1

    await eventually(reported)
    reply = await ledger_stub.GetLead(ledger_pb.GetLeadRequest(lead_id="lead0001"))
    (outcome,) = reply.delivery_outcomes
    assert (outcome.recipient_event_id, outcome.outcome, outcome.batch_id) == (
        "lead0001-1",
        SUCCESS,
        batch.id,
    )
    assert from_proto(outcome.sale_price) == Decimal("12.50")
    assert [a.response for a in outcome.attempts] == [a.response for a in batch.attempts]


async def test_outcome_the_ledger_cannot_take_yet_is_kept_and_retried(
    rig: Rig, ledger: tuple[str, ledger_grpc.LedgerServiceStub]
) -> None:
    address, ledger_stub = ledger
    _, stub = await rig.start(ledger_address=address)
    request = lead_request("sftp-batch", 1)
    await stub.DeliverLead(request)
    await stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))

    async def refused_once() -> bool:
        return any(r.tries >= 1 for r in await _unreported(rig))

    # The ledger does not know the lead yet (the gateway records it after distribution).
    await eventually(refused_once)
    await ledger_stub.RecordLead(_record_request(request))

    async def reported() -> bool:
        reply = await ledger_stub.GetLead(ledger_pb.GetLeadRequest(lead_id="lead0001"))
        return len(reply.delivery_outcomes) == 1

    await eventually(reported, within=20)

    async def marked() -> bool:  # the ledger took it; then the outbox row is marked reported
        return await rig.store.unreported_count() == 0

    await eventually(marked)


async def _unreported(rig: Rig) -> list[Any]:
    return await rig.store.unreported()


async def test_an_outcome_the_ledger_refuses_for_good_is_not_retried(
    rig: Rig, ledger: tuple[str, ledger_grpc.LedgerServiceStub]
) -> None:
    address, ledger_stub = ledger
    _, stub = await rig.start(ledger_address=address)
    request = lead_request("sftp-batch", 1)
    # The ledger holds this recipient event as an answered sale, not `queued`: a batch outcome
    # for it is refused (FAILED_PRECONDITION), and asking again cannot change that.
    record = _record_request(request)
    record.recipient_events[0].outcome = SUCCESS
    record.source_event.revenue.CopyFrom(request.sale_price)
    await ledger_stub.RecordLead(record)
    await stub.DeliverLead(request)
    await stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sftp-batch"))

    async def refused() -> bool:
        return any(r.tries >= 1 for r in await _unreported(rig))

    await eventually(refused)
    # Parked for an operator: still unreported (the gauge shows it), and never due again, where
    # a retryable refusal is due again within seconds.
    assert await rig.store.unreported_count() == 1
    far_future = datetime(9000, 1, 1, tzinfo=UTC)
    assert await rig.store.due_reports(far_future, far_future, 10) == []
