"""Batch files: CSV rows and columns, file names, zip, real-time mail bodies, schedules, backoff."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from delivery_service.batches import Backoff, is_batch_buyer, next_run
from delivery_service.files import (
    FileBuilder,
    QueuedLead,
    batch_variables,
    candidate_name,
    csv_bytes,
    zip_bytes,
)
from leadflow.config import Config, parse_config
from leadflow.fields import parse_lead
from leadflow.wire import LeadData
from tests.delivery_servers import read_csv

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIRy/aZ7RvxsaEgGdUwwgat8KNExTUPZkjXa7G144vRf"
WHEN = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def _config(delivery: str) -> Config:
    return parse_config(
        f"""
account: {{name: T, time_zone: America/Chicago}}
sources: [{{id: vendor, name: Vendor, api_key: k}}]
buyers:
  - id: files
    name: Files Inc
    time_zone: America/New_York
    delivery: {delivery}
flows:
  - id: auto
    name: Auto
    sources: [{{source: vendor}}]
    stages: [{{name: one, steps: [{{buyer: files}}]}}]
""",
        env={},
    )


def _builder(extra: str = "") -> FileBuilder:
    config = _config(
        f'{{type: sftp, host: files.example, password: p, host_key: "{HOST_KEY}", '
        f'schedule: "0 * * * *"{extra}}}'
    )
    buyer = config.buyers_by_id["files"]
    assert buyer.delivery is not None and buyer.delivery.type == "sftp"
    return FileBuilder(config, buyer, buyer.delivery)


def _queued(n: int, **fields: str) -> QueuedLead:
    lead = LeadData(
        id=f"lead-{n}",
        flow_id="auto",
        source_id="vendor",
        fields=parse_lead({"first_name": f"Ada{n}", "phone_1": "(512) 555-1234", **fields}),
        submit_time=WHEN,
    )
    return QueuedLead(f"lead-{n}-1", "files", lead, Decimal("12.50"), Decimal("4.00"))


def test_configured_columns_are_the_header_and_each_lead_is_one_row() -> None:
    builder = _builder(
        ', columns: {"First Name": "{{lead.first_name}}", Phone: "{{phone_1}}", '
        'Price: "{{sale_price}}", Batch: "{{batch.id}}"}'
    )
    file = builder.build("b1", WHEN, [_queued(1), _queued(2)])
    assert read_csv(file.content) == [
        {"First Name": "Ada1", "Phone": "5125551234", "Price": "12.50", "Batch": "b1"},
        {"First Name": "Ada2", "Phone": "5125551234", "Price": "12.50", "Batch": "b1"},
    ]
    assert file.content.startswith(b"First Name,Phone,Price,Batch\r\n")


def test_without_columns_the_file_has_the_lead_id_and_every_field_seen() -> None:
    file = _builder().build("b1", WHEN, [_queued(1), _queued(2, state="Texas")])
    rows = read_csv(file.content)
    assert list(rows[0]) == ["lead_id", "first_name", "phone_1", "state"]
    assert rows[0] == {
        "lead_id": "lead-1",
        "first_name": "Ada1",
        "phone_1": "5125551234",
        "state": "",
    }
    assert rows[1]["state"] == "TX"


def test_values_with_commas_quotes_and_newlines_are_quoted() -> None:
    file = _builder(', columns: {Note: "{{comments}}"}').build(
        "b1", WHEN, [_queued(1, comments='a, "b"\nc')]
    )
    assert read_csv(file.content) == [{"Note": 'a, "b"\nc'}]


def test_file_name_uses_batch_timestamp_in_the_buyers_zone() -> None:
    # 15:09:26 UTC is 11:09:26 in New York (EDT on 14 March 2026).
    assert _builder().name_for("b1", WHEN, [_queued(1), _queued(2)]) == (
        "leads-20260314T110926.csv"
    )


def test_lead_values_cannot_add_directories_to_a_file_name() -> None:
    builder = _builder(', filename: "lead-{{lead.first_name}}.csv"')
    assert builder.name_for("b1", WHEN, [_queued(1, first_name="../../etc/x")]) == (
        "lead-.._.._etc_x.csv"
    )


def test_zip_holds_the_csv_and_is_the_same_bytes_every_time() -> None:
    builder = _builder(", zip: true")
    first = builder.build("b1", WHEN, [_queued(1)])
    again = builder.build("b1", WHEN, [_queued(1)])
    assert first.name == "leads-20260314T110926.csv.zip"
    assert first.content == again.content
    with zipfile.ZipFile(io.BytesIO(first.content)) as archive:
        assert archive.namelist() == ["leads-20260314T110926.csv"]
        assert read_csv(archive.read("leads-20260314T110926.csv"))[0]["first_name"] == "Ada1"


def test_realtime_mail_body_lists_the_fields() -> None:
    config = _config(
        "{type: email, smtp: {host: smtp.example}, to: [buyer@example.com], "
        'columns: {Name: "{{first_name}}", Phone: "{{phone_1}}"}}'
    )
    buyer = config.buyers_by_id["files"]
    assert buyer.delivery is not None and buyer.delivery.type == "email"
    file = FileBuilder(config, buyer, buyer.delivery).build(
        "e1", WHEN, [_queued(1)], realtime_mail=True
    )
    assert file.body_text == "Name: Ada1\nPhone: 5125551234\n"


def test_taken_names_get_a_counter_before_the_extension() -> None:
    assert [candidate_name("leads.csv.zip", i) for i in (1, 2, 3)] == [
        "leads.csv.zip",
        "leads-2.csv.zip",
        "leads-3.csv.zip",
    ]
    assert candidate_name("leads", 2) == "leads-2"


def test_batch_variables() -> None:
    assert batch_variables("b9", WHEN, "America/Chicago", 3) == {
        "id": "b9",
        "timestamp": "20260314T100926",
        "date": "2026-03-14",
        "time": "10:09:26",
        "count": 3,
    }


def test_csv_uses_crlf_line_ends() -> None:
    assert csv_bytes(["a", "b"], [["1", "2"]]) == b"a,b\r\n1,2\r\n"


def test_zip_of_empty_content_is_valid() -> None:
    with zipfile.ZipFile(io.BytesIO(zip_bytes("x.csv", b"", WHEN))) as archive:
        assert archive.read("x.csv") == b""


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        # Every hour on the hour, read in Chicago.
        ("0 * * * *", _utc(2026, 3, 14, 15, 9), _utc(2026, 3, 14, 16, 0)),
        # 09:00 Chicago on weekdays: Saturday 14 March -> Monday 16 March, 14:00 UTC (CDT).
        ("0 9 * * 1-5", _utc(2026, 3, 14, 15, 9), _utc(2026, 3, 16, 14, 0)),
        # Daylight saving starts on 8 March: 08:30 that day is 13:30 UTC, the day before 14:30.
        ("30 8 * * *", _utc(2026, 3, 7, 15, 0), _utc(2026, 3, 8, 13, 30)),
        # A sixth field is seconds.
        ("* * * * * */10", _utc(2026, 3, 14, 15, 9, 1), _utc(2026, 3, 14, 15, 9, 10)),
    ],
)
def test_next_run_reads_the_cron_in_the_zone(
    schedule: str, after: datetime, expected: datetime
) -> None:
    assert next_run(schedule, "America/Chicago", after) == expected


def test_backoff_doubles_and_is_capped() -> None:
    backoff = Backoff(base_seconds=30, max_seconds=100)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [
        timedelta(seconds=30),
        timedelta(seconds=60),
        timedelta(seconds=100),
        timedelta(seconds=100),
    ]


def test_a_cron_schedule_makes_a_batch_buyer_and_realtime_does_not() -> None:
    assert is_batch_buyer(_builder().buyer)
    realtime = _config(f'{{type: sftp, host: h, password: p, host_key: "{HOST_KEY}"}}')
    assert not is_batch_buyer(realtime.buyers_by_id["files"])


@pytest.mark.parametrize("columns", [None, '{"Name": "{{lead.first_name}}", "Notes": "{{notes}}"}'])
def test_batch_files_neutralise_formulas_and_keep_numbers(columns: str | None) -> None:
    builder = _builder("" if columns is None else f", columns: {columns}")
    lead = _queued(
        1,
        first_name='=HYPERLINK("http://evil.example/","x")',
        notes="\t@SUM(1+1)*cmd|' /C calc'!A0",
        phone_1="+15125550142",
        when="2024-01-05",
        amount="-3.5",
    )
    content = builder.build("b1", WHEN, [lead]).content
    [row] = read_csv(content)
    name = row.get("first_name", row.get("Name"))
    notes = row.get("notes", row.get("Notes"))
    assert name == '\'=HYPERLINK("http://evil.example/","x")'
    assert (
        notes is not None and notes.startswith("'") and notes.lstrip("'").lstrip().startswith("@")
    )
    if columns is None:
        assert (row["when"], row["amount"]) == ("2024-01-05", "-3.5")
        assert b",2024-01-05," in content and b",-3.5" in content
