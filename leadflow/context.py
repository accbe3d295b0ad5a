"""The variables a rule, price or template sees for one lead (SPEC section 4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from leadflow.config import Buyer, Config
from leadflow.variables import build_context
from leadflow.wire import LeadData

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def submission_vars(lead: LeadData, time_zone: str) -> dict[str, Any]:
    """`submission.timestamp`, `.hour` and `.day_of_week`, in the flow's zone."""
    local = lead.submit_time.astimezone(ZoneInfo(time_zone))
    return {
        "timestamp": local.isoformat(),
        "hour": local.hour,
        "day_of_week": _DAYS[local.weekday()],
    }


def lead_context(
    config: Config,
    lead: LeadData,
    *,
    buyer: Buyer | None = None,
    purchase_price: Decimal | None = None,
    sale_price: Decimal | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    flow = config.flows_by_id[lead.flow_id]
    source = config.sources_by_id[lead.source_id]
    return build_context(
        lead.fields,
        flow={"id": flow.id, "name": flow.name},
        source={"id": source.id, "name": source.name},
        buyer={"id": buyer.id, "name": buyer.name} if buyer is not None else None,
        purchase_price=purchase_price,
        sale_price=sale_price,
        submission=submission_vars(lead, config.flow_time_zone(flow)),
        # `{{lead_id}}` everywhere (mappings, mails, files): buyers quote it in their feedback.
        extra={"lead_id": lead.id, **(extra or {})},
    )
