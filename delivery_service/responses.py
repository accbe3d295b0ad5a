"""Turning a buyer's HTTP answer into an outcome, reasons, a price and a reference (SPEC 8.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _defused_fromstring

from leadflow.config import ResponseRules
from leadflow.money import cents, is_price, parse_amount

# What a search term that did not match means, by what a match would mean.
OPPOSITE = {"success": "failure", "failure": "success", "error": "success"}


@dataclass(frozen=True)
class Verdict:
    """What the buyer's answer means: outcome, reason (empty on success), price and reference."""

    outcome: str
    reason: str = ""
    price: Decimal | None = None
    reference: str = ""


@dataclass(frozen=True)
class Document:
    """A response body read once: JSON value, XML root element, or neither (text only)."""

    text: str
    json: Any = None
    xml: Element | None = None
    is_json: bool = False


def parse_xml(body: bytes) -> Element | None:
    """The root element, parsed without DTDs' entities or external references; None if unsafe."""
    try:
        root: Element = _defused_fromstring(
            body, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except (ParseError, DefusedXmlException, ValueError):
        return None
    # Buyers often answer in a default namespace; paths are written without it.
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return root


def parse_document(content_type: str, body: bytes) -> Document:
    """Read a body as JSON or XML by its Content-Type, else by its first character."""
    text = body.decode("utf-8", errors="replace")
    kind = content_type.lower()
    head = text.lstrip()[:1]
    if "json" in kind or ("xml" not in kind and head in ("{", "[")):
        try:
            return Document(text=text, json=orjson.loads(body), is_json=True)
        except orjson.JSONDecodeError:
            pass
    if "xml" in kind or head == "<":
        root = parse_xml(body)
        if root is not None:
            return Document(text=text, xml=root)
    return Document(text=text)


def json_values(value: Any, path: str) -> list[Any]:
    """Values at a dot path (`result.errors.0.message`); a list without an index maps over items."""
    path = path.strip().removeprefix("$").lstrip(".")
    current = [value]
    for key in (part for part in path.split(".") if part):
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict):
                if key in item:
                    found.append(item[key])
            elif isinstance(item, list):
                if key.lstrip("-").isdigit():
                    index = int(key)
                    if -len(item) <= index < len(item):
                        found.append(item[index])
                else:
                    found.extend(
                        element[key]
                        for element in item
                        if isinstance(element, dict) and key in element
                    )
        current = found
    # A list at the end of the path is a list of values (several reasons, for instance).
    flat: list[Any] = []
    for item in current:
        flat.extend(item if isinstance(item, list) else [item])
    return [item for item in flat if item is not None]


def xml_values(root: Element, path: str) -> list[str]:
    """Texts at an XPath, within what ElementTree understands (`/a/b`, `//b`, `b[@k='v']`, `@k`).

    A path is tried against the document (so `/result/status` and `result/status` name the
    root) and then against the root element (so `status` works too).
    """
    path = path.strip().removesuffix("/text()")
    attribute = None
    if "/@" in path or path.startswith("@"):
        path, _, attribute = path.rpartition("@")
        path = path.rstrip("/") or "."
    document = Element("document")
    document.append(root)
    if path.startswith("//"):
        attempts = [(document, "." + path)]
    elif path.startswith("/"):
        attempts = [(document, path.lstrip("/"))]
    else:
        attempts = [(document, path), (root, path)]
    for base, relative in attempts:
        try:
            elements = base.findall(relative)
        except (SyntaxError, KeyError, TypeError, ValueError):
            # ElementPath rejects some malformed paths with odd exceptions; none is a match.
            return []
        if elements:
            if attribute is not None:
                return [e.attrib[attribute] for e in elements if attribute in e.attrib]
            return ["".join(element.itertext()).strip() for element in elements]
    return []


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def values_at(document: Document, path: str) -> list[Any]:
    """The values a path names in a body: JSON dot path or XPath; none for plain text."""
    if document.is_json:
        return json_values(document.json, path)
    if document.xml is not None:
        return xml_values(document.xml, path)
    return []


# Buyer text becomes reasons and references stored with the lead: control characters (NUL,
# which PostgreSQL text refuses, line breaks) become spaces and the length is bounded.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_TEXT = 500


def buyer_text(value: str) -> str:
    return _CONTROL.sub(" ", value).strip()[:MAX_TEXT]


def texts_at(document: Document, path: str | None) -> list[str]:
    if not path:
        return []
    return [text for text in (buyer_text(_as_text(v)) for v in values_at(document, path)) if text]


@lru_cache(maxsize=512)
def _search_term(term: str) -> re.Pattern[str]:
    return re.compile(term, re.IGNORECASE)


def search_matches(rules: ResponseRules, document: Document) -> bool:
    """Whether the search term occurs in the value at the search path (or the whole body)."""
    assert rules.outcome_search_term is not None
    pattern = _search_term(rules.outcome_search_term)
    if rules.outcome_search_path:
        candidates = [_as_text(v) for v in values_at(document, rules.outcome_search_path)]
    else:
        candidates = [document.text]
    return any(pattern.search(candidate) for candidate in candidates)


def find_price(document: Document, path: str | None) -> Decimal | None:
    """The first value at the path that is a usable price (0 to 1,000,000), in cents."""
    if not path:
        return None
    for value in values_at(document, path):
        amount = parse_amount(value)
        if is_price(amount):
            assert amount is not None
            return cents(amount)
    return None


def interpret(rules: ResponseRules, status: int, content_type: str, body: bytes) -> Verdict:
    """The verdict on one HTTP answer; a 5xx is an error whatever the body says."""
    if status >= 500:
        return Verdict("error", f"HTTP {status}")
    document = parse_document(content_type, body)
    ok = 200 <= status < 300
    if rules.outcome_search_term:
        matched = search_matches(rules, document)
        outcome = rules.outcome_on_match if matched else OPPOSITE[rules.outcome_on_match]
    else:
        outcome = "success" if ok else "failure"
    reason = ""
    if outcome != "success":
        reasons = sorted(set(texts_at(document, rules.reason_path)))
        if reasons:
            reason = ", ".join(reasons)
        elif rules.default_reason:
            reason = rules.default_reason
        elif not ok:
            reason = f"HTTP {status}"
        else:
            reason = "Rejected by buyer" if outcome == "failure" else "Error reported by buyer"
    references = texts_at(document, rules.reference_path)
    return Verdict(
        outcome=outcome,
        reason=reason,
        price=find_price(document, rules.price_path),
        reference=references[0] if references else "",
    )
