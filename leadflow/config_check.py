"""What a schema cannot see: references between ids, rules against field types, templates,
currency codes, and features this version does not run yet (reported, never silently ignored).
Also the `(did you mean 'x'?)` of every problem where a near name exists (SPEC section 3)."""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import pycountry
from pydantic import BaseModel, ValidationError

from leadflow.config import (
    Buyer,
    Cap,
    Config,
    Delivery,
    Flow,
    Hours,
    HttpDelivery,
    Pricing,
    Problem,
    RuleSetSpec,
    Territory,
    format_path,
)
from leadflow.expressions import ExpressionError
from leadflow.fields import STANDARD_FIELDS, parse_value
from leadflow.geo import zip_centroid
from leadflow.rules import OPERATORS, RuleError
from leadflow.templates import TemplateError, compile_template
from leadflow.variables import ALIASES, RESERVED, components

Loc = tuple[int | str, ...]


def _problem(loc: Loc, message: str) -> Problem:
    return Problem(path=format_path(loc), message=message)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a choice is near `name` (difflib's ratio 0.6 and up), else ''."""
    near = difflib.get_close_matches(name, sorted(set(choices)), n=1)
    return f" (did you mean {near[0]!r}?)" if near and near[0] != name else ""


# --- Keys: what the schema allows where an unknown key was written -----------------------------


def _members(annotation: Any) -> Iterator[Any]:
    """The types an annotation may hold: Annotated, Optional and unions unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _members(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _members(arg)
    else:
        yield annotation


def _field_names(model: type[BaseModel]) -> dict[str, Any]:
    """A model's keys as written in YAML (aliases, such as email's `from`) and their types."""
    return {(info.alias or name): info.annotation for name, info in model.model_fields.items()}


def _models_at(loc: Loc) -> list[type[BaseModel]]:
    """The config models that may sit at `loc` (several for a union such as a delivery)."""
    current: list[Any] = [Config]
    for part in loc:
        following: list[Any] = []
        for candidate in current:
            for member in _members(candidate):
                origin = typing.get_origin(member)
                if isinstance(part, int) and origin is list:
                    following.extend(_members(typing.get_args(member)[0]))
                elif isinstance(part, str) and origin is dict:
                    following.extend(_members(typing.get_args(member)[1]))
                elif isinstance(member, type) and issubclass(member, BaseModel):
                    fields = _field_names(member)
                    if isinstance(part, str) and part in fields:
                        following.extend(_members(fields[part]))
                    elif isinstance(part, str) and _is_tag(member, part):
                        following.append(member)  # a tagged union's tag in pydantic's loc
        current = following
    return [item for item in current if isinstance(item, type) and issubclass(item, BaseModel)]


def _is_tag(model: type[BaseModel], tag: str) -> bool:
    kind = model.model_fields.get("type")
    return kind is not None and tag in typing.get_args(kind.annotation)


def unknown_key_message(loc: Loc) -> str:
    """`unknown key 'stat' (did you mean 'state'?)` for pydantic's extra_forbidden at `loc`."""
    key = str(loc[-1])
    allowed = [name for model in _models_at(loc[:-1]) for name in _field_names(model)]
    return f"unknown key {key!r}{did_you_mean(key, allowed)}"


_QUOTED = re.compile(r"'([^']*)'")


def choice_hint(given: object, expected: str) -> str:
    """A near choice for a literal or tag error, whose `expected` lists `'a', 'b' or 'c'`."""
    if not isinstance(given, str):
        return ""
    return did_you_mean(given, _QUOTED.findall(expected))


# --- Currency ---------------------------------------------------------------------------------


@cache
def _currency_codes() -> frozenset[str]:
    return frozenset(currency.alpha_3 for currency in pycountry.currencies)


# Suggested first when near: a typo of USD is far likelier to mean USD than UZS or USN.
_COMMON_CURRENCIES = ("USD", "EUR", "GBP", "CAD", "AUD", "NZD", "JPY", "CHF", "MXN", "INR")


def _check_currency(code: str) -> Iterator[Problem]:
    if code not in _currency_codes():
        hint = did_you_mean(code, _COMMON_CURRENCIES) or did_you_mean(code, _currency_codes())
        yield _problem(("account", "currency"), f"unknown ISO 4217 currency code {code!r}{hint}")


# Features whose configuration is understood but which this version does not run yet are
# refused with this problem (removed when the issue that builds one lands), so nobody believes a
# feature protects them when it does not.
def _not_supported(loc: Loc, what: str) -> Problem:
    return _problem(loc, f"{what} is not supported yet")


def salvage_problems(tree: dict[str, Any], error: ValidationError) -> list[Problem]:
    """The meaning problems of a configuration whose structure is also wrong, so one run of
    `leadflow check` shows a typo'd key and a typo'd field together: unknown keys, and choices
    that are none of a field's choices, are dropped (a field then takes its default) and what is
    left is checked. Any other error, or a dropped choice that was required, adds nothing,
    rather than problems of a configuration the file does not hold (a buyer whose broken
    delivery was dropped is not "a buyer without delivery")."""
    pruned = copy.deepcopy(tree)
    for item in error.errors():
        loc = item["loc"]
        if item["type"] not in ("extra_forbidden", "literal_error") or not loc:
            return []
        if not isinstance(loc[-1], str):
            return []
        if item["type"] == "literal_error" and not any(
            loc[-1] in _field_names(model) for model in _models_at(loc[:-1])
        ):
            return []  # a map's entry, such as a custom field's type: dropping it changes types
        parent: Any = pruned
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                if isinstance(part, str) and isinstance(parent, dict):
                    continue  # a union tag in pydantic's loc: the data has no such level
                return []
        if not isinstance(parent, dict):
            return []
        parent.pop(loc[-1], None)
    try:
        config = Config.model_validate(pruned)
    except ValidationError:
        return []
    return check_semantics(config)


def check_semantics(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    problems += _check_currency(config.account.currency)
    problems += _duplicate_ids(config)
    all_fields = {name: kind for flow in config.flows for name, kind in flow.fields.items()}
    for i, buyer in enumerate(config.buyers):
        problems += _check_buyer(buyer, ("buyers", i), all_fields)
    for i, flow in enumerate(config.flows):
        problems += _check_flow(config, flow, ("flows", i))
    return problems


def _duplicate_ids(config: Config) -> Iterator[Problem]:
    sections = {
        "sources": [source.id for source in config.sources],
        "buyers": [buyer.id for buyer in config.buyers],
        "flows": [flow.id for flow in config.flows],
    }
    for section, ids in sections.items():
        counts = Counter(ids)
        for i, item_id in enumerate(ids):
            if counts[item_id] > 1:
                yield _problem((section, i, "id"), f"duplicate id {item_id!r}")
                counts[item_id] = 0  # report each duplicate once


def _check_buyer(buyer: Buyer, loc: Loc, fields: dict[str, str]) -> Iterator[Problem]:
    """`fields`: every flow's custom fields, since a buyer's rules apply in every flow."""
    yield from _check_rule_set(buyer.criteria, (*loc, "criteria"), fields)
    yield from _check_pricing(buyer.pricing, (*loc, "pricing"), fields)
    yield from _check_caps(buyer.caps, (*loc, "caps"), fields)
    yield from _check_hours(buyer.hours, (*loc, "hours"))
    if buyer.territory is not None:
        yield from _check_territory(buyer.territory, (*loc, "territory"))
    if buyer.ping is not None:
        if isinstance(buyer.ping, HttpDelivery):
            yield from _check_delivery(buyer.ping, (*loc, "ping"))
        else:
            yield _problem((*loc, "ping", "type"), "a ping is an http request")
    if buyer.delivery is not None:
        yield from _check_delivery(buyer.delivery, (*loc, "delivery"))


def _check_flow(config: Config, flow: Flow, loc: Loc) -> Iterator[Problem]:
    fields = dict(flow.fields)
    yield from _check_rule_set(flow.acceptance, (*loc, "acceptance"), fields)
    yield from _check_pricing(flow.pricing, (*loc, "pricing"), fields)
    yield from _check_caps(flow.caps, (*loc, "caps"), fields)
    yield from _check_hours(flow.hours, (*loc, "hours"))
    seen_sources: set[str] = set()
    for j, entry in enumerate(flow.sources):
        entry_loc = (*loc, "sources", j)
        if entry.source not in config.sources_by_id:
            hint = did_you_mean(entry.source, config.sources_by_id)
            yield _problem((*entry_loc, "source"), f"unknown source {entry.source!r}{hint}")
        if entry.source in seen_sources:
            yield _problem((*entry_loc, "source"), f"source {entry.source!r} is listed twice")
        seen_sources.add(entry.source)
        yield from _check_rule_set(entry.acceptance, (*entry_loc, "acceptance"), fields)
        yield from _check_pricing(entry.pricing, (*entry_loc, "pricing"), fields, source=True)
        yield from _check_caps(entry.caps, (*entry_loc, "caps"), fields)
        yield from _check_hours(entry.hours, (*entry_loc, "hours"))
    for s, stage in enumerate(flow.stages):
        stage_loc = (*loc, "stages", s)
        for k, step in enumerate(stage.steps):
            step_loc = (*stage_loc, "steps", k)
            buyer = config.buyers_by_id.get(step.buyer)
            if buyer is None:
                hint = did_you_mean(step.buyer, config.buyers_by_id)
                yield _problem((*step_loc, "buyer"), f"unknown buyer {step.buyer!r}{hint}")
            elif buyer.delivery is None:
                yield _problem((*step_loc, "buyer"), f"buyer {step.buyer!r} has no delivery")
            yield from _check_rule_set(step.criteria, (*step_loc, "criteria"), fields)
            yield from _check_pricing(step.pricing, (*step_loc, "pricing"), fields)
            yield from _check_caps(step.caps, (*step_loc, "caps"), fields)


def _check_rule_set(
    spec: RuleSetSpec | None, loc: Loc, custom: dict[str, str]
) -> Iterator[Problem]:
    if spec is None:
        return
    try:
        errors = spec.compiled.operator_errors(custom)  # compiles once and caches it
    except RuleError as exc:
        errors = [exc]
    for error in errors:
        message = error.message
        if message.startswith("unknown operator '"):
            message += did_you_mean(message.split("'")[1].lower(), OPERATORS)
        yield Problem(path=".".join(filter(None, (format_path(loc), error.path))), message=message)
    yield from _check_fields(spec, loc, custom)


def _check_fields(spec: RuleSetSpec, loc: Loc, custom: dict[str, str]) -> Iterator[Problem]:
    """A rule's lhv that is no known field, component or variable but near one is taken for a
    typo. One near nothing is left alone: a vendor may send fields the flow does not declare."""
    try:
        checks = spec.compiled.checks
    except RuleError:
        return  # reported by _check_rule_set
    types_by_name = {**STANDARD_FIELDS, **custom}
    fields = {*types_by_name, *(name.split(".")[0] for name in custom)}
    for check in checks:
        near = _near_variable(check.lhv, fields, types_by_name)
        if near is not None:
            yield Problem(
                path=".".join(filter(None, (format_path(loc), f"{check.path}.lhv"))),
                message=f"unknown field {check.lhv!r} (did you mean {near!r}?)",
            )


def _near_variable(lhv: str, fields: set[str], types_by_name: dict[str, str]) -> str | None:
    """The variable `lhv` was probably meant to be, when it is none itself; else None."""
    prefix, rest = ("lead.", lhv[5:]) if lhv.startswith("lead.") else ("", lhv)
    if rest in types_by_name:
        return None  # a field itself (custom fields may have dotted names)
    name, _, component = rest.partition(".")
    known = fields if prefix else {*fields, *RESERVED, *ALIASES}
    if name not in known:
        hint = did_you_mean(name, known)
        if not hint:
            return None
        name = hint.split("'")[1]
        return prefix + name + (f".{component}" if component else "")
    kind = types_by_name.get(name)
    if kind is None or not component or "." in component or component in components(kind):
        return None
    hint = did_you_mean(component, components(kind))
    return f"{prefix}{name}.{hint.split(chr(39))[1]}" if hint else None


def _check_pricing(
    pricing: Pricing | None, loc: Loc, custom: dict[str, str], *, source: bool = False
) -> Iterator[Problem]:
    if pricing is None:
        return
    if pricing.override and not source:
        yield _problem((*loc, "override"), "override applies to a flow's source pricing only")
    for i, price in enumerate(pricing.prices):
        try:
            price.expression  # noqa: B018 - parses once and caches it for pricing
        except ExpressionError as exc:
            yield _problem((*loc, "prices", i, "amount"), str(exc))
        yield from _check_rule_set(price.rule_set, (*loc, "prices", i, "rule_set"), custom)


def _check_caps(caps: list[Cap], loc: Loc, custom: dict[str, str]) -> Iterator[Problem]:
    for i, cap in enumerate(caps):
        yield from _check_rule_set(cap.rule_set, (*loc, i, "rule_set"), custom)


def _check_hours(hours: Hours | None, loc: Loc) -> Iterator[Problem]:
    """Hours ranges are checked by the schema (HH:MM-HH:MM, start before end)."""
    yield from ()


_POSTAL_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z -]*\*?$")


def _check_territory(territory: Territory, loc: Loc) -> Iterator[Problem]:
    for i, state in enumerate(territory.states):
        if not parse_value("state", state).get("valid"):
            yield _problem((*loc, "states", i), f"unknown US state {state!r}")
    for i, pattern in enumerate(territory.postal_codes):
        if not _POSTAL_PATTERN.match(pattern):
            yield _problem(
                (*loc, "postal_codes", i), f"{pattern!r} is not a postal code or prefix*"
            )
    within = territory.within
    if within is not None and zip_centroid(within.postal_code) is None:
        yield _problem(
            (*loc, "within", "postal_code"), f"no known US ZIP code {within.postal_code!r}"
        )


def _check_delivery(delivery: Delivery, loc: Loc) -> Iterator[Problem]:
    if not isinstance(delivery, HttpDelivery):
        return  # SFTP and email templates, schedule and credentials are checked by the schema
    templates: dict[tuple[str, ...], str] = {("url",): delivery.url}
    templates.update({("headers", name): value for name, value in delivery.headers.items()})
    templates.update({("mapping", name): value for name, value in (delivery.mapping or {}).items()})
    for sub, text in templates.items():
        try:
            compile_template(text)
        except TemplateError as exc:
            yield _problem((*loc, *sub), str(exc))
