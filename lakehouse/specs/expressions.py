"""Spark SQL expressions written in configs (``derive:`` columns): checked when the configs load.

Plain Python, no Spark needed: the columns an expression reads are found by a scan of its identifiers
(string literals, function names, SQL keywords, type names after ``AS``, struct fields after ``.`` and
lambda variables are not columns). When this process already has a Spark session, Spark's own parser
reads the expression too, so a syntax error fails the load rather than the first run.

Configs are trusted, yet an expression is code that Spark runs on every row: the functions that call
arbitrary Java methods (``reflect``, ``java_method``, ``try_reflect``) are refused.
"""

from __future__ import annotations

import re
import sys

#: Spark SQL functions a config expression may not call (they invoke arbitrary JVM methods)
FORBIDDEN_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect"})

_TOKEN = re.compile(
    r"(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<quoted>`(?:[^`]|``)+`)"
    r"|(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?[A-Za-z]*)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<arrow>->)|(?P<other>\S)"
)
_KEYWORDS = frozenset(
    """
    and or not null is in between like ilike rlike regexp case when then else end true false cast try_cast as
    interval distinct exists div escape any some all
    year years month months week weeks day days hour hours minute minutes second seconds millisecond
    milliseconds microsecond microseconds to date timestamp timestamp_ntz timestamp_ltz
    """.split()
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(str(m.lastgroup), m.group(str(m.lastgroup))) for m in _TOKEN.finditer(expr)]


def referenced_columns(expr: str) -> list[str]:
    """The column names ``expr`` reads, in order of first use."""
    tokens = _tokens(expr)
    lambda_vars = set()
    for i, (kind, _) in enumerate(tokens):
        if kind != "arrow" or i == 0:
            continue
        if tokens[i - 1][0] == "name":  # x -> ...
            lambda_vars.add(tokens[i - 1][1].lower())
        elif tokens[i - 1][1] == ")":  # (x, y) -> ...
            j = i - 2
            while j >= 0 and tokens[j][1] != "(":
                if tokens[j][0] == "name":
                    lambda_vars.add(tokens[j][1].lower())
                j -= 1
    found: list[str] = []
    for i, (kind, text) in enumerate(tokens):
        before = tokens[i - 1] if i else ("", "")
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "quoted":
            name = text[1:-1].replace("``", "`")
        elif kind == "name":
            if after[1] == "(" or text.lower() in _KEYWORDS or text.lower() in lambda_vars:
                continue
            if before[1] == "." or (before[0] == "name" and before[1].lower() in ("as", "interval")):
                continue
            name = text
        else:
            continue
        if before[1] == "." and kind == "quoted":
            continue
        if name not in found:
            found.append(name)
    return found


def called_functions(expr: str) -> list[str]:
    """The function names ``expr`` calls (lower case)."""
    tokens = _tokens(expr)
    names = [t[1:-1].replace("``", "`") if k == "quoted" else t for k, t in tokens]
    return [
        n.lower()
        for i, ((k, _), n) in enumerate(zip(tokens, names, strict=True))
        if k in ("name", "quoted") and i + 1 < len(tokens) and tokens[i + 1][1] == "("
    ]


def check_expression(expr: str, *, what: str, columns: set[str] | None) -> list[str]:
    """Check a config's Spark SQL expression; returns the columns it reads.

    Args:
        expr: the expression text.
        what: how an error names it (``derive column 'hdd'``).
        columns: the columns it may read (None: unknown here, e.g. a view's SQL result; not checked).

    Raises:
        ValueError: a forbidden function, a window, an unknown column, or (with a Spark session in this
            process) a syntax error Spark's parser reports.
    """
    if not expr.strip():
        raise ValueError(f"{what}: the expression is empty")
    bad = sorted(set(called_functions(expr)) & FORBIDDEN_FUNCTIONS)
    if bad:
        raise ValueError(f"{what}: {', '.join(bad)} may not be called from a config (it runs arbitrary Java code)")
    if any(k == "name" and t.lower() == "over" for k, t in _tokens(expr)):
        raise ValueError(f"{what}: computed row by row, a window (OVER ...) is not allowed")
    used = referenced_columns(expr)
    if columns is not None:
        unknown = [c for c in used if c not in columns]
        if unknown:
            raise ValueError(f"{what}: unknown column(s) {unknown} in {expr!r}; known: {sorted(columns)}")
    _spark_parse(expr, what)
    return used


def _spark_parse(expr: str, what: str) -> None:
    """Spark's parser on ``expr`` when this process has an active classic session (never starts one)."""
    if "pyspark.sql" not in sys.modules:
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None or not hasattr(session, "_jsparkSession"):
        return
    try:
        session._jsparkSession.sessionState().sqlParser().parseExpression(expr)  # parse only, nothing runs
    except Exception as exc:  # py4j wraps Spark's ParseException
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what}: Spark cannot parse {expr!r}: {first}") from None
