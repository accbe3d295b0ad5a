"""`GET /openapi.json` (SPEC 5.4): an OpenAPI 3.1 document of every endpoint the gateway serves,
with request and response schemas and examples.

The document is written here by hand, beside the handlers it describes, rather than derived
from them: aiohttp handlers carry no types to derive it from. Tests keep it honest:
`tests/unit/test_openapi_document.py` validates it and its examples, and
`tests/service/test_openapi.py` checks that every route of the app is described and every
described operation served, then runs schemathesis against the real gateway (no 500, every
response matches this document).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from typing import Any

import orjson
from aiohttp import web

from leadflow.fields import STANDARD_FIELDS

JSON = "application/json"
OUTCOMES = ["success", "failure", "error"]

_ref = "#/components/schemas/".__add__


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": _ref(name)}


def _money(description: str) -> dict[str, Any]:
    # A JSON number written with two decimals (12.50); multipleOf 0.01 is left out on purpose:
    # validators judge it with binary floats, which call 9.99 not a multiple of 0.01.
    return {
        "type": "number",
        "minimum": -1_000_000,
        "maximum": 1_000_000,
        "description": description,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


_TIME = {"type": "string", "description": "RFC 3339 time in UTC, e.g. 2026-12-03T06:56:53.114Z"}
_ID = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "additionalProperties": False,
        "description": "Every 4xx and 5xx answer: what went wrong.",
        "required": ["outcome", "reason"],
        "properties": {
            "outcome": {"type": "string", "enum": ["failure", "error"]},
            "reason": {"type": "string"},
        },
        "example": {"outcome": "failure", "reason": "Unauthorized source"},
    },
    "LeadFields": {
        "type": "object",
        "description": (
            "The lead: the standard fields below and the flow's custom fields (see the source's "
            "posting instructions at /flows/{flow_id}/sources/{source_id}/docs). Dot keys "
            "(`a.b=1`) nest. `price` is the override price, `ping_id` the id of an earlier "
            "inbound ping, `redir_url` a URL to redirect to (303) after the lead is handled."
        ),
        "properties": {
            **{
                name: {"type": "string", "description": f"a {kind}"}
                for name, kind in STANDARD_FIELDS.items()
            },
            "price": {"type": ["string", "number"], "description": "override price"},
            "ping_id": {"type": "string"},
            "redir_url": {"type": "string", "format": "uri"},
        },
        "additionalProperties": True,
        "example": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@example.com",
            "phone_1": "512-555-0142",
            "state": "TX",
            "postal_code": "78701",
        },
    },
    "LeadRef": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
    "SubmitResult": {
        "type": "object",
        "additionalProperties": False,
        "description": "One lead's outcome; `price`: the purchase price paid (0 unless success).",
        "required": ["outcome", "price"],
        "properties": {
            "outcome": {"type": "string", "enum": OUTCOMES},
            "reason": {"type": "string", "description": "absent on success"},
            "lead": _schema_ref("LeadRef"),
            "price": _money("purchase price paid"),
        },
        "example": {
            "outcome": "success",
            "lead": {"id": "0193a1b2c3d4e5f6a7b8c9d0"},
            "price": 12.5,
        },
    },
    "Pending": {
        "type": "object",
        "additionalProperties": False,
        "description": "An asynchronous submission (`Prefer: respond-async`) not processed yet.",
        "required": ["outcome", "lead"],
        "properties": {
            "outcome": {"const": "pending"},
            "lead": _schema_ref("LeadRef"),
            "status_url": {"type": "string"},
        },
        "example": {
            "outcome": "pending",
            "lead": {"id": "0193a1b2c3d4e5f6a7b8c9d0"},
            "status_url": "/leads/0193a1b2c3d4e5f6a7b8c9d0",
        },
    },
    "PingResult": {
        "type": "object",
        "additionalProperties": False,
        "required": ["outcome", "price"],
        "properties": {
            "outcome": {"type": "string", "enum": OUTCOMES},
            "reason": {"type": "string", "description": "`no bid` when the price is 0"},
            "price": _money("the price we would pay"),
            "ping_id": {"type": "string", "description": "send it with the submit"},
            "expires_at": _TIME,
        },
        "example": {
            "outcome": "success",
            "price": 4.5,
            "ping_id": "7f3c9a0e1b2d4c5e6f708192",
            "expires_at": "2026-12-03T06:57:53.114Z",
        },
    },
    "FeedbackRequest": {
        "type": "object",
        "description": "A return or conversion; `lead_id` or `event_id` is required.",
        "required": ["type"],
        "properties": {
            "lead_id": {"type": "string"},
            "event_id": {"type": "string", "description": "the recipient event"},
            "type": {"type": "string", "enum": ["return", "conversion"]},
            "reason": {"type": "string", "maxLength": 500},
            "amount": {"type": ["string", "number"], "description": "a return's credit"},
        },
        "example": {"lead_id": "0193a1b2c3d4e5f6a7b8c9d0", "type": "return", "reason": "Bad phone"},
    },
    "FeedbackResult": {
        "type": "object",
        "additionalProperties": False,
        "required": ["outcome", "feedback"],
        "properties": {
            "outcome": {"type": "string", "enum": OUTCOMES},
            "reason": {"type": "string"},
            "feedback": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": ["approved", "pending", "denied"]},
                },
            },
        },
        "example": {"outcome": "success", "feedback": {"id": "k1f2e3d4", "status": "approved"}},
    },
    "PriceAudit": {
        "type": "object",
        "required": ["layer"],
        "properties": {
            "layer": {"type": "string"},
            "amount": {"type": ["number", "null"]},
            "rule_index": {"type": ["integer", "null"]},
            "service_status": {"type": ["string", "null"]},
            "service_latency_ms": {"type": ["number", "null"]},
            "service_error": {"type": ["string", "null"]},
            "fallback_used": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["number"],
        "properties": {
            "number": {"type": "integer"},
            "request": {"type": "string", "description": "secrets masked"},
            "response": {"type": "string"},
            "status_code": {"type": ["integer", "null"]},
            "ms": {"type": "number"},
            "error": {"type": ["string", "null"]},
            "captured": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "string"},
                "description": "cookie_search_term and capture values kept from the answer",
            },
        },
    },
    "LeadView": {
        "type": "object",
        "description": "A recorded lead: fields, pricing audit, offers, feedback, postings.",
        "required": ["lead", "source_event", "recipient_events"],
        "properties": {
            "lead": {
                "type": "object",
                "required": ["id", "flow_id", "source_id"],
                "properties": {
                    "id": {"type": "string"},
                    "flow_id": {"type": "string"},
                    "source_id": {"type": "string"},
                    "submit_time": {"type": "string"},
                    "fields": {"type": "object", "description": "raw and parsed values"},
                },
            },
            "source_event": {
                "type": "object",
                "required": ["outcome"],
                "properties": {
                    "outcome": {"type": "string", "enum": OUTCOMES},
                    "reason": {"type": ["string", "null"]},
                    "purchase_price": _money("purchase price"),
                    "price_paid": _money("price paid"),
                    "revenue": _money("sale revenue"),
                    "pricing": _schema_ref("PriceAudit"),
                    "ms": {"type": "number"},
                },
            },
            "recipient_events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "buyer_id", "outcome"],
                    "properties": {
                        "id": {"type": "string"},
                        "stage": {"type": "string"},
                        "stage_index": {"type": "integer"},
                        "strategy": {"type": "string"},
                        "step_index": {"type": "integer"},
                        "buyer_id": {"type": "string"},
                        "outcome": {"type": "string", "enum": OUTCOMES},
                        "reason": {"type": ["string", "null"]},
                        "sale_price": _money("sale price"),
                        "pricing": _schema_ref("PriceAudit"),
                        "reference": {"type": ["string", "null"]},
                        "attempts": {"type": "array", "items": _schema_ref("Attempt")},
                        "ms": {"type": "number"},
                    },
                },
            },
            "delivery_outcomes": {"type": "array", "items": {"type": "object"}},
            "feedback": {"type": "array", "items": {"type": "object"}},
            "postings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "debit": {"type": "string"},
                        "credit": {"type": "string"},
                        "amount": _money("amount"),
                    },
                },
            },
        },
    },
    "Report": {
        "type": "object",
        "description": "Rows and totals; money is a decimal with two places.",
        "required": ["from", "to", "time_zone", "currency", "rows", "totals"],
        "properties": {
            "from": {"type": "string", "format": "date"},
            "to": {"type": "string", "format": "date", "description": "exclusive"},
            "time_zone": {"type": "string"},
            "currency": {"type": "string"},
            "rows": {"type": "array", "items": {"type": "object"}},
            "totals": {"type": "object"},
        },
        "example": {
            "from": "2026-12-01",
            "to": "2026-12-02",
            "time_zone": "America/Chicago",
            "currency": "USD",
            "rows": [
                {
                    "source_id": "quality-leads",
                    "source_name": "Quality Leads Inc",
                    "leads": 10,
                    "accepted": 8,
                    "purchase_total": 80.0,
                    "chargebacks": 0.0,
                    "net_payable": 80.0,
                }
            ],
            "totals": {"leads": 10, "accepted": 8, "purchase_total": 80.0},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["id", "buyer_id", "status", "kind"],
        "properties": {
            "id": {"type": "string"},
            "buyer_id": {"type": "string"},
            "status": {"type": "string", "enum": ["sending", "delivered", "failed", "unknown"]},
            "kind": {
                "type": "string",
                "enum": ["scheduled", "manual", "retry", "resend", "unknown"],
            },
            "resend_of": {"type": ["string", "null"]},
            "leads": {"type": "integer"},
            "file": {"type": "string"},
            "bytes": {"type": "integer"},
            "created_at": _nullable(_TIME),
            "completed_at": _nullable(_TIME),
            "reason": {"type": ["string", "null"]},
            "attempts": {"type": "array", "items": _schema_ref("Attempt")},
            "recipient_event_ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "BatchList": {
        "type": "object",
        "required": ["queues", "batches"],
        "properties": {
            "queues": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["buyer_id", "pending_leads"],
                    "properties": {
                        "buyer_id": {"type": "string"},
                        "schedule": {"type": "string"},
                        "pending_leads": {"type": "integer"},
                        "next_run_at": _nullable(_TIME),
                        "retry_at": _nullable(_TIME),
                        "failures": {"type": "integer"},
                    },
                },
            },
            "batches": {"type": "array", "items": _schema_ref("Batch")},
            "next_page_token": {"type": ["string", "null"]},
        },
        "example": {"queues": [], "batches": [], "next_page_token": None},
    },
    "BatchResult": {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"anyOf": [_schema_ref("Batch"), {"type": "null"}]},
            "reason": {"type": "string", "description": "why there is no batch"},
        },
        "example": {"batch": None, "reason": "No pending leads"},
    },
    "UnknownLeads": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "outcome", "unknown_offers"],
                    "properties": {
                        "id": {"type": "string"},
                        "flow_id": {"type": "string"},
                        "source_id": {"type": "string"},
                        "submitted_at": _TIME,
                        "outcome": {"type": "string", "enum": ["unknown"]},
                        "unknown_offers": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["recipient_event_id", "buyer_id"],
                                "properties": {
                                    "recipient_event_id": {"type": "string"},
                                    "buyer_id": {"type": "string"},
                                    "stage_index": {"type": "integer"},
                                    "step_index": {"type": "integer"},
                                    "sale_price": _money("the quoted sale price"),
                                    "reason": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
            },
            "next_cursor": {"type": ["string", "null"]},
        },
        "example": {"items": [], "next_cursor": None},
    },
    "ResolveRequest": {
        "type": "object",
        "required": ["outcome"],
        "properties": {
            "outcome": {"type": "string", "enum": ["success", "failure"]},
            "reason": {"type": "string", "maxLength": 500},
        },
        "example": {"outcome": "success"},
    },
    "ResolveResult": {
        "type": "object",
        "required": ["recipient_event_id", "lead_id", "buyer_id", "outcome", "created"],
        "properties": {
            "recipient_event_id": {"type": "string"},
            "lead_id": {"type": "string"},
            "buyer_id": {"type": "string"},
            "outcome": {"type": "string", "enum": ["success", "failure"]},
            "created": {"type": "boolean", "description": "false when it was already resolved"},
        },
    },
    "Health": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]},
            "down": {"type": "string", "description": "the services that are not serving"},
        },
        "example": {"status": "SERVING"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            JSON: {"schema": _schema_ref("Error")},
            "application/xml": {"schema": {"type": "string"}},
            "text/xml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }


def _json_response(description: str, schema: str, **more: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _schema_ref(schema)}}, **more}


def _negotiated(description: str, schema: str) -> dict[str, Any]:
    """A body in the media type `Accept` asks for: JSON, XML `<result>…</result>` or text."""
    return {
        "description": description,
        "content": {
            JSON: {"schema": _schema_ref(schema)},
            "application/xml": {"schema": {"type": "string"}, "example": "<result>…</result>"},
            "text/xml": {"schema": {"type": "string"}},
            "text/plain": {
                "schema": {"type": "string"},
                "example": "outcome:success\nprice:12.50\n",
            },
        },
    }


_ADMIN: list[dict[str, list[str]]] = [{"basic": []}, {"apiKey": []}]
_UNAUTHORIZED = _error("missing or wrong key")
_DEFAULT = _error("any other client error; never a 500 for anything a client sends")
_UNAVAILABLE = _error("a service behind the gateway is unavailable (outcome `error`)")


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "schema": schema or {"type": "string"},
        "description": description,
    }


_FLOW_SOURCE = [
    _path_param("flow_id", "the flow's id"),
    _path_param("source_id", "the source's id"),
]
_ACCEPT = {
    "name": "Accept",
    "in": "header",
    "schema": {"type": "string"},
    "description": "application/json (default), application/xml, text/xml or text/plain",
}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "a retry with the same key returns the first answer",
}
_LEAD_BODY = {
    "required": False,
    "content": {
        JSON: {"schema": _schema_ref("LeadFields")},
        "application/x-www-form-urlencoded": {"schema": _schema_ref("LeadFields")},
        "application/xml": {
            "schema": {"type": "string"},
            "example": "<lead><first_name>Ada</first_name><state>TX</state></lead>",
        },
    },
}
_VENDOR_ERRORS = {
    "303": {"description": "`redir_url` was given: the lead was handled; go there"},
    "400": _error("unparsable body (with the parse message) or bad parameter"),
    "401": _error("missing or wrong source key (`Unauthorized source`)"),
    "404": _error("unknown flow or source"),
    "405": _error("another method (`Allow: GET, POST`)"),
    "406": _error("unsatisfiable Accept, or an unsupported Content-Type"),
    "413": _error("body over 1 MiB"),
    "415": _error("a body without a supported Content-Type"),
    "429": _error("the source's rate limit is exceeded (see Retry-After)"),
    "default": _DEFAULT,
}


def _vendor_operation(summary: str, description: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        "tags": ["vendors"],
        "security": [{"basic": []}, {"apiKey": []}],
        "parameters": [_ACCEPT],
        "requestBody": _LEAD_BODY,
        "responses": {**ok, **_VENDOR_ERRORS},
    }


def _submit(method: str) -> dict[str, Any]:
    operation = _vendor_operation(
        "Submit a lead",
        "LeadConduit-compatible submission. Auth: HTTP Basic, user `API`, password the source's "
        "api_key (or header `X-Api-Key`). Query parameters merge over the body. `201` for every "
        "lead handled, whatever its outcome.",
        {
            "201": _negotiated("the lead was handled", "SubmitResult"),
            "202": _negotiated("accepted for asynchronous processing", "Pending"),
            "409": _error("a request with this Idempotency-Key is still in progress"),
        },
    )
    operation["operationId"] = f"submitLead{method.title()}"
    operation["parameters"] = [_ACCEPT, _IDEMPOTENCY]
    if method == "get":
        del operation["requestBody"]  # a GET carries the lead in its query string
        operation["parameters"] = [*operation["parameters"], _query("first_name", "any lead field")]
    return operation


def _ping(method: str) -> dict[str, Any]:
    operation = _vendor_operation(
        "Ask what we would pay for a lead",
        "Runs purchase pricing on a (partial) lead. A price of 0 is `failure` with reason "
        "`no bid`. Submit the lead with `ping_id` before `expires_at` to be paid this price.",
        {"200": _negotiated("the quote", "PingResult")},
    )
    operation["operationId"] = f"pingLead{method.title()}"
    if method == "get":
        del operation["requestBody"]
    return operation


def _admin_get(
    summary: str,
    responses: dict[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    **more: Any,
) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["operators"],
        "security": _ADMIN,
        "parameters": parameters or [],
        "responses": {**responses, "401": _UNAUTHORIZED, "503": _UNAVAILABLE, "default": _DEFAULT},
        **more,
    }


def _report(kind: str, rows: str) -> dict[str, Any]:
    parameters = [
        {
            **_query(
                "from", "first day, YYYY-MM-DD (inclusive)", {"type": "string", "format": "date"}
            ),
            "example": "2026-12-01",
        },
        {
            **_query(
                "to", "last day, YYYY-MM-DD (exclusive)", {"type": "string", "format": "date"}
            ),
            "example": "2026-12-02",
        },
        {
            **_query("tz", "IANA time zone of the dates (default: the account's)"),
            "example": "America/Chicago",
        },
        _query("format", "json (default) or csv", {"type": "string", "enum": ["json", "csv"]}),
    ]
    if kind == "margin":
        parameters.append(_query("group_by", "flow, source, buyer or source,buyer"))
    ok = {
        "description": f"the {kind} report; rows: {rows}",
        "content": {
            JSON: {"schema": _schema_ref("Report")},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
    return _admin_get(
        f"{kind.title()} report",
        {"200": ok, "400": _error("bad parameter")},
        parameters,
        operationId=f"report{kind.title()}",
    )


def _decide(action: str) -> dict[str, Any]:
    return {
        "summary": f"{action.title()} a pending return",
        "operationId": f"{action}Return",
        "tags": ["operators"],
        "security": _ADMIN,
        "parameters": [_path_param("feedback_id", "the return's feedback id")],
        "responses": {
            "200": _json_response("the decision", "FeedbackResult"),
            "401": _UNAUTHORIZED,
            "404": _error("unknown return"),
            "409": _error("the return is already decided"),
            "503": _UNAVAILABLE,
            "default": _DEFAULT,
        },
    }


def _paths() -> dict[str, Any]:
    submit = "/flows/{flow_id}/sources/{source_id}/submit"
    ping = "/flows/{flow_id}/sources/{source_id}/ping"
    return {
        submit: {"parameters": _FLOW_SOURCE, "post": _submit("post"), "get": _submit("get")},
        ping: {"parameters": _FLOW_SOURCE, "post": _ping("post"), "get": _ping("get")},
        "/flows/{flow_id}/sources/{source_id}/docs": {
            "parameters": _FLOW_SOURCE,
            "get": {
                "summary": "Posting instructions for a source (HTML)",
                "operationId": "sourceDocs",
                "description": "URL, auth, every field with its type, what the flow's acceptance "
                "rules and steps require, sample requests and responses. The admin key or the "
                "source's own key.",
                "tags": ["vendors"],
                "security": _ADMIN,
                "responses": {
                    "200": {
                        "description": "the instructions",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "404": _error("unknown flow or source"),
                    "default": _DEFAULT,
                },
            },
        },
        "/feedback": {
            "post": {
                "summary": "A buyer returns a lead or reports a conversion",
                "operationId": "submitFeedback",
                "description": "The buyer's key (Basic `API:<buyer api_key>` or `X-Api-Key`). "
                "Body or query. Returns are judged by the buyer's `returns` policy.",
                "tags": ["buyers"],
                "security": [{"basic": []}, {"apiKey": []}],
                "parameters": [_ACCEPT, _IDEMPOTENCY],
                "requestBody": {
                    "required": False,
                    "content": {
                        JSON: {"schema": _schema_ref("FeedbackRequest")},
                        "application/x-www-form-urlencoded": {
                            "schema": _schema_ref("FeedbackRequest")
                        },
                    },
                },
                "responses": {
                    "201": _negotiated("the feedback was judged", "FeedbackResult"),
                    "400": _error("missing or bad parameter"),
                    "401": _error("missing or wrong buyer key"),
                    "404": _error("unknown lead or event"),
                    "406": _error("unsatisfiable Accept"),
                    "503": _UNAVAILABLE,
                    "default": _DEFAULT,
                },
            }
        },
        "/returns/{feedback_id}/approve": {"post": _decide("approve")},
        "/returns/{feedback_id}/deny": {"post": _decide("deny")},
        "/leads/{lead_id}": {
            "get": _admin_get(
                "A recorded lead",
                {
                    "200": {
                        "description": "the lead for operators; for the source that sent an "
                        "asynchronous submission, its outcome",
                        "content": {
                            JSON: {
                                "schema": {
                                    "anyOf": [
                                        _schema_ref("LeadView"),
                                        _schema_ref("SubmitResult"),
                                    ]
                                }
                            },
                            "application/xml": {"schema": {"type": "string"}},
                            "text/xml": {"schema": {"type": "string"}},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "202": _negotiated(
                        "an asynchronous submission still being processed", "Pending"
                    ),
                    "404": _error("unknown lead"),
                    "406": _error("unsatisfiable Accept"),
                },
                [_path_param("lead_id", "the lead's id"), _ACCEPT],
                operationId="getLead",
                description="The admin key, or the key of an asynchronous submission's source.",
            )
        },
        "/leads": {
            "get": _admin_get(
                "Leads with an offer whose fate is unknown (SPEC 8.1)",
                {
                    "200": _json_response("newest lead first", "UnknownLeads"),
                    "400": _error("a search other than outcome=unknown, a bad limit or cursor"),
                },
                [
                    _query(
                        "outcome",
                        "unknown (the only search served)",
                        {"type": "string", "enum": ["unknown"]},
                    ),
                    _query(
                        "limit",
                        "1 to 500 (default 50)",
                        {"type": "integer", "minimum": 1, "maximum": 500},
                    ),
                    _query("cursor", "next_cursor of the previous page"),
                ],
                operationId="listUnknownLeads",
            )
        },
        "/recipients/{event_id}/resolve": {
            "post": {
                **_admin_get(
                    "Settle an offer whose fate is unknown",
                    {
                        "200": _json_response(
                            "recorded (or already, with created false)", "ResolveResult"
                        ),
                        "400": _error("the body is not JSON"),
                        "404": _error("unknown recipient event"),
                        "409": _error("not unknown, or already resolved otherwise"),
                        "422": _error("outcome must be success or failure"),
                    },
                    [_path_param("event_id", "the recipient event's id")],
                    operationId="resolveRecipient",
                ),
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _schema_ref("ResolveRequest")}},
                },
            }
        },
        "/reports/vendors": {
            "get": _report(
                "vendors",
                "source_id, source_name, leads, accepted, purchase_total, chargebacks, net_payable",
            )
        },
        "/reports/buyers": {
            "get": _report(
                "buyers",
                "buyer_id, buyer_name, deliveries, sold, failed, errors, sales_total, returns, "
                "return_credits, net_receivable, failed_opportunity",
            )
        },
        "/reports/margin": {
            "get": _report(
                "margin", "group keys, leads, revenue, cost, credits, margin, margin_percent"
            )
        },
        "/batches": {
            "get": _admin_get(
                "Batch buyers' queues and files",
                {
                    "200": _json_response("queues and batches", "BatchList"),
                    "400": _error("bad limit"),
                    "404": _error("unknown buyer"),
                    "409": _error("the buyer has no batch delivery"),
                },
                [
                    _query("buyer", "one buyer's id"),
                    _query(
                        "limit",
                        "1 to 500 (default 50)",
                        {"type": "integer", "minimum": 1, "maximum": 500},
                    ),
                    _query("page_token", "next_page_token of the previous page"),
                ],
                operationId="listBatches",
            )
        },
        "/batches/{buyer_id}/deliver": {
            "post": {
                **_admin_get(
                    "Deliver a batch buyer's pending leads now",
                    {
                        "200": _json_response("the batch sent, or none", "BatchResult"),
                        "400": _error("bad Idempotency-Key"),
                        "404": _error("unknown buyer"),
                        "409": _error("the buyer has no batch delivery"),
                    },
                    [_path_param("buyer_id", "the buyer's id"), _IDEMPOTENCY],
                    operationId="deliverBatch",
                )
            }
        },
        "/batches/{batch_id}/resend": {
            "post": _admin_get(
                "Send a delivered batch file again",
                {
                    "200": _json_response("the new batch", "BatchResult"),
                    "400": _error("bad Idempotency-Key or batch id"),
                    "404": _error("unknown batch"),
                    "409": _error("the batch cannot be resent"),
                },
                [_path_param("batch_id", "the batch's id"), _IDEMPOTENCY],
                operationId="resendBatch",
            )
        },
        "/healthz": {
            "get": {
                "summary": "200 only when every service is serving",
                "operationId": "healthz",
                "tags": ["operators"],
                "responses": {
                    "200": _json_response("every service is serving", "Health"),
                    "503": _json_response("some service is not serving", "Health"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "The gateway's Prometheus metrics (admin key on this port; the "
                "metrics port, B+15, serves them to Prometheus without one)",
                "operationId": "metrics",
                "tags": ["operators"],
                "security": _ADMIN,
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "default": _DEFAULT,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "tags": ["operators"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once: it depends on nothing at run time)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadflow gateway",
            "version": version("leadflow"),
            "description": "Lead submission (LeadConduit-compatible), inbound ping, buyer "
            "feedback and the operators' API. JSON money is a number with two decimals; times "
            "are RFC 3339 in UTC. Admin endpoints take Basic `API:<admin_api_key>` or `X-Api-Key`.",
        },
        "tags": [
            {"name": "vendors", "description": "sources sending leads"},
            {"name": "buyers", "description": "buyers' feedback"},
            {"name": "operators", "description": "the admin key"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "user `API`, password the key",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }


@cache
def _document_bytes() -> bytes:
    return orjson.dumps(document())


async def openapi_json(_request: web.Request) -> web.Response:
    """No key needed (SPEC 5.4): the document says nothing about any account."""
    return web.Response(body=_document_bytes(), content_type=JSON)
