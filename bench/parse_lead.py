"""Parsing one typical lead (16 fields of every common type), and evaluating a fifty-rule set
against it: microseconds each, median of 7 runs.

    .venv/bin/python -m bench.parse_lead

Issue 15 keeps this within 10 % of what it was before LeadConduit's types were matched; compare
a checkout of the older commit by running this file with that checkout first on PYTHONPATH.
"""

from __future__ import annotations

import statistics
import time
from datetime import date

from leadflow.fields import parse_lead
from leadflow.rules import compile_rule_set
from leadflow.variables import build_context

LEAD = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "Ada.Lovelace@Example.com",
    "phone_1": "(512) 555-0142",
    "phone_2": "512.555.0143 x12",
    "address_1": "4203 Guadalupe St",
    "city": "Austin",
    "state": "Texas",
    "postal_code": "78751-4224",
    "dob": "1985-06-02",
    "gender": "F",
    "ip_address": "8.8.8.8",
    "comments": "Call after 5pm",
    "trustedform_cert_url": "https://cert.trustedform.com/eb9fc4dd9bed9ad451a5648946cf4bf09b5bb947",
    "loan_amount": "$250,000",
    "credit_score": "700-749",
}
CUSTOM = {"loan_amount": "number", "credit_score": "range"}
LEADS_PER_RUN = 2000


def main() -> None:
    today = date(2026, 12, 3)
    for _ in range(300):
        parse_lead(LEAD, CUSTOM, today=today)
    runs = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(LEADS_PER_RUN):
            parse_lead(LEAD, CUSTOM, today=today)
        runs.append((time.perf_counter() - started) / LEADS_PER_RUN * 1e6)
    print(f"parse_lead: {statistics.median(runs):.1f} us per lead (median of 7 runs)")
    context = build_context(parse_lead(LEAD, CUSTOM, today=today))
    rules: list[dict[str, object]] = []
    for index in range(25):
        rules.append(
            {
                "lhv": "state",
                "op": "is included in",
                "rhv": "CA, NV, TX, FL, NY",
                "rule_set": [{"lhv": "credit_score", "op": "is greater than", "rhv": index}],
            }
        )
        rules.append({"lhv": "lead.phone_1.area", "op": "is not equal to", "rhv": "900"})
    rule_set = compile_rule_set(rules)
    evaluations = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(LEADS_PER_RUN):
            rule_set.evaluate(context)
        evaluations.append((time.perf_counter() - started) / LEADS_PER_RUN * 1e6)
    print(f"fifty rules: {statistics.median(evaluations):.1f} us per evaluation (median of 7)")


if __name__ == "__main__":
    main()
