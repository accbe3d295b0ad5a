"""Turning a buyer's HTTP answer into an outcome, reasons, a price, a reference and captured
values (SPEC 8.1).

Buyers migrating from LeadConduit keep their response settings, so an answer is read the way
LeadConduit's custom integration reads it: by its media type (`response_content_type_override`,
else Content-Type), a path is a JSON dot path (`array.0.status`, `errors.*.message`), an XPath 1.0
expression on XML (`string(//status)`, `//*[local-name()='Accepted']`), a CSS selector on HTML
(`div.message`, `#result @code` for an attribute) or, on plain text, a regular expression whose
first group is the value. Values are trimmed before they are matched or kept. Where LeadConduit
and SPEC 8.1 differ (a non-2xx answer without a search term is a failure here), the SPEC decides;
the README's "LeadConduit compatibility" table lists each difference.

Expressions from configuration run with RE2 (linear time on any answer), XML is parsed without
entity expansion, DTD loading or network access, and bodies are at most 1 MiB.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

import lxml.html
import orjson
from cssselect import SelectorError
from lxml import etree
from lxml.cssselect import CSSSelector

from leadflow.config import ResponseRules
from leadflow.money import cents, is_price, parse_amount
from leadflow.patterns import PatternError, compile_pattern, first_group, found_in

# What a search term that did not match means, by what a match would mean.
OPPOSITE = {"success": "failure", "failure": "success", "error": "success"}
COOKIE = "cookie"


@dataclass(frozen=True)
class Verdict:
    """What the buyer's answer means: outcome, reason, price, reference and captured values."""

    outcome: str
    reason: str = ""
    price: Decimal | None = None
    reference: str = ""
    # `cookie` (cookie_search_term) and each `capture` name that found a value.
    captured: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """A response body read once: a JSON value, an XML root, an HTML root, or text only.

    `sniffed` marks a structure guessed from the body's first character rather than declared by
    its media type: a path that finds nothing in it is then also tried as a plain-text
    expression (LeadConduit reads such a body as text).
    """

    text: str
    json: Any = None
    xml: etree._Element | None = None
    html: lxml.html.HtmlElement | None = None
    is_json: bool = False
    sniffed: bool = False


# --- parsing -------------------------------------------------------------------------------


def media_kind(content_type: str) -> str:
    """`json`, `html`, `xml` or `text`, from a media type (parameters ignored)."""
    essence = content_type.split(";", 1)[0].strip().lower()
    if "json" in essence:
        return "json"
    if "html" in essence:
        return "html"
    if "xml" in essence:
        return "xml"
    return "text"


def _xml_parser() -> etree.XMLParser:
    # No entity expansion (billion laughs), no DTD loading, no network (XXE), no huge trees.
    # A parser per answer: lxml parsers must not be shared between threads.
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def _html_parser() -> lxml.html.HTMLParser:
    # The body was decoded as UTF-8 for matching; the tree reads it the same way.
    return lxml.html.HTMLParser(
        encoding="utf-8", no_network=True, huge_tree=False, remove_comments=True
    )


def parse_xml(body: bytes) -> etree._Element | None:
    """The root element, parsed safely; None if it is not XML or declares entities."""
    try:
        root = etree.fromstring(body, _xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        return None
    if root is None:
        return None
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        # An answer that declares entities is refused rather than read half-expanded.
        return None
    # Buyers often answer in a namespace; paths are written without it.
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    etree.cleanup_namespaces(root)
    return root


def parse_html(body: bytes) -> lxml.html.HtmlElement | None:
    if not body.strip():
        return None
    try:
        return lxml.html.document_fromstring(body, parser=_html_parser())
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None


def _json_document(text: str, body: bytes, *, sniffed: bool) -> Document | None:
    try:
        return Document(text=text, json=orjson.loads(body), is_json=True, sniffed=sniffed)
    except orjson.JSONDecodeError:
        return None


def _xml_document(text: str, body: bytes, *, sniffed: bool) -> Document | None:
    root = parse_xml(body)
    return None if root is None else Document(text=text, xml=root, sniffed=sniffed)


def parse_document(content_type: str, body: bytes, override: str | None = None) -> Document:
    """Read a body by its media type (the override, else Content-Type).

    Without an override, an answer whose declared type does not parse, or that declares no
    structured type, is recognised by its first character (`{`/`[` JSON, `<` XML).
    """
    text = body.decode("utf-8", errors="replace")
    kind = media_kind(override or content_type)
    declared: Document | None = None
    if kind == "json":
        declared = _json_document(text, body, sniffed=False)
    elif kind == "xml":
        declared = _xml_document(text, body, sniffed=False)
    elif kind == "html":
        root = parse_html(body)
        declared = Document(text=text, html=root) if root is not None else None
    if declared is not None:
        return declared
    if override is None:
        head = text.lstrip()[:1]
        guessed = None
        if head in ("{", "["):
            guessed = _json_document(text, body, sniffed=True)
        elif head == "<":
            guessed = _xml_document(text, body, sniffed=True)
        if guessed is not None:
            return guessed
    return Document(text=text)


# --- paths ----------------------------------------------------------------------------------


_BRACKET = re.compile(r"\[\s*(\d+|\*)\s*\]")


@lru_cache(maxsize=1024)
def _json_path(path: str) -> tuple[str, ...]:
    """A configured JSON path's keys (read once per path, not once per answer)."""
    # `errors[0].message` (lodash's bracket form) is `errors.0.message`.
    dotted = _BRACKET.sub(r".\1", path.strip().removeprefix("$"))
    return tuple(part for part in dotted.lstrip(".").split(".") if part)


def json_values(value: Any, path: str) -> list[Any]:
    """Values at a dot path: `result.errors.0.message`, `errors.*.message` (`*` is every key or
    item), `array.0.status` for an answer that is an array; a list without an index maps over
    its items."""
    parts = _json_path(path)
    if isinstance(value, list):
        # LeadConduit names an answer that is an array `array`; other paths find nothing in it.
        if parts[:1] != ("array",):
            return []
        parts = parts[1:]
    current = [value]
    for key in parts:
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict):
                if key == "*":
                    found.extend(item.values())
                elif key in item:
                    found.append(item[key])
            elif isinstance(item, list):
                if key == "*":
                    found.extend(item)
                elif key.lstrip("-").isdigit():
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


def _xpath_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value.is_integer():
        return str(int(value))
    return repr(value)


def _xpath_texts(result: Any) -> list[str]:
    """An XPath result as texts: a node's string value, or the string, number or boolean."""
    if isinstance(result, bool):
        return ["true" if result else "false"]
    if isinstance(result, float):
        return [_xpath_number(result)]
    if isinstance(result, str):
        return [str(result)]
    texts: list[str] = []
    if isinstance(result, list):
        for item in result:
            if isinstance(item, etree._Element):
                if isinstance(item.tag, str):
                    texts.append("".join(item.itertext()))
                else:
                    texts.append(item.text or "")  # a comment or processing instruction
            elif isinstance(item, str):
                texts.append(str(item))
    return texts


# A relative location path (`bar/cost/text()`, `outcome`): LeadConduit evaluates it from the
# document, so its first step names the root; leadflow also accepts it from the root element.
_RELATIVE_STEP = re.compile(r"[A-Za-z_][\w.-]*(?:[/\[]|$)")


def xml_values(root: etree._Element, path: str) -> list[str]:
    """Texts an XPath 1.0 expression selects (functions and predicates included); an invalid
    expression selects nothing."""
    path = path.strip()
    if not path:
        return []
    attempts = [path]
    if _RELATIVE_STEP.match(path):
        attempts = ["/" + path, path]
    for expression in attempts:
        try:
            result = root.xpath(expression)
        except (etree.XPathError, ValueError, TypeError):
            return []
        texts = _xpath_texts(result)
        if any(text.strip() for text in texts):
            return texts
    return []


# `selector @attribute`: the attribute's value instead of the element's text (as LeadConduit).
_ATTRIBUTE = re.compile(r"\s*@([A-Za-z_:][-\w:.]*)\s*$")


@lru_cache(maxsize=512)
def _css(selector: str) -> CSSSelector | None:
    try:
        return CSSSelector(selector, translator="html")
    except (SelectorError, ValueError, etree.XPathError):
        return None


def html_elements(root: lxml.html.HtmlElement, selector: str) -> list[Any] | None:
    """Elements a CSS selector matches; None when it is not a valid selector."""
    compiled = _css(selector.strip())
    if compiled is None:
        return None
    return list(compiled(root))


def html_values(root: lxml.html.HtmlElement, path: str) -> list[str] | None:
    """Text (or `@attribute`) of each element a CSS selector matches; None if not a selector."""
    attribute = _ATTRIBUTE.search(path)
    selector = path[: attribute.start()] if attribute else path
    elements = html_elements(root, selector)
    if elements is None:
        return None
    if attribute is not None:
        name = attribute.group(1)
        return [str(e.get(name)) for e in elements if e.get(name) is not None]
    return [str(e.text_content()) for e in elements]


def _inner_html(element: Any) -> str:
    children = "".join(lxml.html.tostring(child, encoding="unicode") for child in element)
    return html.escape(element.text or "", quote=False) + children


def text_values(text: str, path: str) -> list[str]:
    """On plain text a path is a regular expression; its first group is the value."""
    value = first_group(path, text)
    return [] if value is None else [value]


def _values(document: Document, path: str, html_value: Callable[[Any], str] | None) -> list[Any]:
    found: list[Any] | None
    if document.is_json:
        found = json_values(document.json, path)
    elif document.xml is not None:
        found = xml_values(document.xml, path)
    elif document.html is not None:
        if html_value is None:
            found = html_values(document.html, path)
        else:
            elements = html_elements(document.html, path)
            found = None if elements is None else [html_value(e) for e in elements]
        if found is None:
            # Not a CSS selector (`"message":"([^"]+)"`): read as an expression on the text.
            found = text_values(document.text, path)
    else:
        found = text_values(document.text, path)
    if not found and document.sniffed:
        found = text_values(document.text, path)
    return found


def values_at(document: Document, path: str) -> list[Any]:
    """The values a path names in a body (JSON, XPath, CSS selector or text expression)."""
    return _values(document, path, None)


# --- values ---------------------------------------------------------------------------------


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


# Buyer text becomes reasons and references stored with the lead: control characters (NUL,
# which PostgreSQL text refuses, line breaks) become spaces and the length is bounded.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_TEXT = 500
# A Set-Cookie header is kept whole; browsers bound a cookie at 4 KiB.
MAX_COOKIE = 4096


def buyer_text(value: str, limit: int = MAX_TEXT) -> str:
    return _CONTROL.sub(" ", value).strip()[:limit]


def texts_at(document: Document, path: str | None) -> list[str]:
    """Trimmed, non-empty texts at a path."""
    if not path or not path.strip():
        return []
    texts = (buyer_text(_as_text(value)) for value in values_at(document, path.strip()))
    return [text for text in texts if text]


def search_candidates(document: Document, path: str | None) -> list[str]:
    """What the search term is matched against, trimmed: the values at the search path (on
    HTML, each matched element's inner HTML), else the whole body."""
    if not path or not path.strip():
        candidates = [document.text]
    else:
        found = _values(document, path.strip(), _inner_html)
        candidates = [_as_text(value) for value in found]
    return [text for text in (candidate.strip() for candidate in candidates) if text]


def search_matches(rules: ResponseRules, document: Document) -> bool:
    """Whether the search term occurs in a value at the search path (or the whole body)."""
    assert rules.outcome_search_term is not None
    try:
        pattern = compile_pattern(rules.outcome_search_term)
    except PatternError:
        # Refused when the configuration is checked; a term that slipped through matches nothing.
        return False
    candidates = search_candidates(document, rules.outcome_search_path)
    return any(found_in(pattern, candidate) for candidate in candidates)


def find_price(document: Document, path: str | None) -> Decimal | None:
    """The first value at the path that is a usable price (0 to 1,000,000), in cents."""
    if not path or not path.strip():
        return None
    for value in values_at(document, path.strip()):
        amount = parse_amount(value.strip() if isinstance(value, str) else value)
        if is_price(amount):
            assert amount is not None
            return cents(amount)
    return None


def _price(rules: ResponseRules, document: Document) -> Decimal | None:
    price = find_price(document, rules.price_path)
    if price is None and rules.fallback_price is not None:
        return cents(rules.fallback_price)
    return price


def find_cookie(term: str, set_cookies: Sequence[str]) -> str | None:
    """The first Set-Cookie header, in sorted order, that the term matches (LeadConduit)."""
    try:
        pattern = compile_pattern(term)
    except PatternError:
        return None
    for header in sorted(set_cookies):
        if found_in(pattern, header):
            return buyer_text(header, MAX_COOKIE) or None
    return None


def captured_values(
    rules: ResponseRules, document: Document, set_cookies: Sequence[str]
) -> dict[str, str]:
    """`cookie` and each `capture` that found a non-empty value (the first group, trimmed)."""
    captured: dict[str, str] = {}
    if rules.cookie_search_term:
        cookie = find_cookie(rules.cookie_search_term, set_cookies)
        if cookie:
            captured[COOKIE] = cookie
    for name, expression in rules.capture.items():
        value = first_group(expression, document.text)
        if value:
            text = buyer_text(value)
            if text:
                captured[name] = text
    return captured


def interpret(
    rules: ResponseRules,
    status: int,
    content_type: str,
    body: bytes,
    set_cookies: Sequence[str] = (),
) -> Verdict:
    """The verdict on one HTTP answer; a 5xx is an error whatever the body says."""
    if status >= 500:
        return Verdict("error", f"HTTP {status}")
    document = parse_document(content_type, body, rules.response_content_type_override)
    ok = 200 <= status < 300
    if rules.outcome_search_term and rules.outcome_search_term.strip():
        matched = search_matches(rules, document)
        outcome = rules.outcome_on_match if matched else OPPOSITE[rules.outcome_on_match]
    else:
        outcome = "success" if ok else "failure"
    # Reasons are kept whatever the outcome: a buyer's "Thank you" on a sale is its reason.
    reasons = sorted(texts_at(document, rules.reason_path))  # duplicates kept, as LeadConduit
    default_reason = (rules.default_reason or "").strip()
    if reasons:
        reason = ", ".join(reasons)
    elif default_reason:
        reason = default_reason
    elif not ok and outcome != "success":
        reason = f"HTTP {status}"
    else:
        # As LeadConduit: no reason of our own when the buyer gave none (`default_reason` is
        # the buyer's setting for that).
        reason = ""
    references = texts_at(document, rules.reference_path)
    return Verdict(
        outcome=outcome,
        reason=reason,
        price=_price(rules, document),
        reference=references[0] if references else "",
        captured=captured_values(rules, document, set_cookies),
    )
