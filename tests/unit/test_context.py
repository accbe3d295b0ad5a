"""The variables every rule and template sees for a lead."""

from __future__ import annotations

from datetime import UTC, datetime

from leadflow.config import parse_config
from leadflow.context import lead_context
from leadflow.fields import parse_lead
from leadflow.templates import compile_template
from leadflow.wire import LeadData

CONFIG = """
account: {name: Test}
sources: [{id: vendor, name: Vendor, api_key: k}]
buyers: [{id: acme, name: Acme, delivery: {type: http, url: "http://127.0.0.1:9/"}}]
flows:
  - id: auto
    name: Auto
    sources: [{source: vendor}]
    stages: [{name: main, steps: [{buyer: acme}]}]
"""


def test_a_real_time_mapping_can_send_the_lead_id_for_feedback() -> None:
    config = parse_config(CONFIG, {})
    lead = LeadData("0192abc", "auto", "vendor", parse_lead({"state": "CA"}), datetime.now(UTC))
    context = lead_context(config, lead)
    assert compile_template("{{lead_id}}/{{lead.state}}").render(context) == "0192abc/CA"
