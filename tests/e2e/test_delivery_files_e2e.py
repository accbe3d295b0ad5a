"""SFTP and email delivery end to end (issue 5, acceptance 2, 3 and 4): the suite as processes,
a real asyncssh SFTP server and a real aiosmtpd SMTP server on loopback; a killed delivery
service; two delivery replicas on one PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import orjson
import pytest
import yaml

from leadflow.delivery.v1 import delivery_service_pb2 as pb
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from tests.conftest import TEST_DATABASE_URL
from tests.delivery_servers import SftpServer, SmtpServer, ThreadedServers, read_csv
from tests.e2e.harness import Suite, start_suite

pytestmark = pytest.mark.timeout(180)

SOURCE_KEY = "files-source-key"
ADMIN_KEY = "files-admin-key"
NEVER = "0 0 1 1 *"
EVERY_4S = "* * * * * */4"
COLUMNS = {"Lead": "{{lead_id}}", "First Name": "{{first_name}}", "Phone": "{{phone_1}}"}
LEAD = {"first_name": "Ada", "phone_1": "(512) 555-0142", "state": "TX"}


def _sftp(sftp: SftpServer, directory: str, schedule: str, **over: Any) -> dict[str, Any]:
    return {
        "type": "sftp",
        "host": "127.0.0.1",
        "port": sftp.port,
        "username": "leads",
        "password": "s3cret-pass",
        "host_key": sftp.host_key_line,
        "directory": f"/{directory}",
        "schedule": schedule,
        "columns": COLUMNS,
        **over,
    }


def config_text(sftp: SftpServer, smtp: SmtpServer, wrong_key: str, schedule: str) -> str:
    mail = {
        "type": "email",
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "none",
            "username": "mailer",
            "password": "mail-pass",
        },
        "from": "leads@us.example",
        "to": ["buyer@them.example"],
        "columns": COLUMNS,
    }
    deliveries = {
        "sched": _sftp(sftp, "sched", schedule),
        "now": _sftp(sftp, "now", NEVER),
        "badkey": _sftp(sftp, "now", NEVER, host_key=wrong_key),
        "badpass": _sftp(sftp, "now", NEVER, password="wrong-pass"),
        "mailrt": {**mail, "subject": "New lead {{first_name}}"},
        "mailbatch": {**mail, "schedule": NEVER},
    }
    tree = {
        "account": {
            "name": "Files E2E",
            "time_zone": "UTC",
            "admin_api_key": ADMIN_KEY,
            "allow_private_network_delivery": True,
        },
        "sources": [{"id": "vendor", "name": "Vendor", "api_key": SOURCE_KEY}],
        "buyers": [
            {
                "id": buyer_id,
                "name": buyer_id,
                "pricing": {"prices": [{"amount": 9.5}]},
                "delivery": delivery,
            }
            for buyer_id, delivery in deliveries.items()
        ],
        "flows": [
            {
                "id": buyer_id,
                "name": buyer_id,
                "sources": [{"source": "vendor"}],
                "stages": [{"name": "only", "steps": [{"buyer": buyer_id}]}],
            }
            for buyer_id in deliveries
        ],
    }
    return yaml.safe_dump(tree, sort_keys=False)


@dataclass
class Rig:
    suite: Suite
    sftp: SftpServer
    smtp: SmtpServer

    def submit(self, flow: str, **fields: str) -> str:
        status, _, raw = self.suite.request(
            "POST",
            f"/flows/{flow}/sources/vendor/submit",
            orjson.dumps({**LEAD, **fields}),
            {"Content-Type": "application/json"},
            SOURCE_KEY,
        )
        assert status == 201, raw
        body = orjson.loads(raw)
        assert body["outcome"] == "success", body
        lead_id: str = body["lead"]["id"]
        return lead_id

    def admin(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        status, _, raw = self.suite.request(method, path, key=ADMIN_KEY)
        return status, orjson.loads(raw)

    def view(self, lead_id: str) -> dict[str, Any]:
        status, body = self.admin("GET", f"/leads/{lead_id}")
        assert status == 200, body
        return body

    def rows(self, directory: str) -> list[dict[str, str]]:
        return [row for content in self.sftp.files(directory).values() for row in read_csv(content)]


def eventually(check: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _servers(root: Path) -> tuple[ThreadedServers, SftpServer, SmtpServer, str]:
    threads = ThreadedServers()
    sftp = SftpServer(root / "sftp")
    smtp = SmtpServer(login=("mailer", "mail-pass"))
    threads.start(sftp)
    threads.start(smtp)
    for directory in ("sched", "now"):
        (sftp.root / directory).mkdir()
    return threads, sftp, smtp, SftpServer(root / "other").host_key_line


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("files")
    threads, sftp, smtp, wrong_key = _servers(root)
    config = root / "leadflow.yaml"
    config.write_text(config_text(sftp, smtp, wrong_key, EVERY_4S))
    suite = start_suite(config, root / "data")
    try:
        yield Rig(suite, sftp, smtp)
    finally:
        code = suite.stop()
        threads.close()
        assert code == 0, "".join(suite.output)


def _queue(rig: Rig, buyer: str) -> dict[str, Any]:
    status, body = rig.admin("GET", f"/batches?buyer={buyer}")
    assert status == 200, body
    queue: dict[str, Any] = body["queues"][0]
    return queue


def _recipient(rig: Rig, lead_id: str) -> dict[str, Any]:
    (event,) = rig.view(lead_id)["recipient_events"]
    return event  # type: ignore[no-any-return]


def _booked(rig: Rig, lead_id: str) -> bool:
    outcomes = rig.view(lead_id).get("delivery_outcomes", [])
    return any(item.get("outcome") == "success" for item in outcomes)


# --- acceptance 2: SFTP, scheduled and deliver-now ---------------------------------------------


def test_scheduled_batch_leaves_one_csv_of_exactly_the_queued_leads(rig: Rig) -> None:
    # Submit right after a run so that all three leads wait for the same next one.
    queue = _queue(rig, "sched")
    if datetime.fromisoformat(queue["next_run_at"]).timestamp() - time.time() < 2:
        eventually(lambda: _queue(rig, "sched")["next_run_at"] != queue["next_run_at"])
    lead_ids = [rig.submit("sched", first_name=f"Sched{n}") for n in range(3)]
    for lead_id in lead_ids:
        event = _recipient(rig, lead_id)
        assert (event["outcome"], event["sale_price"]) == ("queued", 9.5)
    eventually(lambda: len(rig.rows("sched")) == 3)

    def recorded() -> bool:
        batches = rig.admin("GET", "/batches?buyer=sched")[1]["batches"]
        return bool(batches) and batches[0]["status"] == "delivered"

    eventually(recorded)
    (content,) = rig.sftp.files("sched").values()
    assert content.startswith(b"Lead,First Name,Phone\r\n")
    assert read_csv(content) == [
        {"Lead": lead_id, "First Name": f"Sched{n}", "Phone": "5125550142"}
        for n, lead_id in enumerate(lead_ids)
    ]
    _, body = rig.admin("GET", "/batches?buyer=sched")
    (batch,) = body["batches"]
    assert (batch["status"], batch["kind"], batch["leads"]) == ("delivered", "scheduled", 3)
    eventually(lambda: all(_booked(rig, lead_id) for lead_id in lead_ids))


def test_deliver_now_leaves_one_csv_of_exactly_the_queued_leads(rig: Rig) -> None:
    before = set(rig.sftp.files("now"))
    lead_ids = [rig.submit("now", first_name=f"Now{n}") for n in range(3)]
    assert _queue(rig, "now")["pending_leads"] == 3
    status, body = rig.admin("POST", "/batches/now/deliver")
    assert status == 200, body
    batch = body["batch"]
    assert (batch["status"], batch["kind"], batch["leads"]) == ("delivered", "manual", 3)
    (name,) = set(rig.sftp.files("now")) - before
    assert name == batch["file"]
    assert read_csv(rig.sftp.files("now")[name]) == [
        {"Lead": lead_id, "First Name": f"Now{n}", "Phone": "5125550142"}
        for n, lead_id in enumerate(lead_ids)
    ]
    assert _queue(rig, "now")["pending_leads"] == 0
    eventually(lambda: all(_booked(rig, lead_id) for lead_id in lead_ids))
    event = _recipient(rig, lead_ids[0])
    assert event["outcome"] == "queued"  # the event itself is never rewritten (append-only)


@pytest.mark.parametrize(
    ("buyer", "reason"),
    [
        ("badkey", "SFTP host key of 127.0.0.1 does not match the pinned host_key"),
        ("badpass", "SFTP login refused for user 'leads' on 127.0.0.1 (wrong password or key)"),
    ],
)
def test_wrong_host_key_or_password_is_an_error_and_the_leads_stay_queued(
    rig: Rig, buyer: str, reason: str
) -> None:
    rig.submit(buyer)
    status, body = rig.admin("POST", f"/batches/{buyer}/deliver")
    assert status == 200, body
    assert (body["batch"]["status"], body["batch"]["reason"]) == ("failed", reason)
    assert "wrong-pass" not in orjson.dumps(body).decode()
    queue = _queue(rig, buyer)
    assert queue["pending_leads"] == 1 and queue["failures"] >= 1 and queue["retry_at"]


def test_batch_endpoints_need_the_admin_key(rig: Rig) -> None:
    for method, path in [
        ("GET", "/batches"),
        ("POST", "/batches/now/deliver"),
        ("POST", "/batches/x/resend"),
    ]:
        status, _, _ = rig.suite.request(method, path, key=SOURCE_KEY)
        assert status == 401
    assert rig.admin("POST", "/batches/ghost/deliver")[0] == 404
    assert rig.admin("POST", "/batches/ghost/resend")[0] == 404


def test_resend_delivers_a_copy_of_a_delivered_batch(rig: Rig) -> None:
    lead_id = rig.submit("now", first_name="Again")
    _, body = rig.admin("POST", "/batches/now/deliver")
    original = body["batch"]
    status, body = rig.admin("POST", f"/batches/{original['id']}/resend")
    assert status == 200, body
    copy = body["batch"]
    assert (copy["status"], copy["kind"], copy["resend_of"]) == (
        "delivered",
        "resend",
        original["id"],
    )
    files = rig.sftp.files("now")
    assert [row["Lead"] for row in read_csv(files[copy["file"]])] == [lead_id]
    assert files[copy["file"]] != b"" and copy["file"] != original["file"]


# --- acceptance 3: email -------------------------------------------------------------------


def test_realtime_mail_carries_the_lead(rig: Rig) -> None:
    before = len(rig.smtp.messages)
    lead_id = rig.submit("mailrt", first_name="Mae")
    event = _recipient(rig, lead_id)
    assert event["outcome"] == "success" and event["attempts"][0]["status_code"] == 250
    (message,) = rig.smtp.messages[before:]
    assert message["Subject"] == "New lead Mae"
    assert message.get_content().splitlines() == [
        f"Lead: {lead_id}",
        "First Name: Mae",
        "Phone: 5125550142",
    ]
    assert "mail-pass" not in event["attempts"][0]["request"]


def test_batch_mail_carries_the_csv_attachment(rig: Rig) -> None:
    before = len(rig.smtp.messages)
    lead_ids = [rig.submit("mailbatch", first_name=f"M{n}") for n in range(2)]
    assert len(rig.smtp.messages) == before
    _, body = rig.admin("POST", "/batches/mailbatch/deliver")
    assert body["batch"]["status"] == "delivered"
    (message,) = rig.smtp.messages[before:]
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == body["batch"]["file"]
    assert [row["Lead"] for row in read_csv(attachment.get_payload(decode=True))] == lead_ids


# --- acceptance 4: a killed delivery service -------------------------------------------------


def _child_pid(supervisor: int, module: str) -> int:
    children: list[int] = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(pid) for pid in text)
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if module.encode() in cmdline:
            return pid
    raise AssertionError(f"no {module} child of {supervisor}")


def test_queued_leads_survive_a_killed_delivery_service_and_go_out_once(rig: Rig) -> None:
    before = set(rig.sftp.files("now"))
    lead_ids = [rig.submit("now", first_name=f"Kill{n}") for n in range(5)]
    victim = _child_pid(rig.suite.process.pid, "delivery_service")
    os.kill(victim, signal.SIGKILL)  # a process this test's suite started
    # The supervisor starts it again; the gateway is healthy once it answers.
    eventually(lambda: _child_pid_or_none(rig, victim) is not None, within=60)
    eventually(lambda: rig.suite.request("GET", "/healthz")[0] == 200, within=60)
    status, body = rig.admin("POST", "/batches/now/deliver")
    assert status == 200, body
    assert body["batch"]["leads"] == 5
    new = set(rig.sftp.files("now")) - before
    rows = [row["Lead"] for name in new for row in read_csv(rig.sftp.files("now")[name])]
    assert rows == lead_ids
    eventually(lambda: all(_booked(rig, lead_id) for lead_id in lead_ids))


def _child_pid_or_none(rig: Rig, dead: int) -> int | None:
    try:
        pid = _child_pid(rig.suite.process.pid, "delivery_service")
    except (AssertionError, FileNotFoundError):
        return None
    return pid if pid != dead else None


# --- acceptance 4: two replicas on one PostgreSQL ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _admin_dsn() -> str:
    return TEST_DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://")


async def _database(statement: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _delivered_count(url: str, buyer: str) -> float:
    """leadflow_deliveries_total{buyer, outcome="success"} from a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if (
                line.startswith("leadflow_deliveries_total{")
                and f'buyer="{buyer}"' in line
                and 'outcome="success"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.postgres
def test_two_delivery_replicas_on_one_postgresql_put_each_lead_in_one_file(
    tmp_path: Path,
) -> None:
    database = f"leadflow_e2e_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_database(f'CREATE DATABASE "{database}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {TEST_DATABASE_URL} is needed: {exc}", pytrace=False)
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + "/" + database
    threads, sftp, smtp, wrong_key = _servers(tmp_path)
    config = tmp_path / "leadflow.yaml"
    config.write_text(config_text(sftp, smtp, wrong_key, "* * * * * *"))
    suite = None
    second: subprocess.Popen[bytes] | None = None
    log = tmp_path / "delivery2.log"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LEADFLOW_DATABASE_URL", url)
            suite = start_suite(config, tmp_path / "data")
        grpc_port, metrics_port = _free_port(), _free_port()
        env = {
            **os.environ,
            "LEADFLOW_CONFIG": str(config),
            "LEADFLOW_DATA_DIR": str(tmp_path / "data"),
            "LEADFLOW_DATABASE_URL": url,
            "LEADFLOW_HOST": "127.0.0.1",
            "LEADFLOW_GRPC_PORT": str(grpc_port),
            "LEADFLOW_METRICS_PORT": str(metrics_port),
            "LEADFLOW_LEDGER_ADDR": f"127.0.0.1:{suite.port_base + 4}",
            "LEADFLOW_LOG_LEVEL": "WARNING",
        }
        with log.open("wb") as out:
            second = subprocess.Popen(
                [sys.executable, "-m", "delivery_service"], env=env, stdout=out, stderr=out
            )
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.DeliveryServiceStub(channel)
        rig = Rig(suite, sftp, smtp)
        total = 60
        stop = threading.Event()

        def hammer() -> None:
            # Deliver-now on both replicas while both schedulers fire every second.
            while not stop.is_set():
                stub.DeliverPending(pb.DeliverPendingRequest(buyer_id="sched"), timeout=60)
                rig.admin("POST", "/batches/sched/deliver")

        with ThreadPoolExecutor(6) as pool:
            hammering = pool.submit(hammer)
            lead_ids = list(
                pool.map(lambda n: rig.submit("sched", first_name=f"R{n}"), range(total))
            )
            stop.set()
            hammering.result()
        eventually(lambda: len(rig.rows("sched")) >= total, within=60)
        eventually(lambda: _queue(rig, "sched")["pending_leads"] == 0, within=60)
        delivered = [row["Lead"] for row in rig.rows("sched")]
        assert sorted(delivered) == sorted(lead_ids)  # every lead, none twice
        assert len(sftp.files("sched")) > 1
        pages = [f"http://127.0.0.1:{suite.port_base + 13}/metrics"]
        pages.append(f"http://127.0.0.1:{metrics_port}/metrics")
        eventually(lambda: sum(_delivered_count(page, "sched") for page in pages) == total)
        first, other = (_delivered_count(page, "sched") for page in pages)
        assert first > 0 and other > 0, (first, other)  # both replicas sent files
        channel.close()
    finally:
        if second is not None:
            second.terminate()
            try:
                second.wait(timeout=20)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait()
        if suite is not None:
            suite.stop()
        threads.close()
        asyncio.run(_database(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
