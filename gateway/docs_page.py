"""`GET /flows/{flow_id}/sources/{source_id}/docs` (SPEC 5.4): a source's posting instructions
as HTML, generated from the configuration: the URL, how to authenticate, every field with its
type, what the flow's acceptance rules and steps require, and sample requests and responses.

Readable by the admin key or the source's own key. Buyers are not named (a vendor has no
business knowing who buys its leads), and the source's key is never printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from html import escape

from aiohttp import web

from gateway.intake import error_response
from leadflow.config import Cap, Config, Flow, Hours, RuleSetSpec, Source
from leadflow.fields import STANDARD_FIELDS

# What each field type accepts, in a vendor's words.
TYPE_NOTES = {
    "string": "text",
    "phone": "a phone number, any common format (5125550142, (512) 555-0142 x44)",
    "email": "an email address",
    "postal_code": "a US ZIP (78701 or 78701-1234), Canadian or UK postal code",
    "state": "a US state: the 2-letter code or its name",
    "number": "a number (1,500 and $1500 are read as 1500)",
    "range": "a number or range (700-749, 10+)",
    "boolean": "yes/no, y/n, true/false, 1/0",
    "date": "a date (2026-12-03 or 12/03/2026)",
    "dob": "a date of birth (1990-05-17 or 05/17/1990)",
    "gender": "male/female (m/f)",
    "ip": "an IPv4 or IPv6 address",
    "url": "a URL",
    "trustedform_url": "a TrustedForm certificate URL",
}
SAMPLE_VALUES = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "phone_1": "512-555-0142",
    "state": "TX",
    "postal_code": "78701",
}


def _rule_lines(spec: RuleSetSpec | None) -> Iterator[str]:
    """Each rule as `lhv op rhv`; an `or` set as its alternatives joined by `or`."""
    if spec is None or not spec.rules:
        return
    texts = []
    for rule in spec.rules:
        text = f"{rule.lhv} {rule.op}"
        if rule.rhv is not None:
            rhv = rule.rhv
            text += " " + (", ".join(map(str, rhv)) if isinstance(rhv, list) else str(rhv))
        if rule.rule_set is not None and rule.rule_set.rules:
            text += " (when " + " and ".join(_rule_lines(rule.rule_set)) + ")"
        texts.append(text)
    if spec.op == "or":
        yield " or ".join(texts)
    else:
        yield from texts


def _hours_lines(hours: Hours | None, zone: str) -> Iterator[str]:
    if hours is None:
        return
    for day in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"):
        ranges: list[str] = getattr(hours, day)
        text = ", ".join(ranges) if ranges else "closed"
        yield f"{day.title()}: {text} ({hours.time_zone or zone})"


def _cap_lines(caps: list[Cap]) -> Iterator[str]:
    for cap in caps:
        limit = f"{cap.max_leads} leads" if cap.max_leads is not None else f"${cap.max_amount}"
        period = cap.per if cap.every == 1 else f"{cap.every} {cap.per}s"
        yield f"at most {limit} per {period}"


def _list(items: list[str], empty: str) -> str:
    if not items:
        return f"<p>{escape(empty)}</p>"
    return "<ul>" + "".join(f"<li><code>{escape(item)}</code></li>" for item in items) + "</ul>"


def _requirements(config: Config, flow: Flow, source_id: str) -> str:
    entry = flow.sources_by_id[source_id]
    zone = config.flow_time_zone(flow)
    parts = ["<h2>What a lead must meet</h2>", "<h3>Acceptance rules</h3>"]
    rules = [*_rule_lines(flow.acceptance), *_rule_lines(entry.acceptance)]
    parts.append(_list(rules, "No acceptance rules: every lead is considered."))
    hours = [*_hours_lines(flow.hours, zone), *_hours_lines(entry.hours, zone)]
    if hours:
        parts += ["<h3>Hours</h3>", _list(hours, "")]
    caps = [*_cap_lines(flow.caps), *_cap_lines(entry.caps)]
    if caps:
        parts += ["<h3>Caps</h3>", _list(caps, "")]
    if flow.duplicates is not None:
        duplicate = (
            f"A lead with the same {', '.join(flow.duplicates.fields)} as one accepted in the "
            f"last {flow.duplicates.within_days} days is rejected ({flow.duplicates.reason})."
        )
        parts += ["<h3>Duplicates</h3>", f"<p>{escape(duplicate)}</p>"]
    parts.append("<h3>Buyers</h3>")
    if flow.require_sale:
        parts.append("<p>A lead is accepted only when a buyer buys it.</p>")
    buyer_lines = []
    for stage in flow.stages:
        for step in stage.steps:
            buyer = config.buyers_by_id.get(step.buyer)
            needs = [*_rule_lines(step.criteria)]
            if buyer is not None:
                needs += [*_rule_lines(buyer.criteria)]
                if buyer.territory is not None and buyer.territory.states:
                    needs.append("state is included in " + ", ".join(buyer.territory.states))
            if needs:
                buyer_lines.append(" and ".join(needs))
    parts.append(
        _list(
            [f"a buyer takes leads where {text}" for text in buyer_lines],
            "Buyers take any lead the acceptance rules let through.",
        )
    )
    return "".join(parts)


# Operators whose rule, ANDed at the top of an acceptance rule set, makes a field required.
_REQUIRING = frozenset({"is not blank", "format is valid"})


def _required(*specs: RuleSetSpec | None) -> set[str]:
    """Fields the acceptance rules require to be present (or valid), by their top-level rules."""
    names = set()
    for spec in specs:
        if spec is None or spec.op != "and":
            continue
        for rule in spec.rules:
            if rule.op.lower() in _REQUIRING and rule.rule_set is None:
                names.add(rule.lhv.removeprefix("lead.").split(".")[0])
    return names


def _fields(flow: Flow, required: set[str]) -> str:
    rows = [(name, kind, "standard") for name, kind in STANDARD_FIELDS.items()]
    rows += [(name, kind, "this flow's own field") for name, kind in flow.fields.items()]
    cells = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{escape(kind)}</td>"
        f"<td>{escape(TYPE_NOTES.get(kind, kind))}</td><td>{escape(origin)}</td>"
        f"<td>{'required' if name in required else ''}</td></tr>"
        for name, kind, origin in rows
    )
    return (
        "<h2>Fields</h2><p>Send any of these; other fields are kept as text. A dot in a name "
        "nests it (<code>vehicle.year</code>).</p><table><thead><tr><th>Field</th><th>Type</th>"
        f"<th>Accepts</th><th></th><th></th></tr></thead><tbody>{cells}</tbody></table>"
    )


def _samples(submit_url: str, flow: Flow) -> str:
    lead = dict(SAMPLE_VALUES)
    for name, kind in flow.fields.items():
        lead[name] = {"number": "100", "range": "700-749", "boolean": "yes"}.get(kind, "…")
    body = json.dumps(lead, indent=2)
    form = "&".join(f"{name}={value}" for name, value in lead.items())
    success = {"outcome": "success", "lead": {"id": "0193a1b2c3d4e5f6a7b8c9d0"}, "price": 12.5}
    failure = {
        "outcome": "failure",
        "reason": "state is not included in CA, NV",
        "lead": {"id": "0193a1b2c3d4e5f6a7b8c9d1"},
        "price": 0.0,
    }
    unauthorized = {"outcome": "failure", "reason": "Unauthorized source"}
    samples = [
        (
            "JSON",
            f"curl -u 'API:YOUR_API_KEY' -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}' \\\n  {submit_url}",
        ),
        ("Form", f"curl -u 'API:YOUR_API_KEY' -d '{form}' \\\n  {submit_url}"),
    ]
    parts = ["<h2>Sample requests</h2>"]
    for name, text in samples:
        parts.append(f"<h3>{name}</h3><pre>{escape(text)}</pre>")
    parts.append("<h2>Sample responses</h2>")
    for status, title, data in (
        (201, "Accepted and sold", success),
        (201, "Rejected (with the reason)", failure),
        (401, "Wrong or missing key", unauthorized),
    ):
        parts.append(
            f"<h3>{status}: {escape(title)}</h3><pre>{escape(json.dumps(data, indent=2))}</pre>"
        )
    parts.append(
        "<p>Every lead handled gets <code>201</code>, whatever its outcome; "
        "<code>price</code> is what we pay (0 unless <code>success</code>). Errors: 400 "
        "unparsable body, 401 wrong key, 404 unknown flow or source, 406 unsupported Accept "
        "or Content-Type, 413 body over 1 MiB, 415 body without Content-Type, 429 over the "
        "rate limit.</p>"
    )
    return "".join(parts)


def render_docs(config: Config, flow: Flow, source: Source, base_url: str) -> str:
    """The whole page; every configured value is escaped."""
    submit_url = f"{base_url}/flows/{flow.id}/sources/{source.id}/submit"
    ping_url = f"{base_url}/flows/{flow.id}/sources/{source.id}/ping"
    rate = ""
    if source.rate_limit is not None:
        rate = (
            f"<p>Rate limit: {source.rate_limit.requests} requests per "
            f"{escape(source.rate_limit.per)} (429 with Retry-After beyond it).</p>"
        )
    entry = flow.sources_by_id[source.id]
    title = f"Posting instructions: {source.name} to {flow.name}"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;max-width:60em;"
        "margin:2em auto}}td,th{{text-align:left;padding:.2em .6em}}pre{{background:#f4f4f4;"
        "padding:.6em;overflow:auto}}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        "<h2>Where to send</h2>"
        f"<p><code>POST {escape(submit_url)}</code> (or <code>GET</code> with the fields in "
        "the query string). Bodies: <code>application/json</code>, "
        "<code>application/x-www-form-urlencoded</code>, <code>application/xml</code>; query "
        "parameters merge over the body. Answers are JSON unless <code>Accept</code> asks for "
        "<code>application/xml</code> or <code>text/plain</code>.</p>"
        f"<p>Ask what we would pay first (optional): <code>POST {escape(ping_url)}</code>; "
        "send the <code>ping_id</code> it returns with the lead before it expires.</p>"
        "<h2>Authentication</h2><p>HTTP Basic with user <code>API</code> and your API key as "
        "the password, or the header <code>X-Api-Key: YOUR_API_KEY</code>. Send an "
        "<code>Idempotency-Key</code> header to make a retry safe.</p>"
        f"{rate}{_fields(flow, _required(flow.acceptance, entry.acceptance))}"
        f"{_requirements(config, flow, source.id)}"
        f"{_samples(submit_url, flow)}</body></html>"
    )


async def source_docs(request: web.Request) -> web.Response:
    from gateway.http_api import CONFIG_KEY, key_matches  # http_api registers this route

    config: Config = request.app[CONFIG_KEY]
    flow = config.flows_by_id.get(request.match_info["flow_id"])
    source_id = request.match_info["source_id"]
    source = config.sources_by_id.get(source_id)
    if flow is None or source is None or source_id not in flow.sources_by_id:
        # Same answer with or without a key: ids are not secret, but there is nothing to show.
        return error_response(404, "Unknown flow or source")
    admin = key_matches(request, config.account.admin_api_key)
    if not admin and not key_matches(request, source.api_key):
        return error_response(401, "Unauthorized")
    base_url = f"{request.scheme}://{request.host}"
    return web.Response(text=render_docs(config, flow, source, base_url), content_type="text/html")
