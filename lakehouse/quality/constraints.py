"""Denial constraints: parse ``deny`` expressions and compile them to Spark.

A denial constraint lists predicates that must not all hold together::

    t.reading_kwh < 0                                                      one tuple
    t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh   two tuples

Operands are column references (``t.col``, ``t1.col``, ``t2.col``), numbers, quoted strings or ``null``;
operators are ``= != < <= > >=``. A two-tuple constraint is evaluated as a self-join blocked on its
equality predicates between ``t1`` and ``t2`` (never a cross join); it needs at least one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

_TOKEN = re.compile(
    r"\s*(?:(?P<ref>t[12]?\.[A-Za-z_][A-Za-z0-9_]*)|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<str>'(?:[^'\\]|\\.)*')|(?P<null>null\b)|(?P<op>!=|<=|>=|=|<|>)|(?P<and>&))"
)
Op = Literal["=", "!=", "<", "<=", ">", ">="]


class ConstraintError(ValueError):
    """A ``deny`` expression does not parse or does not fit the table; the message names the rule."""


@dataclass(frozen=True)
class Ref:
    tuple: str  # "t", "t1" or "t2"
    column: str


@dataclass(frozen=True)
class Predicate:
    left: Ref | object
    op: Op
    right: Ref | object


@dataclass(frozen=True)
class DenialConstraint:
    rule: str
    predicates: tuple[Predicate, ...]

    @property
    def tuples(self) -> set[str]:
        return {o.tuple for p in self.predicates for o in (p.left, p.right) if isinstance(o, Ref)}

    @property
    def columns(self) -> set[str]:
        return {o.column for p in self.predicates for o in (p.left, p.right) if isinstance(o, Ref)}

    @property
    def two_tuple(self) -> bool:
        return bool(self.tuples & {"t1", "t2"})

    def blocking_keys(self) -> list[str]:
        """Columns equal between t1 and t2: the join keys that avoid a cross join."""
        keys = []
        for p in self.predicates:
            if p.op == "=" and isinstance(p.left, Ref) and isinstance(p.right, Ref):
                if {p.left.tuple, p.right.tuple} == {"t1", "t2"} and p.left.column == p.right.column:
                    keys.append(p.left.column)
        return keys


def _operand(kind: str, text: str):
    if kind == "ref":
        tup, col = text.split(".", 1)
        return Ref(tup, col)
    if kind == "num":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "str":
        return text[1:-1].replace("\\'", "'")
    return None


def parse_deny(rule: str, text: str) -> DenialConstraint:
    """Parse a ``deny`` expression; :class:`ConstraintError` names the rule and the position."""
    pos, tokens = 0, []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConstraintError(f"rule {rule!r}: cannot read {text[pos:].strip()[:30]!r} at column {pos + 1} of {text!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    preds, i = [], 0
    while i < len(tokens):
        try:
            (lk, lt), (ok, ot), (rk, rt) = tokens[i : i + 3]
        except ValueError:
            raise ConstraintError(f"rule {rule!r}: incomplete predicate at the end of {text!r}") from None
        if ok != "op" or lk in ("op", "and") or rk in ("op", "and"):
            raise ConstraintError(f"rule {rule!r}: expected '<operand> <op> <operand>' in {text!r}")
        preds.append(Predicate(_operand(lk, lt), ot, _operand(rk, rt)))  # type: ignore[arg-type]
        i += 3
        if i < len(tokens):
            if tokens[i][0] != "and":
                raise ConstraintError(f"rule {rule!r}: predicates must be joined by '&' in {text!r}")
            i += 1
    if not preds:
        raise ConstraintError(f"rule {rule!r}: empty deny expression")
    dc = DenialConstraint(rule, tuple(preds))
    if "t" in dc.tuples and dc.two_tuple:
        raise ConstraintError(f"rule {rule!r}: use either t (one tuple) or t1/t2 (two tuples), not both")
    if dc.two_tuple and not dc.blocking_keys():
        raise ConstraintError(
            f"rule {rule!r}: a two-tuple constraint needs an equality t1.c = t2.c to block on (no cross joins)"
        )
    return dc


def _spark_operand(o, prefix: dict[str, str]) -> Column:
    from pyspark.sql import functions as F

    if isinstance(o, Ref):
        return F.col(f"{prefix[o.tuple]}{o.column}")
    return F.lit(o)


def _compare(left: Column, op: Op, right: Column, null_right: bool) -> Column:
    if null_right:
        return left.isNull() if op == "=" else left.isNotNull()
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


def violation_condition(dc: DenialConstraint, prefix: dict[str, str] | None = None) -> Column:
    """A boolean column true where all predicates hold (the row(s) violate the constraint).

    NULL comparisons count as not holding, except ``= null`` / ``!= null`` which test for null.
    """
    from pyspark.sql import functions as F

    prefix = prefix or {"t": "", "t1": "l.", "t2": "r."}
    cond = F.lit(True)
    for p in dc.predicates:
        pred = _compare(
            _spark_operand(p.left, prefix), p.op, _spark_operand(p.right, prefix), p.right is None and p.op in ("=", "!=")
        )
        cond = cond & F.coalesce(pred, F.lit(False))
    return cond


def check_columns(dc: DenialConstraint, columns: list[str]) -> None:
    missing = sorted(dc.columns - set(columns))
    if missing:
        raise ConstraintError(f"rule {dc.rule!r}: unknown column(s) {missing}; table has {columns}")


def violating_rows(df: DataFrame, dc: DenialConstraint, row_id: str) -> DataFrame:
    """Ids (``row_id``) of the rows that take part in a violation of ``dc``."""
    from pyspark.sql import functions as F

    check_columns(dc, df.columns)
    if not dc.two_tuple:
        return df.filter(violation_condition(dc, {"t": ""})).select(row_id)
    keys = dc.blocking_keys()
    cols = sorted(dc.columns | {row_id})
    left = df.select(*[F.col(c).alias(f"l_{c}") for c in cols])
    right = df.select(*[F.col(c).alias(f"r_{c}") for c in cols])
    joined = left.join(right, on=[F.col(f"l_{k}") == F.col(f"r_{k}") for k in keys], how="inner")
    cond = violation_condition(dc, {"t1": "l_", "t2": "r_"}) & (F.col(f"l_{row_id}") != F.col(f"r_{row_id}"))
    pairs = joined.filter(cond)
    return (
        pairs.select(F.col(f"l_{row_id}").alias(row_id))
        .union(pairs.select(F.col(f"r_{row_id}").alias(row_id)))
        .distinct()
    )
