"""The HTTP delivery adapter: build a buyer's request, guard the network, send, retry (SPEC 8.1)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from email.utils import parsedate_to_datetime
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from delivery_service import metrics
from delivery_service.responses import interpret
from leadflow.config import BasicAuth, HttpDelivery, Retry
from leadflow.payload import flatten, plain_values, unflatten
from leadflow.templates import Template, compile_template, render_mapping
from leadflow.wire import DeliveryAttempt

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1 << 20
LOGGED_RESPONSE_BYTES = 4096
# The request text kept on the attempt; a lead body is far smaller, this only bounds storage.
LOGGED_REQUEST_CHARS = 65_536
MASK = "***"
USER_AGENT = "leadflow-delivery/0.1"
CONTENT_TYPES = {
    "json": "application/json",
    "form": "application/x-www-form-urlencoded",
    "xml": "application/xml; charset=utf-8",
}
SENSITIVE_NAME = re.compile(
    r"authori[sz]ation|cookie|pass(word|wd)?|secret|token|api[_-]?key|signature|credential",
    re.IGNORECASE,
)
# Cloud metadata endpoints (AWS/GCP/Azure, AWS IPv6, Alibaba, ECS task metadata).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
NO_RETRY = Retry(attempts=1, backoff_ms=0, multiplier=Decimal(1), max_backoff_ms=0)
_XML_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_HEADER_BREAK = re.compile(r"[\r\n]+")


@dataclass(frozen=True)
class DeliveryResult:
    """A delivery's end: outcome, reason (empty on success), price, reference and attempts."""

    outcome: str
    reason: str = ""
    price: Decimal | None = None
    reference: str = ""
    attempts: tuple[DeliveryAttempt, ...] = ()


# --- the network guard --------------------------------------------------------------------


class AddressRefusedError(OSError):
    """A buyer's host is, or resolves to, an address delivery must not reach."""


def forbidden_reason(address: str) -> str | None:
    """Why an IP address is off limits for delivery, or None when it is a public address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        kind = "cloud metadata"
    elif ip.is_loopback:
        kind = "loopback"
    elif ip.is_link_local:
        kind = "link-local"
    elif ip.is_multicast:
        kind = "multicast"
    elif ip.is_unspecified:
        kind = "unspecified"
    elif ip.is_reserved:
        kind = "reserved"
    elif ip.is_private or not ip.is_global:
        kind = "non-public"
    else:
        return None
    return f"a private address ({kind})"


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses private addresses.

    The connector connects to exactly the addresses returned here, so a name that resolves to a
    public address when checked cannot be switched to a private one before connecting.
    """

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        hosts = await self._inner.resolve(host, port, family)
        for item in hosts:
            why = forbidden_reason(item["host"])
            if why is not None:
                raise AddressRefusedError(f"refused: {host} resolves to {item['host']}, {why}")
        return hosts

    async def close(self) -> None:
        await self._inner.close()


def create_session(*, allow_private_network: bool) -> aiohttp.ClientSession:
    """The process's one HTTP session (connection pooling); call it inside the event loop."""
    connector = aiohttp.TCPConnector(
        limit=1000,
        limit_per_host=100,
        resolver=None if allow_private_network else GuardedResolver(),
    )
    # No cookies: one buyer's session cookie must never ride along with another lead.
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    )


def literal_host_refusal(url: str) -> str | None:
    """Refuse a URL whose host is an IP literal (connectors skip the resolver for those)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    why = forbidden_reason(host)
    return None if why is None else f"refused: {host} is {why}"


# --- building the request ------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest:
    """What goes on the wire, and the same request as text with its secrets masked."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    described: str


def _xml_name(name: str) -> str:
    cleaned = _XML_NAME_BAD.sub("_", name) or "_"
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"_{cleaned}"


def _xml_elements(payload: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key, value in payload.items():
        tag = _xml_name(key)
        for item in value if isinstance(value, list) else [value]:
            inner = _xml_elements(item) if isinstance(item, Mapping) else escape(str(item))
            parts.append(f"<{tag}>{inner}</{tag}>")
    return "".join(parts)


def to_xml(payload: Mapping[str, Any]) -> bytes:
    """`<lead><field>value</field>…</lead>`, values escaped."""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<lead>{_xml_elements(payload)}</lead>'.encode()


def with_query(url: str, pairs: list[tuple[str, Any]]) -> str:
    """The URL with the pairs appended to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + [(k, str(v)) for k, v in pairs]
    return urlunsplit(parts._replace(query=urlencode(query)))


def encode(method: str, fmt: str, url: str, payload: Mapping[str, Any]) -> tuple[str, bytes, str]:
    """(url, body, content type) for a payload; GET always carries it in the query string."""
    if method == "GET" or fmt == "query":
        return with_query(url, flatten(payload)), b"", ""
    if fmt == "form":
        return (
            url,
            urlencode([(k, str(v)) for k, v in flatten(payload)]).encode(),
            CONTENT_TYPES[fmt],
        )
    if fmt == "xml":
        return url, to_xml(payload), CONTENT_TYPES[fmt]
    return url, orjson.dumps(payload), CONTENT_TYPES["json"]


def mask_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload with values under secret-looking names (password, token, api_key…) masked."""
    masked: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            masked[key] = mask_payload(value)
        elif SENSITIVE_NAME.search(key):
            masked[key] = MASK
        else:
            masked[key] = value
    return masked


def needs_mask(payload: Mapping[str, Any]) -> bool:
    """Whether `mask_payload` would mask any value of the payload."""
    return any(
        needs_mask(value) if isinstance(value, Mapping) else SENSITIVE_NAME.search(key)
        for key, value in payload.items()
    )


def mask_url(url: str) -> str:
    """The URL without its userinfo password or secret-looking query parameters."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(SENSITIVE_NAME.search(key) for key, _ in pairs):
        query = urlencode([(k, MASK if SENSITIVE_NAME.search(k) else v) for k, v in pairs])
        query = query.replace("%2A%2A%2A", MASK)
    else:
        query = parts.query
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def describe(method: str, masked_url: str, headers: Mapping[str, str], body: bytes) -> str:
    """A request as text: request line (its URL masked by `mask_url`), headers (secret ones
    masked), blank line, body."""
    lines = [f"{method} {masked_url}"]
    for name, value in headers.items():
        lines.append(f"{name}: {MASK if SENSITIVE_NAME.search(name) else value}")
    text = "\n".join(lines) + "\n\n" + body.decode("utf-8", errors="replace")
    if len(text) > LOGGED_REQUEST_CHARS:
        text = text[:LOGGED_REQUEST_CHARS] + f"\n… ({len(body)} bytes in all)"
    return text


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a signing secret, derived as the Standard Webhooks libraries derive it.

    Their verifiers take the secret as text, drop a `whsec_` prefix and base64-decode the rest
    (padding added, stray characters skipped), so a plain secret is decoded too: signing with the
    text's own bytes would fail every buyer's verification. A plain secret that does not decode to
    any bytes cannot be used that way; its text is the key (a buyer passes it to the verifier as
    bytes).
    """
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("signing_secret starts with whsec_ but is not base64") from None
    try:
        key = base64.b64decode(secret + "==")
    except binascii.Error:
        key = b""
    return key or secret.encode()


def signature_headers(
    secret: str | bytes, message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Standard Webhooks headers: HMAC-SHA256 of `id.timestamp.body`, base64, as `v1,<sig>`."""
    key = webhook_key(secret) if isinstance(secret, str) else secret
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def _url_quote(text: str) -> str:
    return quote(text, safe="")


def _path_quote(text: str) -> str:
    # In a path, `.` and `..` are segments that clients and servers collapse (`/leads/../admin`
    # is `/admin`); a value's dots are escaped so that `..` stays data (`%2E%2E`).
    return quote(text, safe="").replace(".", "%2E")


def _outside_templates(text: str) -> list[int]:
    """Indexes of the characters that are not inside a `{{ … }}` expression."""
    outside: list[int] = []
    depth = 0
    index = 0
    while index < len(text):
        if text.startswith("{{", index):
            depth += 1
            index += 2
        elif text.startswith("}}", index) and depth:
            depth -= 1
            index += 2
        else:
            if depth == 0:
                outside.append(index)
            index += 1
    return outside


def split_url_template(text: str) -> tuple[str, str, str]:
    """A URL template as (scheme and host, path, `?query#fragment`), cut outside `{{ }}`."""
    outside = _outside_templates(text)
    end = next((i for i in outside if text[i] in "?#"), len(text))
    start = 0
    scheme = text.find("://")
    if scheme >= 0 and scheme in outside:
        start = next((i for i in outside if scheme + 3 <= i < end and text[i] == "/"), end)
    return text[:start], text[start:end], text[end:]


# What may stay as it is in a path or query when the URL goes out: RFC 3986 pchar and `%`
# (existing escapes are kept, never decoded); anything else (spaces, non-ASCII) is escaped.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def wire_url(url: str) -> URL:
    """The URL as it goes on the wire, path and query byte for byte as built.

    Handed a string, aiohttp (yarl) decodes `%2E` and removes dot segments, so `/a/%2E%2E/b`
    would be sent as `/b`; an already-encoded URL is sent as it is. The host part still goes
    through yarl (IDNA, user info for basic auth).
    """
    parts = urlsplit(url)
    try:
        head = str(URL(urlunsplit((parts.scheme, parts.netloc, "", "", "")))).rstrip("/")
        path = quote(parts.path, safe=_PATH_SAFE) or "/"
        query = quote(parts.query, safe=_QUERY_SAFE)
        return URL(head + path + (f"?{query}" if query else ""), encoded=True)
    except ValueError:
        raise aiohttp.InvalidURL(url) from None


def _header_value(text: str) -> str:
    # A lead value inside a header template must not be able to start a new header.
    return _HEADER_BREAK.sub(" ", text).strip()


class RequestBuilder:
    """A buyer's request templates, compiled once; renders one lead's request."""

    def __init__(self, spec: HttpDelivery) -> None:
        self.spec = spec
        host, path, rest = split_url_template(spec.url)
        self._url_host = compile_template(host)
        self._url_path = compile_template(path)
        self._url_rest = compile_template(rest)
        self._headers: dict[str, Template] = {
            name: compile_template(value) for name, value in spec.headers.items()
        }
        self._mapping: dict[str, Template] | None = (
            None
            if spec.mapping is None
            else {name: compile_template(value) for name, value in spec.mapping.items()}
        )
        self._secrets = self._config_secrets(spec)
        # Decoded once, so a malformed secret stops the server at start rather than each lead.
        self._signing_key = webhook_key(spec.signing_secret) if spec.signing_secret else None
        # Nesting only changes a mapping with a dot key; without one it would copy the dict.
        self._nests = spec.nests_mapping and any("." in key for key in spec.mapping or {})
        # Whether a mapping's rendered payload has values to mask: its keys, and so its shape,
        # are the configuration's (every rendered value is text). None: the lead's own fields
        # go out (no mapping), so it is looked at per lead.
        self._masks: bool | None = None
        if spec.mapping is not None:
            shape = self._shape({key: "" for key in spec.mapping})
            self._masks = mask_payload(shape) != shape
        # The last URL shown masked: a URL without lead values is the same for every lead.
        self._shown_url = ("", "")

    @staticmethod
    def _config_secrets(spec: HttpDelivery) -> tuple[str, ...]:
        found: list[str] = []
        if isinstance(spec.auth, BasicAuth):
            found.append(spec.auth.password)
        elif spec.auth is not None:
            found.append(spec.auth.token)
        if spec.signing_secret:
            found.append(spec.signing_secret)
        found.extend(
            v for k, v in spec.headers.items() if SENSITIVE_NAME.search(k) and "{{" not in v
        )
        # Very short secrets would mask ordinary text; they are masked by name instead.
        return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))

    def _shape(self, rendered: dict[str, Any]) -> dict[str, Any]:
        # The configuration was refused at load if its keys cannot be nested.
        return unflatten(rendered) if self._nests else rendered

    def payload(self, fields: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        if self._mapping is None:
            return plain_values(fields)
        return self._shape(render_mapping(self._mapping, context))

    def _masked_url(self, url: str) -> str:
        if self._shown_url[0] != url:
            self._shown_url = (url, mask_url(url))
        return self._shown_url[1]

    def build(self, fields: Mapping[str, Any], context: Mapping[str, Any]) -> PreparedRequest:
        spec = self.spec
        # Lead values inside the URL are data, never path or query syntax (nor dot segments).
        base_url = (
            self._url_host.render(context, escape=_url_quote)
            + self._url_path.render(context, escape=_path_quote)
            + self._url_rest.render(context, escape=_url_quote)
        ).strip()
        payload = self.payload(fields, context)
        url, body, content_type = encode(spec.method, spec.format, base_url, payload)
        headers: dict[str, str] = {"User-Agent": USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        for name, template in self._headers.items():
            headers[name] = _header_value(template.render(context))
        if isinstance(spec.auth, BasicAuth):
            credentials = f"{spec.auth.username}:{spec.auth.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        elif spec.auth is not None:
            headers["Authorization"] = f"Bearer {spec.auth.token}"
        masks = self._masks if self._masks is not None else needs_mask(payload)
        if masks:
            shown_url, shown_body, _ = encode(
                spec.method, spec.format, base_url, mask_payload(payload)
            )
        else:  # the masked payload would be an equal copy, encoded the same
            shown_url, shown_body = url, body
        described = describe(spec.method, self._masked_url(shown_url), headers, shown_body)
        for secret in self._secrets:
            described = described.replace(secret, MASK)
        return PreparedRequest(spec.method, url, headers, body, described)

    def sign(self, request: PreparedRequest, message_id: str, timestamp: int) -> PreparedRequest:
        """The request with `webhook-id` (the recipient event id: a buyer de-duplicates on it)
        and `webhook-timestamp`, signed or not (SPEC 8.1), and with a signing secret a fresh
        signature (each attempt has its own timestamp)."""
        signed = (
            signature_headers(self._signing_key, message_id, timestamp, request.body)
            if self._signing_key is not None
            else {"webhook-id": message_id, "webhook-timestamp": str(timestamp)}
        )
        head, _, body_text = request.described.partition("\n\n")
        shown = "\n".join(
            f"{name}: {MASK if name == 'webhook-signature' else value}"
            for name, value in signed.items()
        )
        return replace(
            request,
            headers={**request.headers, **signed},
            described=f"{head}\n{shown}\n\n{body_text}",
        )


# --- sending ---------------------------------------------------------------------------------


def retry_after_ms(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in milliseconds: delta seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when.timestamp() - (time.time() if now is None else now)) * 1000)


def backoff_ms(retry: Retry, failed_attempt: int, retry_after: float | None = None) -> float | None:
    """The wait before the next attempt: the buyer's Retry-After, else exponential (capped).

    None when the buyer asks for a longer wait than `max_backoff_ms`: coming back sooner would
    ignore what it asked, and waiting longer would outlast the caller, so there is no next try.
    """
    if retry_after is not None:
        return retry_after if retry_after <= retry.max_backoff_ms else None
    delay = Decimal(retry.backoff_ms) * retry.multiplier ** (failed_attempt - 1)
    return float(min(delay, Decimal(retry.max_backoff_ms)))


async def read_capped(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of a body, and whether there was more (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), not content.at_eof() and bool(await content.read(1))


def describe_response(response: aiohttp.ClientResponse, body: bytes) -> str:
    version = response.version
    protocol = f"HTTP/{version.major}.{version.minor}" if version is not None else "HTTP"
    head = f"{protocol} {response.status} {response.reason or ''}"
    content_type = response.headers.get("Content-Type")
    lines = [head.rstrip()] + ([f"Content-Type: {content_type}"] if content_type else [])
    shown = body[:LOGGED_RESPONSE_BYTES].decode("utf-8", errors="ignore")
    return "\n".join(lines) + "\n\n" + shown


def connection_reason(exc: aiohttp.ClientError) -> str:
    """A short, PII-free reason for a failed exchange."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL: only http and https URLs with a valid host can be delivered to"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, AddressRefusedError):
            return str(exc.os_error)
        return f"cannot resolve host {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate rejected for {exc.host}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed with {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body broken off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response: {exc.message}"
    return f"connection failed: {type(exc).__name__}"


@dataclass(frozen=True)
class _Exchange:
    attempt: DeliveryAttempt
    result: DeliveryResult
    retryable: bool
    retry_after: float | None = None


class HttpAdapter:
    """Delivers leads to one buyer over HTTP, through the process's shared session."""

    name = "http"

    def __init__(
        self,
        buyer_id: str,
        spec: HttpDelivery,
        session: aiohttp.ClientSession,
        *,
        allow_private_network: bool,
    ) -> None:
        self.buyer_id = buyer_id
        self.spec = spec
        self.builder = RequestBuilder(spec)
        self._session = session
        self._allow_private = allow_private_network
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout_ms / 1000)
        # The last URL as it goes on the wire: one without lead values is the same every time.
        self._wire: tuple[str, URL] | None = None

    def _wire_url(self, url: str) -> URL:
        if self._wire is None or self._wire[0] != url:
            self._wire = (url, wire_url(url))
        return self._wire[1]

    async def deliver(
        self, fields: Mapping[str, Any], context: Mapping[str, Any], message_id: str
    ) -> DeliveryResult:
        """Send the lead, retrying errors as the buyer's `retry` allows; every attempt is kept."""
        request = self.builder.build(fields, context)
        refusal = None if self._allow_private else literal_host_refusal(request.url)
        if refusal is not None:
            attempt = DeliveryAttempt(number=1, request=request.described, error=refusal)
            return DeliveryResult("error", refusal, attempts=(attempt,))
        retry = self.spec.retry or NO_RETRY
        attempts: list[DeliveryAttempt] = []
        number = 0
        while True:
            number += 1
            signed = self.builder.sign(request, message_id, int(time.time()))
            exchange = await self._exchange(number, signed)
            attempts.append(exchange.attempt)
            if not exchange.retryable or number >= retry.attempts:
                return replace(exchange.result, attempts=tuple(attempts))
            delay = backoff_ms(retry, number, exchange.retry_after)
            if delay is None:
                assert exchange.retry_after is not None
                reason = (
                    f"{exchange.result.reason}; Retry-After {exchange.retry_after / 1000:.0f} s "
                    "is longer than max_backoff_ms"
                )
                return replace(exchange.result, reason=reason, attempts=tuple(attempts))
            metrics.DELIVERY_RETRIES.labels(self.buyer_id).inc()
            log.info(
                "buyer %s attempt %d: %s; retrying in %.0f ms",
                self.buyer_id,
                number,
                exchange.result.reason,
                delay,
            )
            await asyncio.sleep(delay / 1000)

    async def _exchange(self, number: int, request: PreparedRequest) -> _Exchange:
        start = perf_counter()

        def elapsed_ms() -> int:
            return round((perf_counter() - start) * 1000)

        try:
            async with self._session.request(
                request.method,
                self._wire_url(request.url),
                headers=request.headers,
                data=request.body or None,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                body, cut = await read_capped(response.content, MAX_RESPONSE_BYTES)
                if cut:
                    # The unread rest would poison a pooled connection: drop this one.
                    response.close()
                content_type = response.headers.get("Content-Type", "")
                set_cookies = response.headers.getall("Set-Cookie", [])
                retry_after = retry_after_ms(response.headers.get("Retry-After"))
                shown = describe_response(response, body)
                status = response.status
        except TimeoutError:
            reason = f"timeout after {self.spec.timeout_ms} ms"
            return self._failed(number, request, reason, elapsed_ms(), retryable=True)
        except aiohttp.ClientError as exc:
            reason = connection_reason(exc)
            # Sending again cannot change a refused address or a malformed URL.
            final = isinstance(exc, aiohttp.InvalidURL) or (
                isinstance(exc, aiohttp.ClientConnectorError)
                and isinstance(exc.os_error, AddressRefusedError)
            )
            return self._failed(number, request, reason, elapsed_ms(), retryable=not final)
        verdict = interpret(self.spec.response, status, content_type, body, set_cookies)
        attempt = DeliveryAttempt(
            number=number,
            request=request.described,
            response=shown,
            status_code=status,
            duration_ms=elapsed_ms(),
            error=verdict.reason if verdict.outcome == "error" else "",
            captured=verdict.captured,
        )
        result = DeliveryResult(verdict.outcome, verdict.reason, verdict.price, verdict.reference)
        # Only transport errors and 5xx are retried; a buyer that says "error" in a 2xx
        # answer has decided, and sending again could sell the lead twice.
        return _Exchange(attempt, result, retryable=status >= 500, retry_after=retry_after)

    @staticmethod
    def _failed(
        number: int, request: PreparedRequest, reason: str, duration_ms: int, *, retryable: bool
    ) -> _Exchange:
        attempt = DeliveryAttempt(
            number=number, request=request.described, duration_ms=duration_ms, error=reason
        )
        return _Exchange(attempt, DeliveryResult("error", reason), retryable=retryable)
