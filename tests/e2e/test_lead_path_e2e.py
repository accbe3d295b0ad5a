"""One path for a lead (issue 14): how many gRPC calls the whole suite handles per lead, counted
from every service's `grpc_server_handled_total`, on the bench's production-shaped flow (buyer
and step caps, a duplicate check) and on the same flow without caps and duplicate check.

A lead sold on its first offer makes at most 3 calls (QuotePurchasePrice, DistributeLead,
DeliverLead); each further offer adds at most one. Health checks and the ledger's batched
RecordLeads are left out, as the issue says."""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from bench.run import grpc_calls
from tests.e2e.harness import BuyerServer, Suite, start_suite

pytestmark = pytest.mark.timeout(180)

PRODUCTION = Path(__file__).parents[2] / "bench" / "production.yaml"
SOURCE_KEY = "demo-source-key"  # production.yaml's default
LEFT_OUT = {"LedgerService.RecordLeads"}  # batched: many leads per call


def _respond(_path: str, data: dict[str, Any]) -> dict[str, Any]:
    # Acme's mapping sends `first`; a lead named Decline is declined by Acme (Budget takes it).
    if data.get("first") == "Decline":
        return {"status": "rejected", "message": "Not today"}
    return {"status": "accepted", "id": uuid.uuid4().hex[:8]}


@pytest.fixture(scope="module")
def buyer() -> Iterator[BuyerServer]:
    server = BuyerServer(_respond)
    server.start()
    yield server
    server.stop()


def _config(tmp: Path, buyer: BuyerServer, *, caps: bool) -> Path:
    tree = yaml.safe_load(PRODUCTION.read_text())
    if not caps:
        for buyer_spec in tree["buyers"]:
            buyer_spec.pop("caps", None)
        for flow in tree["flows"]:
            flow.pop("duplicates", None)
            for stage in flow["stages"]:
                for step in stage["steps"]:
                    step.pop("caps", None)
    for buyer_spec in tree["buyers"]:
        buyer_spec["delivery"]["url"] = buyer.url("/leads")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _calls(suite: Suite) -> Counter[str]:
    """The bench's count of handled calls by `Service.Method`, the ledger's batches left out."""
    calls = grpc_calls(suite.port_base)
    for method in LEFT_OUT:
        calls.pop(method, None)
    return calls


def _submit(suite: Suite, n: int, first_name: str) -> None:
    auth = "Basic " + base64.b64encode(f"API:{SOURCE_KEY}".encode()).decode()
    for i in range(n):
        lead = {
            "first_name": first_name,
            "last_name": "Lee",
            "email": f"{uuid.uuid4().hex}@example.com",  # never a duplicate
            "phone_1": f"512555{1000 + i:04d}",
            "state": "TX",
            "postal_code": "78701",
        }
        status, _, body = suite.request(
            "POST",
            "/flows/auto-insurance/sources/quality-leads/submit",
            orjson.dumps(lead),
            {"Content-Type": "application/json", "Authorization": auth},
        )
        assert (status, orjson.loads(body)["outcome"]) == (201, "success"), body


def _per_lead(suite: Suite, n: int, first_name: str) -> tuple[float, Counter[str]]:
    before = _calls(suite)
    _submit(suite, n, first_name)
    delta = _calls(suite) - before
    return sum(delta.values()) / n, delta


@pytest.mark.parametrize("caps", [True, False], ids=["caps-and-duplicates", "no-caps"])
def test_a_lead_sold_on_its_first_offer_makes_three_calls_and_each_further_offer_one(
    buyer: BuyerServer, tmp_path: Path, caps: bool
) -> None:
    suite = start_suite(_config(tmp_path, buyer, caps=caps), tmp_path / "data")
    try:
        first, calls = _per_lead(suite, 20, "Ann")
        assert first <= 3, calls
        assert calls["RoutingService.DistributeLead"] == 20, calls
        assert calls["DeliveryService.DeliverLead"] == 20, calls
        second, calls = _per_lead(suite, 20, "Decline")  # Acme declines, Budget buys
        assert second <= 4, calls
        assert calls["DeliveryService.DeliverLead"] == 40, calls
    finally:
        assert suite.stop() == 0
