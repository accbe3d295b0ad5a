"""The ledger's record rules: what a lead's record must satisfy before it is posted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from leadflow.config import parse_config
from leadflow.wire import PriceAudit
from ledger_service import metrics
from ledger_service.ledger import (
    InvalidRecord,
    Lead,
    LeadRecord,
    RecipientEvent,
    SourceEvent,
    check_id,
    check_record,
    expected_revenue,
)


def _recipient(event_id: str, outcome: str, sale_price: str) -> RecipientEvent:
    price = Decimal(sale_price)
    return RecipientEvent(
        id=event_id,
        stage_index=0,
        stage_name="exclusive",
        strategy="priority",
        step_index=0,
        buyer_id="buyer_one",
        outcome=outcome,
        reason="",
        sale_price=price,
        price_audit=PriceAudit(layer="buyer_rules", amount=price, rule_index=0),
        reference="",
        attempts=(),
        duration_ms=10,
    )


def _record() -> LeadRecord:
    return LeadRecord(
        lead=Lead(
            id="01JLEAD",
            flow_id="solar",
            source_id="acme",
            fields_json='{"zip": {"raw": "60601"}}',
            submit_time=datetime(2026, 1, 2, tzinfo=UTC),
        ),
        source_event=SourceEvent(
            outcome="success",
            reason="",
            purchase_price=Decimal("12.50"),
            price_paid=Decimal("12.50"),
            price_audit=PriceAudit(layer="source_rules", amount=Decimal("12.50"), rule_index=1),
            revenue=Decimal("10.00"),
            duration_ms=100,
        ),
        recipient_events=(
            _recipient("e1", "success", "7.00"),
            _recipient("e2", "failure", "4.00"),
            _recipient("e3", "success", "3.00"),
            _recipient("e4", "skip", "0"),
        ),
    )


def _with_source(**changes: object) -> Callable[[LeadRecord], LeadRecord]:
    return lambda record: replace(record, source_event=replace(record.source_event, **changes))


def _with_lead(**changes: object) -> Callable[[LeadRecord], LeadRecord]:
    return lambda record: replace(record, lead=replace(record.lead, **changes))


def _with_recipient(index: int, **changes: object) -> Callable[[LeadRecord], LeadRecord]:
    def change(record: LeadRecord) -> LeadRecord:
        events = list(record.recipient_events)
        events[index] = replace(events[index], **changes)
        return replace(record, recipient_events=tuple(events))

    return change


def test_complete_consistent_record_is_accepted() -> None:
    check_record(_record())


def test_failed_lead_that_pays_nothing_is_accepted() -> None:
    record = _with_source(outcome="failure", reason="Duplicate", price_paid=Decimal("0"))(_record())

    check_record(record)


def test_revenue_counts_only_successful_sales() -> None:
    assert expected_revenue(_record().recipient_events) == Decimal("10.00")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_with_lead(id=""), "lead.id"),
        (_with_lead(id="has space"), "lead.id"),
        (_with_lead(id="x" * 129), "lead.id"),
        (_with_lead(flow_id=""), "lead.flow_id"),
        (_with_lead(source_id=""), "lead.source_id"),
        (_with_lead(fields_json="{not json"), "lead.fields_json"),
        (_with_lead(fields_json="[1, 2]"), "lead.fields_json"),
        (lambda record: replace(record, currency="usd"), "currency_code"),
        (_with_source(outcome="skip"), "source_event.outcome"),
        (_with_source(reason="bad\x00byte"), "source_event.reason"),
        (_with_source(price_paid=Decimal("12.49")), "source_event.price_paid"),
        (_with_source(outcome="failure"), "source_event.price_paid"),
        (_with_source(revenue=Decimal("14.00")), "source_event.revenue"),
        (
            _with_source(purchase_price=Decimal("-1"), price_paid=Decimal("-1")),
            "source_event.purchase_price",
        ),
        (
            _with_source(purchase_price=Decimal("1e13"), price_paid=Decimal("1e13")),
            "source_event.purchase_price",
        ),
        (_with_recipient(1, id=""), "recipient_events[1].id"),
        (_with_recipient(1, id="e1"), "recipient_events[1].id"),
        (_with_recipient(2, buyer_id=""), "recipient_events[2].buyer_id"),
        (_with_recipient(0, outcome="maybe"), "recipient_events[0].outcome"),
        (_with_recipient(0, stage_index=-1), "recipient_events[0].stage_index"),
        (_with_recipient(0, step_index=-1), "recipient_events[0].step_index"),
        (_with_recipient(3, reference="\x00"), "recipient_events[3].reference"),
        (_with_recipient(1, sale_price=Decimal("-4.00")), "recipient_events[1].sale_price"),
    ],
)
def test_record_breaking_a_rule_is_refused_naming_the_field(
    change: Callable[[LeadRecord], LeadRecord], field: str
) -> None:
    with pytest.raises(InvalidRecord) as refused:
        check_record(change(_record()))

    assert refused.value.field == field


def test_lead_id_may_be_any_printable_ascii_up_to_128_characters() -> None:
    check_id("lead_id", "01HZX-lead_id.~" + "x" * 113)


def test_money_counters_start_at_zero_for_every_series_the_configuration_can_produce() -> None:
    config = parse_config(
        """
account: {name: Zero, admin_api_key: admin-key-0}
sources: [{id: zs1, name: S, api_key: source-key-0}]
buyers:
  - {id: zb1, name: B1, delivery: {type: http, url: "https://b1.example/leads"}}
  - {id: zb2, name: B2, delivery: {type: http, url: "https://b2.example/leads"}}
flows:
  - id: zf1
    name: F
    sources: [{source: zs1}]
    stages: [{name: only, steps: [{buyer: zb1}]}]
""",
        {},
    )

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("leadflow_sale_revenue_dollars_total", flow="zf1", buyer="zb1") is None
    metrics.start_at_zero(config)
    assert value("leadflow_sale_revenue_dollars_total", flow="zf1", buyer="zb1") == 0
    assert value("leadflow_purchase_cost_dollars_total", flow="zf1", source="zs1") == 0
    for kind in ("credit", "chargeback"):
        labels = {"flow": "zf1", "source": "zs1", "buyer": "zb1", "kind": kind}
        assert value("leadflow_returns_dollars_total", **labels) == 0
    assert value("leadflow_return_credits_dollars_total", buyer="zb2") == 0
    # Only what the flows can produce: zb2 is in no flow, so it sells nothing in zf1.
    assert value("leadflow_sale_revenue_dollars_total", flow="zf1", buyer="zb2") is None
