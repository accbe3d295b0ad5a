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
    # Each tag is the first `{{` and the first `}}` after it (`}}}` when it opened with `{{{`),
    # found with str.find: a lazy `\{\{(.*?)\}\}` regex rescans the rest of the text from every
    # unclosed `{{`, quadratic in the template's length.
    while (start := text.find("{{", position)) >= 0:
        body, end = _tag_end(text, start)
        if end < 0:
            raise TemplateError(f"unclosed '{{{{' at offset {start}")
        path = text[body : end - (3 if body == start + 3 else 2)].strip()
        if not _PATH.fullmatch(path):
            raise TemplateError(f"invalid variable {text[start:end]!r}: expected {{{{ a.b.c }}}}")
        literals.append(text[position:start])
        paths.append(path)
        position = end
    literals.append(text[position:])
    return Template(text, tuple(literals), tuple(paths))


def _tag_end(text: str, start: int) -> tuple[int, int]:
    """(where the path starts, where the tag ends) for the tag opening at ``start``; end -1 when
    it never closes. `{{{ a }}}` needs three closing braces, else it reads as `{{` + `{ a`."""
    if text.startswith("{", start + 2):
        close = text.find("}}}", start + 3)
        if close >= 0:
            return start + 3, close + 3
    close = text.find("}}", start + 2)
    return start + 2, (close + 2 if close >= 0 else -1)


def render_mapping(
    compiled: Mapping[str, Template],
    context: Mapping[str, object],
    escape: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """Render each template of a mapping (delivery fields or headers) with one context."""
    return {key: template.render(context, escape) for key, template in compiled.items()}
