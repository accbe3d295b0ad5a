"""The gateway's per-lead shortcuts answer exactly as the general code they stand in for."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gateway import metrics
from gateway.clients import record_leads_request
from leadflow.common.v1 import lead_pb2
from leadflow.ledger.v1 import ledger_service_pb2 as pb


def _record(lead_id: str, size: int) -> pb.RecordLeadRequest:
    lead = lead_pb2.Lead(id=lead_id, flow_id="f", source_id="s")
    lead.fields.add(name="comments").value.text = "x" * size
    return pb.RecordLeadRequest(lead=lead, source_event=pb.SourceEvent(reason="r"))


def test_serialized_records_make_the_record_leads_request_protobuf_makes() -> None:
    # Lengths of one, two and three varint bytes, and no record at all.
    for sizes in ([], [0], [10, 200], [20_000, 5, 130]):
        records = [_record(f"L{i}", size) for i, size in enumerate(sizes)]
        encoded = record_leads_request([r.SerializeToString() for r in records])
        assert encoded == pb.RecordLeadsRequest(records=records).SerializeToString()
        assert pb.RecordLeadsRequest.FromString(encoded) == pb.RecordLeadsRequest(records=records)


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_lead_is_counted_under_its_own_labels() -> None:
    labels = {"flow": "hot-path", "source": "vendor", "outcome": "success"}
    failed = {**labels, "outcome": "failure"}
    before = _sample("leadflow_leads_total", labels)
    metrics.observe_lead("hot-path", "vendor", "success", 0.02)
    metrics.observe_lead("hot-path", "vendor", "success", 0.5)
    metrics.observe_lead("hot-path", "vendor", "failure", 0.01)
    assert _sample("leadflow_leads_total", labels) == before + 2
    assert _sample("leadflow_leads_total", failed) == 1
    duration = {"flow": "hot-path"}
    assert _sample("leadflow_lead_duration_seconds_count", duration) == 3
    assert _sample("leadflow_lead_duration_seconds_bucket", {**duration, "le": "0.025"}) == 2
