"""How long each field type takes to parse a 1 MiB value shaped to hurt backtracking regexes.

    .venv/bin/python -m bench.parse_hostile [--size 1048576] [--types number,email]

A vendor controls every lead value, and a submission may be up to 1 MiB (SPEC section 5.1), so a
parser that backtracks quadratically on some shape freezes the gateway's event loop with one
request. For each field type this parses every hostile shape below (and a benign value of the
same size, the linear baseline) and prints the worst milliseconds per type; the goal is < 50 ms.
The shapes are also run against the rules' text operators (``matches pattern``, ``is between``,
``is obscene``) and the unit test ``tests/unit/test_parse_hostile.py`` asserts a bound on them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from time import perf_counter, process_time

from leadflow.fields import FIELD_TYPES, parse_value

MIB = 1024 * 1024
GOAL_MS = 50.0


def _fill(unit: str, size: int, prefix: str = "", suffix: str = "") -> str:
    """``prefix + unit * k + suffix`` about ``size`` characters long."""
    count = max(1, (size - len(prefix) - len(suffix)) // len(unit))
    return prefix + unit * count + suffix


def _halves(left: str, middle: str, right: str, size: int, suffix: str = "") -> str:
    """``left * k + middle + right * k + suffix``: two long runs around a separator."""
    count = max(1, (size - len(middle) - len(suffix)) // (len(left) + len(right)))
    return left * count + middle + right * count + suffix


def _spaced(size: int, *texts: str) -> str:
    """``texts`` joined by runs of spaces, about ``size`` characters in all."""
    run = max(1, (size - sum(map(len, texts))) // max(1, len(texts) - 1))
    return (" " * run).join(texts)


# Each shape builds a value of about ``size`` characters. Every shape runs against every type:
# a vendor may send any text in any field.
SHAPES: dict[str, Callable[[int], str]] = {
    "digits+letter": lambda n: _fill("9", n, suffix="a"),
    "digits-digits": lambda n: _halves("9", "-", "9", n),
    "digits-digits+letter": lambda n: _halves("9", "-", "9", n, suffix="x"),
    "digits.digits+letter": lambda n: _halves("9", ".", "9", n, suffix="x"),
    "digits to digits+letter": lambda n: _halves("9", " to ", "9", n, suffix="x"),
    "$digits+": lambda n: _fill("9", n, prefix="$", suffix="+x"),
    "1,1,1,": lambda n: _fill("1,", n, suffix="x"),
    "1.1.1.": lambda n: _fill("1.", n, suffix="x"),
    "1-1-1-": lambda n: _fill("1-", n),
    "1/1/1/": lambda n: _fill("1/", n),
    "1 1 1 ": lambda n: _fill("1 ", n, suffix="x"),
    "spaces+letter": lambda n: _fill(" ", n, prefix="1", suffix="x"),
    "tabs,commas": lambda n: _fill("\t,", n, suffix="x"),
    "dashes": lambda n: _fill("-", n, suffix="1"),
    "dollars": lambda n: _fill("$", n, suffix="x"),
    "dots": lambda n: _fill(".", n, suffix="x"),
    "letters+digit": lambda n: _fill("a", n, suffix="1"),
    "a1a1": lambda n: _fill("a1", n),
    "zeros": lambda n: _fill("0", n),
    "unicode digits+letter": lambda n: _fill("\u0661", n, suffix="x"),
    "non-ascii": lambda n: _fill("\u00e9", n),
    "a.a.a.@": lambda n: _fill("a.", n, suffix="@"),
    "a@a@a@": lambda n: _fill("a@", n),
    "a@a.a.a.1": lambda n: _fill("a.", n, prefix="a@", suffix="1"),
    "a@a-a-a-.c": lambda n: _fill("a-", n, prefix="a@", suffix=".c"),
    "a@aaaa.": lambda n: _fill("a", n, prefix="a@", suffix="."),
    "....@a.com": lambda n: _fill(".", n, suffix="@a.com"),
    "aaaa@a.com": lambda n: _fill("a", n, suffix="@a.com"),
    "parens": lambda n: _fill("(", n, suffix="1"),
    "((1))": lambda n: _fill("((1))", n, suffix="x"),
    "+1 +1 ": lambda n: _fill("+1 ", n, suffix="x"),
    "1 x1 x": lambda n: _fill("1 x", n, suffix="y"),
    "ext ext": lambda n: _fill("ext ", n),
    "# # #": lambda n: _fill("# ", n, prefix="5125551234", suffix="x"),
    " h h h": lambda n: _fill(" h", n, prefix="5125551234"),
    "5125551234+spaces+h": lambda n: _fill(" ", n, prefix="5125551234", suffix="h"),
    "http://aaaa!": lambda n: _fill("a", n, prefix="http://", suffix="!"),
    "http://a.a.a.-": lambda n: _fill("a.", n, prefix="http://", suffix="-"),
    "http://a-a-a-.": lambda n: _fill("a-", n, prefix="http://", suffix="."),
    "http://a.com/a/a/": lambda n: _fill("a/", n, prefix="http://a.com/"),
    "http://aaaa:": lambda n: _fill("a", n, prefix="http://", suffix=":"),
    "http://a@a@": lambda n: _fill("a@", n, prefix="http://"),
    "trustedform aaaa!": lambda n: _fill(
        "a", n, prefix="https://cert.trustedform.com/", suffix="!"
    ),
    "trustedform a/a/": lambda n: _fill("a/", n, prefix="https://cert.trustedform.com/"),
    "1:1:1:": lambda n: _fill("1:", n),
    "[1:1:1:]": lambda n: _fill("1:", n, prefix="[", suffix="]"),
    "jan jan 1": lambda n: _fill("jan ", n, suffix="1"),
    "1 jan 1 jan": lambda n: _fill("1 jan ", n),
    "monday, monday,": lambda n: _fill("monday, ", n, suffix="x"),
    "1st 1st": lambda n: _fill("1st ", n),
    "2000-01-01t": lambda n: _fill("t", n, prefix="2000-01-01"),
    "{{ {{ {{": lambda n: _fill("{{", n),
    "yes yes": lambda n: _fill("yes ", n),
    "a. a. a.": lambda n: _fill("a. ", n, suffix="x"),
    "fuckfuck": lambda n: _fill("fuck", n, suffix="x"),
    # Runs of spaces where a pattern has `\s*`, between the texts each type's patterns accept.
    "12345 x": lambda n: _spaced(n, "12345", "x"),
    "12345 - x": lambda n: _spaced(n, "12345", "-", "x"),
    "a1a x": lambda n: _spaced(n, "a1a", "x"),
    "a1a - x": lambda n: _spaced(n, "a1a", "-", "x"),
    "1- x": lambda n: _spaced(n, "1-", "x"),
    "1 - $ x": lambda n: _spaced(n, "1", "-", "$", "x"),
    "1 +x": lambda n: _spaced(n, "1", "+x"),
    "$ x": lambda n: _spaced(n, "$", "x"),
    "1 y": lambda n: _spaced(n, "1", "y"),
    "1 h": lambda n: _spaced(n, "1", "h"),
    "1 ( h ) x": lambda n: _spaced(n, "1", "(", "h", ")", "x"),
    "1 ext 1 y": lambda n: _spaced(n, "1", "ext", "1", "y"),
    "1 , x : 1 y": lambda n: _spaced(n, "1", ",", "x", ":", "1", "y"),
    "+ 1 x": lambda n: _spaced(n, "+", "1", "x"),
    "(512)---x": lambda n: _fill("-", n, prefix="(512)", suffix="x"),
    "jan 1 x": lambda n: _spaced(n, "jan", "1", "x"),
    "mon, jan 1 x": lambda n: _spaced(n, "mon,", "jan", "1", "x"),
    "1 jan 1 x": lambda n: _spaced(n, "1", "jan", "1", "x"),
    "2000-01-01 xxxx": lambda n: _fill("x", n, prefix="2000-01-01 "),
    "a@<64 a>.<64 a>.-": lambda n: _fill("a" * 63 + ".", n, prefix="a@", suffix="-"),
}

# A plausible value of the same size per type: what a linear parser costs for 1 MiB.
BENIGN: dict[str, Callable[[int], str]] = {
    "string": lambda n: _fill("Lorem ipsum ", n),
    "phone": lambda n: _fill(" ", n, prefix="512-555-1234", suffix="x"),
    "email": lambda n: _fill("a", n, suffix="@example.com"),
    "number": lambda n: _fill("9", n),
    "range": lambda n: _halves("9", "-", "9", n),
}


def parse_ms(type_name: str, value: str, repeat: int = 3) -> tuple[float, float]:
    """(wall, CPU) milliseconds to parse ``value`` as ``type_name``, each the best of ``repeat``:
    on a shared machine the best run is the one the scheduler did not interrupt."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        started, started_cpu = perf_counter(), process_time()
        parse_value(type_name, value)
        wall = min(wall, perf_counter() - started)
        cpu = min(cpu, process_time() - started_cpu)
    return wall * 1000, cpu * 1000


def benign_value(type_name: str, size: int) -> str:
    return BENIGN.get(type_name, BENIGN["string"])(size)


def worst_per_type(size: int, types: list[str]) -> dict[str, tuple[float, float, str, float]]:
    """For each type: (worst wall ms, worst CPU ms, the shape of the worst wall, benign wall ms)."""
    values = {name: make(size) for name, make in SHAPES.items()}
    results = {}
    for type_name in types:
        worst, worst_cpu, worst_shape = 0.0, 0.0, ""
        for shape, value in values.items():
            wall, cpu = parse_ms(type_name, value)
            worst_cpu = max(worst_cpu, cpu)
            if wall > worst:
                worst, worst_shape = wall, shape
        benign = parse_ms(type_name, benign_value(type_name, size))[0]
        results[type_name] = (worst, worst_cpu, worst_shape, benign)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=MIB, help="characters per value (1 MiB)")
    parser.add_argument("--types", default=",".join(sorted(FIELD_TYPES)))
    args = parser.parse_args()
    types = [name.strip() for name in args.types.split(",") if name.strip()]
    print(f"{len(SHAPES)} shapes of {args.size:,} characters per type, best of 3 runs each")
    print(f"{'type':<16} {'worst ms':>9} {'(CPU ms)':>9} {'benign ms':>10}  worst shape")
    over = []
    for type_name, (worst, cpu, shape, benign) in worst_per_type(args.size, types).items():
        print(f"{type_name:<16} {worst:>9.1f} {cpu:>9.1f} {benign:>10.1f}  {shape}", flush=True)
        if worst > GOAL_MS:
            over.append(type_name)
    print(f"goal < {GOAL_MS:.0f} ms: " + (f"over for {', '.join(over)}" if over else "met"))


if __name__ == "__main__":
    main()
