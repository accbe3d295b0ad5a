"""``{{ path }}`` templates for delivery URLs, headers, bodies and rule values.

A template is compiled once and rendered per lead: each ``{{ path }}`` becomes
``variables.display(variables.resolve(path, context))``, so unknown paths render as "".
Triple braces ``{{{ path }}}`` mean the same as double ones (there is no HTML escaping to skip);
``render(context, escape=...)`` applies an escape function (URL-quoting, say) to each value.
No helpers, conditionals or loops: a path is dot-separated names without spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from leadflow.variables import Getter, compile_path, display

__all__ = ["Template", "TemplateError", "compile_template", "render_mapping"]


class TemplateError(ValueError):
    """A template that cannot be compiled (an unclosed ``{{`` or a malformed path)."""


_TAG: Final = re.compile(r"\{\{(\{)?(.*?)(?(1)\}\}\}|\}\})", re.DOTALL)
_PATH: Final = re.compile(r"[^\s{}.]+(?:\.[^\s{}.]+)*")


class Template:
    """A compiled template; :meth:`render` it with a context from ``build_context``."""

    __slots__ = ("_getters", "_literals", "paths", "text")

    def __init__(self, text: str, literals: tuple[str, ...], paths: tuple[str, ...]) -> None:
        self.text = text
        self.paths = paths
        self._literals = literals
        self._getters: tuple[Getter, ...] = tuple(compile_path(path) for path in paths)

    def render(
        self, context: Mapping[str, object], escape: Callable[[str], str] | None = None
    ) -> str:
        """The text with every ``{{ path }}`` replaced by the value's display text."""
        if not self._getters:
            return self.text
        literals = self._literals
        out = [literals[0]]
        for index, getter in enumerate(self._getters):
            value = display(getter(context))
            out.append(escape(value) if escape is not None else value)
            out.append(literals[index + 1])
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def compile_template(text: str) -> Template:
    """Compile ``text``; raises :class:`TemplateError` for an unclosed ``{{`` or a bad path."""
    if "{{" not in text:
        return Template(text, (text,), ())
    literals: list[str] = []
    paths: list[str] = []
    position = 0
    for match in _TAG.finditer(text):
        literal = text[position : match.start()]
        if "{{" in literal:
            raise TemplateError(f"unclosed '{{{{' at offset {literal.index('{{') + position}")
        path = match.group(2).strip()
        if not _PATH.fullmatch(path):
            raise TemplateError(f"invalid variable {match.group(0)!r}: expected {{{{ a.b.c }}}}")
        literals.append(literal)
        paths.append(path)
        position = match.end()
    rest = text[position:]
    if "{{" in rest:
        raise TemplateError(f"unclosed '{{{{' at offset {rest.index('{{') + position}")
    literals.append(rest)
    return Template(text, tuple(literals), tuple(paths))


def render_mapping(
    compiled: Mapping[str, Template],
    context: Mapping[str, object],
    escape: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """Render each template of a mapping (delivery fields or headers) with one context."""
    return {key: template.render(context, escape) for key, template in compiled.items()}
