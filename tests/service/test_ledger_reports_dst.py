"""Reports in any time zone (issue 6, acceptance 2): a month that straddles a daylight-saving
change, reported in two zones, puts each lead in the right day and month. Through the ledger's
real gRPC server and the report code the gateway and `leadflow report` share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from leadflow import reports
from leadflow.config import parse_config
from leadflow.kit import ServiceSettings, stop_server
from leadflow.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from ledger_service.config import Settings
from ledger_service.server import create_server
from ledger_service.store import LedgerStore
from tests.service.helpers_ledger import sold_lead

if TYPE_CHECKING:
    from conftest import Database

CONFIG = parse_config(
    """
account: {name: DST, time_zone: America/Chicago}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers: [{id: acme, name: Acme, delivery: {type: http, url: "http://127.0.0.1:9/"}}]
flows:
  - id: auto
    name: Auto
    sources: [{source: vendor}]
    stages: [{name: s, steps: [{buyer: acme}]}]
"""
)

# Chicago springs forward on 2026-03-08 (02:00 CST -> 03:00 CDT, at 08:00Z); London on 2026-03-29
# (01:00 GMT -> 02:00 BST, at 01:00Z). Each lead's local day is written out by hand, not computed,
# and each sits where a fixed offset (the zone's winter one) would put it on the wrong day.
LEADS = {
    "a": (datetime(2026, 3, 1, 5, 30, tzinfo=UTC), date(2026, 2, 28), date(2026, 3, 1)),
    "b": (datetime(2026, 3, 8, 6, 30, tzinfo=UTC), date(2026, 3, 8), date(2026, 3, 8)),
    "c": (datetime(2026, 3, 9, 5, 30, tzinfo=UTC), date(2026, 3, 9), date(2026, 3, 9)),
    "d": (datetime(2026, 3, 28, 23, 30, tzinfo=UTC), date(2026, 3, 28), date(2026, 3, 28)),
    "e": (datetime(2026, 3, 29, 23, 30, tzinfo=UTC), date(2026, 3, 29), date(2026, 3, 30)),
    "f": (datetime(2026, 3, 31, 23, 30, tzinfo=UTC), date(2026, 3, 31), date(2026, 4, 1)),
    "g": (datetime(2026, 4, 1, 5, 30, tzinfo=UTC), date(2026, 4, 1), date(2026, 4, 1)),
}
ZONES = {"America/Chicago": 1, "Europe/London": 2}  # index into LEADS' tuples
PRICES = {name: f"{n + 1}.00" for n, name in enumerate(sorted(LEADS))}


@pytest.fixture
async def ledger(database: Database) -> AsyncIterator[Any]:
    store = await LedgerStore.open(database.url, database.schema)
    for name, (at, _, _) in LEADS.items():
        await store.record(sold_lead(name, price=PRICES[name], sale="20.00", at=at))
    service = ServiceSettings("", "", database.url, "127.0.0.1", 0, None)
    server, port, health = await create_server(Settings(service, database.schema), store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.LedgerServiceStub(channel)
    finally:
        await stop_server(server, health, grace=1)
        await store.close()


async def report(ledger: Any, kind: str, start: date, end: date, zone: str) -> reports.Report:
    query = reports.parse_query(
        kind, start.isoformat(), end.isoformat(), zone, None, CONFIG.account.time_zone
    )
    method = {"vendors": ledger.GetVendorReport, "buyers": ledger.GetBuyerReport}[kind]
    reply = await method(reports.ledger_request(query), timeout=10)
    return reports.from_reply(query, reply, CONFIG)


def expected(zone: str, start: date, end: date) -> list[str]:
    return sorted(name for name, item in LEADS.items() if start <= item[ZONES[zone]] < end)


@pytest.mark.parametrize("zone", sorted(ZONES))
async def test_each_lead_is_in_its_local_day(ledger: Any, zone: str) -> None:
    day = date(2026, 2, 27)
    while day < date(2026, 4, 3):
        got = await report(ledger, "vendors", day, day + timedelta(days=1), zone)
        names = expected(zone, day, day + timedelta(days=1))
        assert got.rows[0]["leads"] == len(names), (zone, day)
        assert got.rows[0]["purchase_total"] == sum(int(PRICES[n][0]) for n in names), (zone, day)
        day += timedelta(days=1)


@pytest.mark.parametrize(
    ("zone", "march"),
    [("America/Chicago", ["b", "c", "d", "e", "f"]), ("Europe/London", ["a", "b", "c", "d", "e"])],
)
async def test_march_holds_the_leads_of_its_local_month(
    ledger: Any, zone: str, march: list[str]
) -> None:
    vendors = await report(ledger, "vendors", date(2026, 3, 1), date(2026, 4, 1), zone)
    buyers = await report(ledger, "buyers", date(2026, 3, 1), date(2026, 4, 1), zone)

    assert expected(zone, date(2026, 3, 1), date(2026, 4, 1)) == march
    assert vendors.totals["leads"] == len(march)
    assert vendors.totals["purchase_total"] == sum(int(PRICES[n][0]) for n in march)
    assert buyers.totals["sold"] == len(march)
    assert buyers.totals["sales_total"] == 20 * len(march)


async def test_default_zone_is_the_accounts(ledger: Any) -> None:
    query = reports.parse_query(
        "vendors", "2026-03-01", "2026-04-01", None, None, "America/Chicago"
    )
    reply = await ledger.GetVendorReport(reports.ledger_request(query), timeout=10)

    assert query.time_zone == "America/Chicago"
    assert reports.vendor_lines(reply)[0].leads == 5
