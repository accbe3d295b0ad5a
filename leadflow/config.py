"""The configuration schema (SPEC section 3): one YAML file read by every service.

`load_config` returns a frozen, validated `Config` or raises `ConfigError` listing every problem
with its path. Structure is checked by pydantic; meaning (references between ids, operators
against field types, templates, features not built yet) by `leadflow.config_check`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leadflow.fields import FIELD_TYPES
from leadflow.money import MAX_PRICE, parse_amount
from leadflow.patterns import PatternError, check_pattern
from leadflow.payload import unflatten

if TYPE_CHECKING:
    from leadflow.expressions import Expression
    from leadflow.rules import RuleSet

ID_PATTERN = r"^[a-z0-9_-]{1,64}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]
NonEmpty = Annotated[str, Field(min_length=1)]
HOURS_PATTERN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _money(value: object) -> Decimal:
    """Decimal dollars with cents precision, 0 to 1,000,000."""
    amount = parse_amount(value)
    if amount is None:
        raise ValueError(f"{value!r} is not an amount of money")
    if not Decimal(0) <= amount <= MAX_PRICE:
        raise ValueError(f"{amount} is outside 0 to 1,000,000")
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"{amount} has more precision than cents")
    return amount


def _amount(value: object) -> Decimal | str:
    """A price amount: money, or an arithmetic expression over variables (kept as text)."""
    if isinstance(value, str) and parse_amount(value) is None:
        if not value.strip():
            raise ValueError("an amount must not be empty")
        return value.strip()
    return _money(value)


def _time_zone(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a time zone is an IANA name such as America/Chicago")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: name too long
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


Money = Annotated[Decimal, BeforeValidator(_money)]
Amount = Annotated[Decimal | str, BeforeValidator(_amount)]
TimeZone = Annotated[str, BeforeValidator(_time_zone)]


class Model(BaseModel):
    """Every config object: immutable, and an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(Model):
    lhv: NonEmpty
    op: NonEmpty
    rhv: Any = None
    rule_set: RuleSetSpec | None = None
    reason: str | None = None


class RuleSetSpec(Model):
    """`{op: and|or, rules: [...]}`; a plain list means `and`."""

    op: Literal["and", "or"] = "and"
    rules: list[Rule] = []

    @model_validator(mode="before")
    @classmethod
    def _plain_list_means_and(cls, value: Any) -> Any:
        return {"op": "and", "rules": value} if isinstance(value, list) else value

    @cached_property
    def compiled(self) -> RuleSet:
        """The compiled rule set, built once (config_check compiles every one at load)."""
        from leadflow.rules import compile_rule_set

        return compile_rule_set(self.model_dump(exclude_none=True))


class Price(Model):
    amount: Amount
    rule_set: RuleSetSpec | None = None

    @cached_property
    def expression(self) -> Expression | None:
        """The parsed amount expression, or None for a plain amount (parsed once, at load)."""
        from leadflow.expressions import Expression

        return Expression(self.amount) if isinstance(self.amount, str) else None


class PricingServiceSpec(Model):
    url: NonEmpty
    timeout_ms: int = Field(2000, ge=1, le=60_000)
    fallback_price: Money = Decimal(0)
    headers: dict[str, str] = {}


class Pricing(Model):
    prices: list[Price] = []
    service: PricingServiceSpec | None = None
    override: bool = False


class Hours(Model):
    """Opening hours per weekday; a day left out is closed."""

    time_zone: TimeZone | None = None
    monday: list[str] = []
    tuesday: list[str] = []
    wednesday: list[str] = []
    thursday: list[str] = []
    friday: list[str] = []
    saturday: list[str] = []
    sunday: list[str] = []

    @field_validator(*DAYS)
    @classmethod
    def _ranges(cls, ranges: list[str]) -> list[str]:
        for text in ranges:
            match = HOURS_PATTERN.match(text)
            if not match or match.group(1, 2) >= match.group(3, 4):
                raise ValueError(f"{text!r} is not a range such as 09:00-17:00")
        return ranges


class Cap(Model):
    max_leads: int | None = Field(None, ge=0)
    max_amount: Money | None = None
    per: Literal["minute", "hour", "day", "week", "month"]
    every: int = Field(1, ge=1)
    time_zone: TimeZone | None = None
    rule_set: RuleSetSpec | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> Cap:
        if (self.max_leads is None) == (self.max_amount is None):
            raise ValueError("a cap sets exactly one of max_leads and max_amount")
        return self


class Within(Model):
    postal_code: NonEmpty
    miles: Decimal = Field(gt=0, le=5000)


class Territory(Model):
    states: list[str] = []
    postal_codes: list[str] = []
    within: Within | None = None


class Returns(Model):
    window_days: int = Field(30, ge=0)
    max_percent: Decimal = Field(Decimal(100), ge=0, le=100)
    auto_approve: bool = True
    reasons: list[str] = []
    return_to_source: bool = False


class Retry(Model):
    attempts: int = Field(1, ge=1, le=20)
    backoff_ms: int = Field(200, ge=0)
    multiplier: Decimal = Field(Decimal(2), ge=1)
    max_backoff_ms: int = Field(2000, ge=0)
    # The buyer de-duplicates on `webhook-id`: a delivery whose fate a crash left unknown is
    # sent again on restart (SPEC 8.1) instead of waiting for an operator.
    idempotent: bool = False


class BasicAuth(Model):
    type: Literal["basic"]
    username: str
    password: str


class BearerAuth(Model):
    type: Literal["bearer"]
    token: str


# A `capture` name: kept on the recipient event under it, so it is a plain identifier.
_CAPTURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_CAPTURES = 32


class ResponseRules(Model):
    """How a buyer's answer is read (SPEC 8.1), LeadConduit's custom integration settings."""

    outcome_search_term: str | None = None
    outcome_search_path: str | None = None
    outcome_on_match: Literal["success", "failure", "error"] = "success"
    reason_path: str | None = None
    price_path: str | None = None
    # The buyer's price when `price_path` finds none (LeadConduit's setting of that name).
    fallback_price: Money | None = None
    reference_path: str | None = None
    default_reason: str | None = None
    # Parse the answer as this media type whatever its Content-Type says.
    response_content_type_override: str | None = None
    # The first Set-Cookie header (sorted) matching this is kept on the event as `cookie`.
    cookie_search_term: str | None = None
    # name -> expression with one group: the first group's text is kept on the event.
    capture: dict[str, str] = {}

    @field_validator("outcome_on_match", mode="before")
    @classmethod
    def _outcome(cls, value: Any) -> Any:
        # LeadConduit settings may say `Success` or ` failure `.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("outcome_search_term", "cookie_search_term")
    @classmethod
    def _regex(cls, term: str | None) -> str | None:
        if term is not None:
            try:
                check_pattern(term)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
        return term

    @field_validator("response_content_type_override")
    @classmethod
    def _media_type(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\s*[\w.+-]+/[\w.+-]+\s*(;.*)?", value):
            raise ValueError(
                f"{value!r} is not a media type such as application/json, text/xml, "
                "text/html or text/plain"
            )
        return value

    @field_validator("capture")
    @classmethod
    def _captures(cls, capture: dict[str, str]) -> dict[str, str]:
        if len(capture) > MAX_CAPTURES:
            raise ValueError(f"at most {MAX_CAPTURES} captures")
        for name, expression in capture.items():
            if not _CAPTURE_NAME.fullmatch(name):
                raise ValueError(
                    f"capture name {name!r} must be letters, digits and _ (not first a digit), "
                    "at most 64 characters"
                )
            if name == "cookie":
                raise ValueError("capture name 'cookie' is kept for cookie_search_term")
            try:
                check_pattern(expression, groups=1)
            except PatternError as exc:
                raise ValueError(f"capture {name}: {exc}") from None
        return capture


class CircuitBreakerSpec(Model):
    """After `errors` consecutive delivery errors, stop calling the buyer for `cooldown_s`."""

    errors: int = Field(5, ge=1, le=1000)
    cooldown_s: float = Field(30, gt=0, le=86_400)


class HttpDelivery(Model):
    type: Literal["http"]
    url: NonEmpty
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    format: Literal["json", "form", "xml", "query"] = "json"
    headers: dict[str, str] = {}
    auth: Annotated[BasicAuth | BearerAuth, Field(discriminator="type")] | None = None
    mapping: dict[str, str] | None = None
    timeout_ms: int = Field(10_000, ge=1, le=300_000)
    retry: Retry | None = None
    response: ResponseRules = ResponseRules()
    signing_secret: str | None = None
    circuit_breaker: CircuitBreakerSpec | None = None

    @property
    def nests_mapping(self) -> bool:
        """A JSON or XML body nests the mapping's dot keys (`a.b` -> `{a: {b: …}}`)."""
        return self.mapping is not None and self.format in ("json", "xml") and self.method != "GET"

    @model_validator(mode="after")
    def _placeable_mapping(self) -> HttpDelivery:
        """A dot key that cannot be nested (`a` beside `a.b`, `a..b`) is refused at load rather
        than sent in a shape the mapping does not describe."""
        if self.nests_mapping:
            try:
                unflatten(self.mapping or {})
            except ValueError as exc:
                raise ValueError(f"mapping: {exc}") from None
        return self

    @field_validator("signing_secret")
    @classmethod
    def _webhook_secret(cls, secret: str | None) -> str | None:
        """Standard Webhooks secrets are `whsec_<base64>`; a broken one would sign nothing."""
        if secret is not None and secret.startswith("whsec_"):
            try:
                base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                raise ValueError("a whsec_ secret must be base64 after the prefix") from None
        return secret


def _schedule(value: object) -> str:
    """`realtime`, or a cron expression croniter reads (five fields, or six with seconds)."""
    from croniter import croniter

    if not isinstance(value, str) or not value.strip():
        raise ValueError("a schedule is 'realtime' or a cron expression such as '0 * * * *'")
    value = value.strip()
    if value != "realtime" and not croniter.is_valid(value):
        raise ValueError(f"{value!r} is neither 'realtime' nor a valid cron expression")
    return value


def _template(value: object) -> str:
    """Template text that compiles (checked at load, not when the first file is written)."""
    from leadflow.templates import TemplateError, compile_template

    if not isinstance(value, str):
        raise ValueError("a template is text")
    try:
        compile_template(value)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return value


def _host_key(value: object) -> str:
    """A pinned SSH public key, `<algorithm> <base64> [comment]` as in known_hosts."""
    import asyncssh

    if not isinstance(value, str):
        raise ValueError("host_key is a public key such as 'ssh-ed25519 AAAA…'")
    try:
        asyncssh.import_public_key(value.strip())
    except (asyncssh.KeyImportError, ValueError):
        raise ValueError("host_key is not an SSH public key such as 'ssh-ed25519 AAAA…'") from None
    return value.strip()


Schedule = Annotated[str, BeforeValidator(_schedule)]
TemplateText = Annotated[str, BeforeValidator(_template)]
HostKey = Annotated[str, BeforeValidator(_host_key)]


class SftpDelivery(Model):
    type: Literal["sftp"]
    host: NonEmpty
    port: int = Field(22, ge=1, le=65535)
    username: str = ""
    password: str | None = None
    private_key_file: str | None = None
    host_key: HostKey
    directory: str = "."
    filename: TemplateText = "leads-{{batch.timestamp}}.csv"
    schedule: Schedule = "realtime"
    columns: dict[str, TemplateText] | None = None
    zip: bool = False
    timeout_ms: int = Field(20_000, ge=1, le=300_000)

    @model_validator(mode="after")
    def _credentials(self) -> SftpDelivery:
        if self.password is None and self.private_key_file is None:
            raise ValueError("SFTP delivery needs a password or a private_key_file")
        return self


class Smtp(Model):
    host: NonEmpty
    port: int = Field(587, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: str | None = None


class EmailDelivery(Model):
    type: Literal["email"]
    smtp: Smtp
    from_: str = Field("leads@localhost", alias="from")
    to: list[NonEmpty] = Field(min_length=1)
    subject: TemplateText = "Leads {{batch.date}}"
    schedule: Schedule = "realtime"
    columns: dict[str, TemplateText] | None = None
    # The attachment's name for a batch mail.
    filename: TemplateText = "leads-{{batch.timestamp}}.csv"
    timeout_ms: int = Field(20_000, ge=1, le=300_000)
    zip: bool = False


Delivery = Annotated[HttpDelivery | SftpDelivery | EmailDelivery, Field(discriminator="type")]


class Account(Model):
    name: NonEmpty
    time_zone: TimeZone = "UTC"
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    admin_api_key: str | None = None
    allow_private_network_delivery: bool = False


class RateLimit(Model):
    """A source's request budget: `requests` per `per`, refilled continuously (token bucket)."""

    requests: int = Field(ge=1, le=1_000_000)
    per: Literal["second", "minute"]

    @property
    def seconds(self) -> float:
        return 1.0 if self.per == "second" else 60.0


class Source(Model):
    id: Id
    name: NonEmpty
    api_key: NonEmpty
    rate_limit: RateLimit | None = None


class Buyer(Model):
    id: Id
    name: NonEmpty
    api_key: str | None = None
    time_zone: TimeZone | None = None
    criteria: RuleSetSpec | None = None
    territory: Territory | None = None
    hours: Hours | None = None
    caps: list[Cap] = []
    pricing: Pricing | None = None
    returns: Returns | None = None
    ping: Delivery | None = None
    delivery: Delivery | None = None


class Step(Model):
    buyer: Id
    criteria: RuleSetSpec | None = None
    pricing: Pricing | None = None
    caps: list[Cap] = []
    priority: int | None = None
    weight: Decimal = Field(Decimal(1), gt=0)


class Stage(Model):
    name: NonEmpty
    strategy: Literal[
        "priority", "round_robin", "weighted", "highest_price", "auction", "performance"
    ] = "priority"
    sell: int = Field(1, ge=1)
    exclusive: bool = False
    deadline_ms: int = Field(1000, ge=1, le=60_000)
    min_bid: Money = Decimal(0)
    steps: list[Step] = Field(min_length=1)


class FlowSource(Model):
    source: Id
    pricing: Pricing | None = None
    acceptance: RuleSetSpec | None = None
    hours: Hours | None = None
    caps: list[Cap] = []


class Duplicates(Model):
    fields: list[NonEmpty] = Field(min_length=1)
    within_days: int = Field(30, ge=1)
    reason: str = "Duplicate lead"


class Flow(Model):
    id: Id
    name: NonEmpty
    time_zone: TimeZone | None = None
    fields: dict[str, Literal[tuple(sorted(FIELD_TYPES))]] = {}  # type: ignore[valid-type]
    require_sale: bool = False
    hours: Hours | None = None
    acceptance: RuleSetSpec | None = None
    duplicates: Duplicates | None = None
    caps: list[Cap] = []
    pricing: Pricing | None = None
    sources: list[FlowSource] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)

    @cached_property
    def sources_by_id(self) -> dict[str, FlowSource]:
        return {entry.source: entry for entry in self.sources}


def sale_pricing(step: Step, buyer: Buyer) -> Literal["none", "rules", "service"]:
    """Where a step's sale price comes from before delivery (step pricing, then the buyer's):
    `service` when a pricing service may be called, `rules` when rules alone decide, `none`
    when nothing is configured ($0.00, layer `none`). Pricing quotes `rules` steps with the
    purchase price; routing quotes `service` steps itself and prices `none` steps at zero."""
    blocks = [block for block in (step.pricing, buyer.pricing) if block is not None]
    if any(block.service is not None for block in blocks):
        return "service"
    return "rules" if blocks else "none"


class Config(Model):
    account: Account
    sources: list[Source] = []
    buyers: list[Buyer] = []
    flows: list[Flow] = []

    @cached_property
    def sources_by_id(self) -> dict[str, Source]:
        return {source.id: source for source in self.sources}

    @cached_property
    def buyers_by_id(self) -> dict[str, Buyer]:
        return {buyer.id: buyer for buyer in self.buyers}

    @cached_property
    def flows_by_id(self) -> dict[str, Flow]:
        return {flow.id: flow for flow in self.flows}

    def step(self, flow_id: str, stage_index: int, step_index: int) -> Step:
        """A configured step by its place, or LookupError naming what is missing (the flow,
        the stage or the step)."""
        flow = self.flows_by_id.get(flow_id)
        if flow is None:
            raise LookupError(f"unknown flow {flow_id!r}")
        if not 0 <= stage_index < len(flow.stages):
            raise LookupError(f"flow {flow_id!r} has no stage {stage_index}")
        steps = flow.stages[stage_index].steps
        if not 0 <= step_index < len(steps):
            raise LookupError(f"stage {stage_index} of flow {flow_id!r} has no step {step_index}")
        return steps[step_index]

    def pricing_blocks(self) -> list[Pricing | None]:
        """Every pricing block in the configuration: buyers, flows, flow sources and steps."""
        blocks = [buyer.pricing for buyer in self.buyers]
        for flow in self.flows:
            blocks.append(flow.pricing)
            blocks.extend(entry.pricing for entry in flow.sources)
            blocks.extend(step.pricing for stage in flow.stages for step in stage.steps)
        return blocks

    def flow_time_zone(self, flow: Flow) -> str:
        return flow.time_zone or self.account.time_zone

    def buyer_time_zone(self, buyer: Buyer, flow: Flow) -> str:
        return buyer.time_zone or self.flow_time_zone(flow)


class Problem(BaseModel):
    """One thing wrong with a configuration, at a path like `flows[0].stages[1].steps[2].buyer`."""

    model_config = ConfigDict(frozen=True)
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


def format_path(loc: tuple[int | str, ...]) -> str:
    """('flows', 0, 'stages', 1) -> 'flows[0].stages[1]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(
    tree: Any, env: Mapping[str, str], problems: list[Problem], loc: tuple[int | str, ...] = ()
) -> Any:
    """Replace `${VAR}` (or `${VAR:-default}`) in every string; an unset variable is a problem."""
    if isinstance(tree, dict):
        return {
            key: substitute_env(value, env, problems, (*loc, key)) for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [substitute_env(value, env, problems, (*loc, i)) for i, value in enumerate(tree)]
    if not isinstance(tree, str) or "${" not in tree:
        return tree

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(
            Problem(path=format_path(loc), message=f"environment variable {name} is not set")
        )
        return match.group(0)  # left as written, so the schema does not report it a second time

    return _ENV_PATTERN.sub(replace, tree)


def _pydantic_problems(error: ValidationError) -> Iterator[Problem]:
    from leadflow.config_check import choice_hint, unknown_key_message

    for item in error.errors():
        loc = list(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        # Near names for typos (SPEC 3): computed on pydantic's loc, which keeps union tags.
        if item["type"] == "extra_forbidden":
            message = unknown_key_message(tuple(loc))
        elif item["type"] == "literal_error":
            message += choice_hint(item["input"], str(item.get("ctx", {}).get("expected", "")))
        elif item["type"] == "union_tag_invalid":
            ctx = item.get("ctx", {})
            message += choice_hint(ctx.get("tag"), str(ctx.get("expected_tags", "")))
        # Tagged unions add the tag to the location; a reader knows it from `type`.
        loc = [
            part
            for i, part in enumerate(loc)
            if not (i and loc[i - 1] in ("delivery", "ping", "auth"))
        ]
        yield Problem(path=format_path(tuple(loc)), message=message)


def _yaml_message(exc: yaml.YAMLError) -> str:
    """One line; where the problem is comes as LINE:COL from `leadflow check`."""
    if not isinstance(exc, yaml.MarkedYAMLError) or not exc.problem:
        return "not valid YAML: " + " ".join(str(exc).split())
    message = f"not valid YAML: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        mark = exc.context_mark
        message += f" ({exc.context} at line {mark.line + 1}, column {mark.column + 1})"
    elif exc.problem_mark is not None:
        message += f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
    return message


def parse_config(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate YAML text; raise ConfigError with every problem found."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(path="", message=_yaml_message(exc))]) from None
    if not isinstance(tree, dict):
        raise ConfigError([Problem(path="", message="the configuration must be a mapping")])
    problems: list[Problem] = []
    tree = substitute_env(tree, os.environ if env is None else env, problems)
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        from leadflow.config_check import salvage_problems

        problems.extend(_pydantic_problems(exc))
        problems.extend(salvage_problems(tree, exc))
        raise ConfigError(problems) from None
    from leadflow.config_check import check_semantics

    problems.extend(check_semantics(config))
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem(path="", message=f"cannot read {path}: {exc.strerror}")]
        ) from None
    return parse_config(text, env)
