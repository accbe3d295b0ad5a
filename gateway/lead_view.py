"""`GET /leads/{id}`: a recorded lead as operators read it (SPEC 5.4)."""

from __future__ import annotations

from typing import Any

from gateway.feedback_api import ledger_sections
from leadflow.common.v1 import lead_pb2
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.wire import LeadData, PriceAudit, from_proto, outcome_from_proto


def _audit(message: lead_pb2.PriceAudit) -> dict[str, Any]:
    return PriceAudit.from_proto(message).to_json()


def attempt_json(attempt: lead_pb2.DeliveryAttempt) -> dict[str, Any]:
    """One exchange with a buyer as operators read it, on a lead's recipient event and on a
    batch alike (OpenAPI `Attempt`)."""
    return {
        "number": attempt.number,
        "request": attempt.request,
        "response": attempt.response,
        "status_code": attempt.status_code or None,
        "ms": attempt.duration_ms,
        "error": attempt.error or None,
        # cookie_search_term and capture values kept from this answer (SPEC 8.1).
        "captured": dict(attempt.captured) or None,
    }


def lead_view(reply: ledger_service_pb2.GetLeadResponse) -> dict[str, Any]:
    lead = LeadData.from_proto(reply.lead)
    source = reply.source_event
    return {
        "lead": {
            "id": lead.id,
            "flow_id": lead.flow_id,
            "source_id": lead.source_id,
            "submit_time": lead.submit_time.isoformat(),
            "fields": lead.fields,
        },
        "source_event": {
            "outcome": outcome_from_proto(source.outcome),
            "reason": source.reason or None,
            "purchase_price": from_proto(source.purchase_price),
            "price_paid": from_proto(source.price_paid),
            "revenue": from_proto(source.revenue),
            "pricing": _audit(source.price_audit),
            "ms": source.duration_ms,
        },
        "recipient_events": [
            {
                "id": event.id,
                "stage": event.stage_name,
                "stage_index": event.stage_index,
                "strategy": event.strategy,
                "step_index": event.step_index,
                "buyer_id": event.buyer_id,
                "outcome": outcome_from_proto(event.outcome),
                "reason": event.reason or None,
                "sale_price": from_proto(event.sale_price),
                "pricing": _audit(event.price_audit),
                "reference": event.reference or None,
                "attempts": [attempt_json(attempt) for attempt in event.attempts],
                "ms": event.duration_ms,
            }
            for event in reply.recipient_events
        ],
        **ledger_sections(reply),
    }
