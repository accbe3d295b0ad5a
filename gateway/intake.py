"""What a vendor's HTTP request says, and how to answer it: bodies (JSON, form, XML, query),
dot-key unflattening, content negotiation, response rendering and the error answer every
endpoint gives. Pure: no I/O."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.etree.ElementTree import Element, ParseError

import orjson
from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from leadflow import payload
from leadflow.money import format_money

MAX_FIELDS = 1000
# Deeper than any lead needs, and far below what the JSON encoder (254 levels) and Python's
# recursion limit allow: a deeper body is refused rather than failing later with a 500.
MAX_DEPTH = 32
JSON_TYPES = frozenset({"application/json"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded"})
XML_TYPES = frozenset({"application/xml", "text/xml"})
BODY_TYPES = JSON_TYPES | FORM_TYPES | XML_TYPES


class BadRequest(ValueError):
    """A body or parameter the gateway cannot read (HTTP 400, with this message)."""


class Refused(Exception):
    """A request refused with another 4xx than 400 (413, 415, 406): status, reason and the
    headers the answer carries."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


# Content codings a request body may arrive in (RFC 9110 8.4; `x-gzip` is gzip's old name).
GZIP_CODINGS = frozenset({"gzip", "x-gzip"})
BODY_CODINGS = GZIP_CODINGS | {"deflate", "identity"}
ACCEPT_ENCODING = "gzip, deflate"


def decode_body(body: bytes, coding: str, limit: int) -> bytes:
    """The body without its content coding (`coding` lowercased, one of BODY_CODINGS), at most
    `limit` bytes once decoded: a small compressed body must not expand past the size limit
    (a zip bomb), so decompression stops one byte past it."""
    coding = coding or "identity"
    if coding not in BODY_CODINGS:
        raise Refused(
            415,
            "Content-Encoding must be gzip, deflate or identity",
            {"Accept-Encoding": ACCEPT_ENCODING},
        )
    if coding == "identity" or not body:
        return body
    if coding in GZIP_CODINGS:
        wbits = 16 + zlib.MAX_WBITS
    elif body[0] & 0x0F == 8 and int.from_bytes(body[:2], "big") % 31 == 0:
        wbits = zlib.MAX_WBITS  # deflate as RFC 9110 means it: a zlib stream
    else:
        wbits = -zlib.MAX_WBITS  # raw deflate, which many clients send instead
    decompressor = zlib.decompressobj(wbits)
    try:
        decoded = decompressor.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest(f"the body is not valid {coding} data") from None
    if len(decoded) > limit:
        raise Refused(413, f"Body over {limit} bytes once decompressed")
    if not decompressor.eof or decompressor.unused_data:
        raise BadRequest(f"the body is not valid {coding} data (truncated or trailing bytes)")
    return decoded


def parse_body(content_type: str, body: bytes, charset: str | None = None) -> dict[str, Any]:
    """The fields of a body, by its media type (the caller has checked it is one of BODY_TYPES)."""
    if not body.strip():
        return {}
    if content_type in JSON_TYPES:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            # As LeadConduit: vendors put raw newlines and tabs inside JSON strings; the body
            # is read once more without any CR, LF or tab before it is refused.
            try:
                data = orjson.loads(body.translate(None, b"\r\n\t"))
            except orjson.JSONDecodeError:
                raise BadRequest(f"invalid JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest("the JSON body must be an object")
        check_depth(data)
        return data
    text = _decode(body, charset)
    if content_type in FORM_TYPES:
        text = text.strip()  # as LeadConduit, which trims the body before reading it
        try:
            pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS + 1)
        except ValueError:  # parse_qsl's own "Max number of fields exceeded"
            raise BadRequest(f"too many fields (more than {MAX_FIELDS})") from None
        return pairs_to_dict(pairs)
    return _parse_xml(text)


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise BadRequest(f"the body is not valid {charset or 'utf-8'} text") from None


# An element's namespace declarations, as the attributes LeadConduit keeps them as (`xmlns`,
# `xmlns:p`): ElementTree reads them as events, not attributes.
_Declarations = dict[int, list[tuple[str, str]]]


def _parse_xml(text: str) -> dict[str, Any]:
    """The root element is the lead (its name is not a field), as LeadConduit reads XML."""
    declarations: _Declarations = {}
    pending: list[tuple[str, str]] = []
    root: Element | None = None
    try:
        for event, item in iterparse(
            io.StringIO(text), events=("start-ns", "start"), forbid_dtd=True
        ):
            if event == "start-ns":
                pending.append(item)
                continue
            if pending:
                declarations[id(item)] = pending
                pending = []
            if root is None:
                root = item
    except (ParseError, DefusedXmlException) as exc:
        raise BadRequest(f"invalid XML body: {exc}") from None
    if root is None:  # pragma: no cover - the parser raises on a document without a root
        raise BadRequest("invalid XML body: no element")
    value = _xml_value(root, declarations)
    if isinstance(value, dict):
        return value
    if value.strip():
        raise BadRequest("the XML root element must hold the lead's fields as elements, not text")
    return {}


def check_depth(value: Any, depth: int = 0) -> None:
    """Refuse objects and lists nested deeper than MAX_DEPTH (iteratively: no recursion limit)."""
    # Only objects and lists are stacked: a lead's values are mostly text, checked for nothing.
    stack = [(value, depth)] if isinstance(value, (dict, list)) else []
    while stack:
        item, level = stack.pop()
        if level >= MAX_DEPTH:
            raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))


def _local_name(name: str) -> str:
    """`{namespace-uri}name` -> `name`: namespaces are dropped from element and attribute names."""
    return name.rpartition("}")[2]


def _xml_value(element: Element, declarations: _Declarations, depth: int = 0) -> Any:
    """LeadConduit's reading (xml2js with explicitArray false, mergeAttrs true, no trim): an
    element with neither children nor attributes is its text as sent; otherwise an object of
    its attributes (namespace declarations among them) and child elements, with its own text
    under `_` unless that is only whitespace; a repeated name becomes a list."""
    children = list(element)
    text = (element.text or "") + "".join(child.tail or "" for child in children)
    declared = declarations.get(id(element), ())
    if not children and not element.attrib and not declared:
        return text
    if depth >= MAX_DEPTH:
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    result: dict[str, Any] = {}
    for prefix, uri in declared:
        _add_field(result, f"xmlns:{prefix}" if prefix else "xmlns", uri)
    for name, value in element.attrib.items():
        _add_field(result, _local_name(name), value)
    for child in children:
        _add_field(result, _local_name(str(child.tag)), _xml_value(child, declarations, depth + 1))
    if text.strip():
        _add_field(result, "_", text)
    return result


def _add_field(result: dict[str, Any], name: str, value: Any) -> None:
    if name in result:  # a repeated name is a list
        existing = result[name]
        result[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
    else:
        result[name] = value


def pairs_to_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form or query pairs; a repeated key collects its values in a list."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            existing = result[key]
            result[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[key] = value
    return result


def vendor_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """A vendor's parameters as lead fields: dot keys unflattened (leadflow.payload) within the
    intake's limits, then the depth checked again (dot keys inside nested objects can multiply
    it); a key that cannot be placed is a 400."""
    try:
        fields = payload.unflatten(data, max_fields=MAX_FIELDS, max_parts=MAX_DEPTH)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    check_depth(fields)
    return fields


def override_text(value: object) -> str:
    """The `price` parameter as text for pricing to judge; a repeated or nested one is no price."""
    if value is None or isinstance(value, dict | list):
        return "" if value is None else "not a single value"
    return str(value)


# What the gateway can answer in. Between types an Accept header rates equally, the order is
# LeadConduit's: a header of just `*/*` means JSON (its special case); otherwise a wildcard
# range picks the name its matcher sorts last (mimeparse sorting its candidates as strings):
# `application/*` is XML, `text/*` text/xml, both together or `*/*;q=0.8` text/xml.
OFFERS = ("application/json", "application/xml", "text/xml", "text/plain")
_WILDCARD_ORDER = tuple(sorted(OFFERS, reverse=True))
_ANY = frozenset({"*/*", "*"})  # `*` is what Java's URLConnection sends for */*
NOT_ACCEPTABLE = "Acceptable types: application/json, application/xml, text/plain"


# A vendor sends the same Accept header with every lead: each distinct one is read once.
@lru_cache(maxsize=64)
def negotiate(accept: str | None) -> str | None:
    """The media type to answer in, or None when the Accept header allows none of OFFERS.
    Matched case-insensitively; each offer takes the quality of the most specific range that
    matches it; the highest quality wins, then the more specific range, then the order above."""
    if not accept or not accept.strip() or accept.strip() in _ANY:
        return OFFERS[0]
    ranges = [_media_range(item) for item in accept.split(",")]
    best: tuple[float, int, int] | None = None
    chosen = None
    for offer in OFFERS:
        offer_type, offer_sub = offer.split("/")
        quality, specificity = -1.0, -1
        for media_type, media_sub, range_quality in ranges:
            if media_type not in ("*", offer_type) or media_sub not in ("*", offer_sub):
                continue
            spec = (media_type != "*") + (media_sub != "*")
            if spec > specificity:
                specificity, quality = spec, range_quality
        if quality <= 0:
            continue
        key = (quality, specificity, -_WILDCARD_ORDER.index(offer))
        if best is None or key > best:
            best, chosen = key, offer
    return chosen


def _media_range(item: str) -> tuple[str, str, float]:
    media, _, params = item.strip().partition(";")
    media = media.strip().lower()
    if media == "*":  # what Java's URLConnection sends for */*
        media = "*/*"
    media_type, _, media_sub = media.partition("/")
    return media_type.strip(), media_sub.strip(), _quality(params)


def _quality(params: str) -> float:
    """The range's q; a q that is no number from 0 to 1 (`abc`, `nan`) makes it unacceptable."""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                return 0.0
            return min(1.0, quality) if quality >= 0 else 0.0
    return 1.0


# LeadConduit's TrustedForm parameter names (compared in lower case), and the field they become.
TRUSTEDFORM_CERT_URL = "trustedform_cert_url"
_TRUSTEDFORM_CERT_ALIASES = frozenset({"xxtrustedformcerturl"})
_TRUSTEDFORM_PING_ALIASES = frozenset({"xxtrustedformpingurl", "trustedform_ping_url"})


def rename_trustedform(fields: dict[str, Any], ping: bool) -> None:
    """`xxTrustedFormCertUrl` (any case) becomes `trustedform_cert_url`; so do
    `xxTrustedFormPingUrl` and `trustedform_ping_url`, preferred on an inbound ping. On a
    submission a ping URL alone is dropped, as LeadConduit does: it is no certificate to claim."""
    cert = ping_url = None
    for name in list(fields):
        lowered = name.lower()
        if lowered in _TRUSTEDFORM_PING_ALIASES:
            ping_url = fields.pop(name)
        elif lowered in _TRUSTEDFORM_CERT_ALIASES:
            cert = fields.pop(name)
    if ping and ping_url:
        fields[TRUSTEDFORM_CERT_URL] = ping_url
    elif cert:
        fields[TRUSTEDFORM_CERT_URL] = cert


MAX_REDIRECT = 2048


def redirect_target(value: object) -> str:
    """The `redir_url` to answer `303` with: one absolute http(s) URL, ASCII without spaces or
    control characters (it goes into the Location header as it is). Given more than once,
    the first is taken, as LeadConduit takes it."""
    problem = "redir_url must be one absolute http or https URL"
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or not 0 < len(value) <= MAX_REDIRECT:
        raise BadRequest(problem)
    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise BadRequest(problem)
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a port that is no number
    except ValueError:
        raise BadRequest(problem) from None
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        raise BadRequest(problem)
    return value


@dataclass(frozen=True)
class SubmissionResult:
    outcome: str
    reason: str | None
    lead_id: str | None
    price: Decimal

    def as_dict(self) -> dict[str, Any]:
        """Field order of SPEC 5.1; `reason` absent on success."""
        data: dict[str, Any] = {"outcome": self.outcome}
        if self.reason is not None and self.outcome != "success":
            data["reason"] = self.reason
        if self.lead_id is not None:
            data["lead"] = {"id": self.lead_id}
        data["price"] = self.price
        return data


def render(data: Mapping[str, Any], media_type: str) -> bytes:
    """A response body: JSON, XML `<result>…</result>`, or `key:value` lines."""
    if media_type == "application/json":
        return orjson.dumps(data, default=_json_default)
    if media_type in XML_TYPES:
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + _xml("result", data).encode()
    return "".join(f"{key}:{value}\n" for key, value in _flat(data)).encode()


def error_response(
    status: int, reason: str, media: str = "application/json", *, outcome: str = "failure"
) -> web.Response:
    """Every 4xx/5xx of the gateway: `{"outcome","reason"}` in the negotiated media type."""
    body = render({"outcome": outcome, "reason": reason}, media)
    return web.Response(status=status, body=body, content_type=media)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return orjson.Fragment(format_money(value))  # a JSON number, exact to the cent
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format_money(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _xml(tag: str, value: Any) -> str:
    if isinstance(value, Mapping):
        inner = "".join(_xml(key, item) for key, item in value.items())
        return f"<{tag}>{inner}</{tag}>"
    return f"<{tag}>{_escape(_text(value))}</{tag}>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _flat(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _text(value).replace("\n", " ")
