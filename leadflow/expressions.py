"""Price amount expressions (`"purchase_price * 1.4"`, `min`, `max`, `round`), parsed once.

Evaluated with simpleeval (no attribute access to Python objects, no imports, bounded powers),
in Decimal arithmetic throughout: number literals become Decimals and variables resolve through
`leadflow.variables`, so `purchase_price * 1.4` on 12.10 is exactly 16.94, never a float.
Dotted names (`lead.loan_amount`) are variables, not attribute access.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from decimal import Decimal, DivisionByZero, InvalidOperation
from typing import Any

from simpleeval import FunctionNotDefined, InvalidExpression, NameNotDefined, SimpleEval

from leadflow.fields import is_field, to_decimal
from leadflow.variables import compile_path


class ExpressionError(ValueError):
    """An expression that cannot be parsed, or that cannot give a number for this lead."""


def _round(value: Decimal, places: Decimal | int = 0) -> Decimal:
    return round(value, int(places))


FUNCTIONS = {"min": min, "max": max, "round": _round}


def _number(value: object) -> Decimal | None:
    if is_field(value):
        assert isinstance(value, Mapping)
        return to_decimal(value.get("normal")) if value.get("valid") else None
    if isinstance(value, bool):
        return None
    return to_decimal(value)


class _DecimalEval(SimpleEval):  # type: ignore[misc]
    """simpleeval with Decimal literals."""

    def _eval_constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            return super()._eval_constant(node)
        return Decimal(repr(node.value))


def _dotted(node: ast.AST) -> str | None:
    """`lead.loan_amount` as text when the node is a chain of names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _NameChains(ast.NodeTransformer):
    """Turn each `a.b.c` into one Name node `"a.b.c"`, so it resolves as a variable path."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        path = _dotted(node)
        return ast.copy_location(ast.Name(id=path, ctx=ast.Load()), node) if path else node


class Expression:
    """A compiled amount expression; `evaluate(context)` gives a Decimal or raises."""

    def __init__(self, text: str) -> None:
        self.text = text
        evaluator = _DecimalEval(functions=FUNCTIONS)
        try:
            tree = _NameChains().visit(evaluator.parse(text))
        except SyntaxError as exc:
            raise ExpressionError(f"invalid expression {text!r}: {exc.msg}") from None
        self._tree = ast.fix_missing_locations(tree)
        names = sorted(
            {node.id for node in ast.walk(self._tree) if isinstance(node, ast.Name)}
            - FUNCTIONS.keys()
        )
        for node in ast.walk(self._tree):
            if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            ):
                raise ExpressionError(f"invalid expression {text!r}: only min, max and round")
        self.variables = tuple(names)
        self._getters = {name: compile_path(name) for name in names}

    def evaluate(self, context: Mapping[str, object]) -> Decimal:
        values: dict[str, Decimal] = {}
        for name, getter in self._getters.items():
            number = _number(getter(context))
            if number is None:
                raise ExpressionError(f"{name} is not a number for this lead")
            values[name] = number
        evaluator = _DecimalEval(functions=FUNCTIONS, names=values)
        try:
            result = evaluator.eval(self.text, previously_parsed=self._tree)
        except (ZeroDivisionError, DivisionByZero, InvalidOperation, ArithmeticError) as exc:
            raise ExpressionError(f"{self.text!r}: {type(exc).__name__}") from None
        except (NameNotDefined, FunctionNotDefined, InvalidExpression, TypeError) as exc:
            raise ExpressionError(f"{self.text!r}: {exc}") from None
        number = _number(result)
        if number is None:
            raise ExpressionError(f"{self.text!r} did not give a number")
        return number
