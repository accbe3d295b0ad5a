"""Where in the YAML text a configuration problem is: `FILE:LINE:COL: PATH: message` lines for
`leadflow check` (SPEC section 3).

The text is composed again with PyYAML (the node tree keeps every node's start mark) and each
problem's path (`flows[0].stages[1].steps[2].buyer`) is walked down it: to the value the
problem is about, or to the key itself for an unknown key. A path that leaves the tree (a
missing key, a merge key) stops at the deepest node it reached, which is still the right
neighbourhood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from leadflow.config import Problem

_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


@dataclass(frozen=True)
class Located:
    problem: Problem
    line: int | None  # 1-based; None when the problem has no place in the text
    column: int | None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}:{self.column}" if self.line is not None else file
        return f"{where}: {self.problem}"


def path_parts(path: str) -> list[int | str]:
    """`flows[0].stages` -> ['flows', 0, 'stages']."""
    return [int(index) if index else name for index, name in _PART.findall(path)]


def _walk(root: yaml.Node, parts: list[int | str], at_key: bool) -> yaml.Mark:
    node, mark = root, root.start_mark
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if isinstance(node, yaml.SequenceNode):
            if part == "rules" and not last:
                continue  # a rule set written as a plain list has no `rules:` key
            if not isinstance(part, int) or part >= len(node.value):
                break
            node = node.value[part]
            mark = node.start_mark
        elif isinstance(node, yaml.MappingNode):
            pair = next(
                ((key, value) for key, value in node.value if str(key.value) == str(part)), None
            )
            if pair is None:
                break
            key, node = pair
            mark = key.start_mark if last and at_key else node.start_mark
        else:
            break
    return mark


def locate(text: str, problems: list[Problem]) -> list[Located]:
    """Each problem with its line and column in `text` (None where it has none)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        return [Located(problem, line, column) for problem in problems]
    except yaml.YAMLError:
        root = None
    located = []
    for problem in problems:
        if root is None or not problem.path:
            located.append(Located(problem, None, None))
            continue
        at_key = problem.message.startswith("unknown key ")
        mark = _walk(root, path_parts(problem.path), at_key)
        located.append(Located(problem, mark.line + 1, mark.column + 1))
    return located
