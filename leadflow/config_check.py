"""What a schema cannot see: references between ids, rules against field types, templates, and
features this version does not run yet (reported, never silently ignored)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

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
from leadflow.fields import parse_value
from leadflow.geo import zip_centroid
from leadflow.rules import RuleError
from leadflow.templates import TemplateError, compile_template

Loc = tuple[int | str, ...]


def _problem(loc: Loc, message: str) -> Problem:
    return Problem(path=format_path(loc), message=message)


# Features whose configuration is understood but which this version does not run yet are
# refused with this problem (removed when the issue that builds one lands), so nobody believes a
# feature protects them when it does not.
def _not_supported(loc: Loc, what: str) -> Problem:
    return _problem(loc, f"{what} is not supported yet")


def check_semantics(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    problems += _duplicate_ids(config)
    for i, buyer in enumerate(config.buyers):
        problems += _check_buyer(buyer, ("buyers", i))
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


def _check_buyer(buyer: Buyer, loc: Loc) -> Iterator[Problem]:
    yield from _check_rule_set(buyer.criteria, (*loc, "criteria"), {})
    yield from _check_pricing(buyer.pricing, (*loc, "pricing"), {})
    yield from _check_caps(buyer.caps, (*loc, "caps"), {})
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
            yield _problem((*entry_loc, "source"), f"unknown source {entry.source!r}")
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
                yield _problem((*step_loc, "buyer"), f"unknown buyer {step.buyer!r}")
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
        yield Problem(
            path=".".join(filter(None, (format_path(loc), error.path))), message=error.message
        )


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
