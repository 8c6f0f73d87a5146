"""Denial constraints: parse ``deny`` expressions, compile every rule form, evaluate them in Spark.

A denial constraint lists predicates that must not all hold together::

    t.reading_kwh < 0                                                      one tuple
    t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh   two tuples

Operands are column references (``t.col``, ``t1.col``, ``t2.col``), numbers, quoted strings or ``null``;
operators are ``= != < <= > >=``. A two-tuple constraint is evaluated within blocks of rows equal on its
equality predicates between ``t1`` and ``t2`` (a window partitioned by those keys: each row meets only the
rows of its own block — never a cross join); it needs at least one such equality.

The convenience forms of :class:`~lakehouse.specs.models.RuleSpec` compile to the same representation
(a rule is the disjunction of its constraints: a row violates the rule when it violates any of them)::

    not_null: [a, b]             t.a = null          |  t.b = null
    range: {x: {min: 0, max: 9}} t.x < 0             |  t.x > 9
    allowed: {c: [u, v]}         t.c != 'u' & t.c != 'v'
    unique: [k1, k2]             t1.k1 = t2.k1 & t1.k2 = t2.k2

``reference`` (a value must exist in another table) is not a constraint over one table: it compiles to a
left join against the referenced column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lakehouse.specs.models import ReferenceSpec, RuleSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

_TOKEN = re.compile(
    r"\s*(?:(?P<ref>t[12]?\.[A-Za-z_][A-Za-z0-9_]*)|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<str>'(?:[^'\\]|\\.)*')|(?P<null>null\b)|(?P<op>!=|<=|>=|=|<|>)|(?P<and>&))"
)
Op = Literal["=", "!=", "<", "<=", ">", ">="]


class ConstraintError(ValueError):
    """A rule does not parse or does not fit the table; the message names the rule."""


@dataclass(frozen=True)
class Ref:
    tuple: str  # "t", "t1" or "t2"
    column: str

    def __str__(self) -> str:
        return f"{self.tuple}.{self.column}"


def _text(o: object) -> str:
    if isinstance(o, Ref):
        return str(o)
    if o is None:
        return "null"
    if isinstance(o, str):
        return "'" + o.replace("'", "\\'") + "'"
    return repr(o)


@dataclass(frozen=True)
class Predicate:
    left: Ref | object
    op: Op
    right: Ref | object

    def __str__(self) -> str:
        return f"{_text(self.left)} {self.op} {_text(self.right)}"


@dataclass(frozen=True)
class DenialConstraint:
    rule: str
    predicates: tuple[Predicate, ...]

    def __str__(self) -> str:
        return " & ".join(str(p) for p in self.predicates)

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
                    if p.left.column not in keys:
                        keys.append(p.left.column)
        return keys

    @property
    def key_equality_only(self) -> bool:
        """Every predicate is a blocking equality (``unique``): a group count decides, no join needed."""
        return self.two_tuple and len(self.blocking_keys()) == len(self.predicates)


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
    return _validated(DenialConstraint(rule, tuple(preds)))


def _validated(dc: DenialConstraint) -> DenialConstraint:
    rule = dc.rule
    if not dc.tuples:
        raise ConstraintError(f"rule {rule!r}: {dc} compares constants only; reference a column (t.col)")
    if "t" in dc.tuples and dc.two_tuple:
        raise ConstraintError(f"rule {rule!r}: use either t (one tuple) or t1/t2 (two tuples), not both")
    if dc.two_tuple and not dc.blocking_keys():
        raise ConstraintError(
            f"rule {rule!r}: a two-tuple constraint needs an equality t1.c = t2.c to block on (no cross joins)"
        )
    for p in dc.predicates:
        if p.left is None:
            raise ConstraintError(f"rule {rule!r}: write 'null' on the right of {p}")
        if p.right is None and p.op not in ("=", "!="):
            raise ConstraintError(f"rule {rule!r}: only '= null' and '!= null' compare with null, not {p}")
    return dc


# ------------------------------------------------------------------------------------- rule forms
@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: a disjunction of denial constraints, or a reference check."""

    spec: RuleSpec
    constraints: tuple[DenialConstraint, ...] = ()
    reference: ReferenceSpec | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def two_tuple(self) -> bool:
        return any(dc.two_tuple for dc in self.constraints)

    @property
    def columns(self) -> set[str]:
        cols = {c for dc in self.constraints for c in dc.columns}
        if self.reference is not None:
            cols.add(self.reference.column)
        return cols

    def blocking_keys(self) -> list[str]:
        """The block of a two-tuple rule (the keys shared by all its constraints)."""
        keys = [dc.blocking_keys() for dc in self.constraints if dc.two_tuple]
        return [k for k in keys[0] if all(k in other for other in keys[1:])] if keys else []

    def describe(self) -> str:
        """What the rule denies, in the constraint syntax."""
        if self.reference is not None:
            r = self.reference
            return f"t.{r.column} not in {r.table}.{r.target_column}"
        return "  |  ".join(str(dc) for dc in self.constraints)


def compile_rule(rule: RuleSpec) -> CompiledRule:
    """The constraints of any rule form (see the module docstring)."""
    name = rule.name
    if rule.deny is not None:
        return CompiledRule(rule, (parse_deny(name, rule.deny),))
    if rule.not_null:
        return CompiledRule(rule, tuple(DenialConstraint(name, (Predicate(Ref("t", c), "=", None),)) for c in rule.not_null))
    if rule.range:
        dcs = []
        for col, bounds in rule.range.items():
            if bounds.min is not None:
                dcs.append(DenialConstraint(name, (Predicate(Ref("t", col), "<", bounds.min),)))
            if bounds.max is not None:
                dcs.append(DenialConstraint(name, (Predicate(Ref("t", col), ">", bounds.max),)))
        return CompiledRule(rule, tuple(dcs))
    if rule.allowed:
        dcs = []
        for col, values in rule.allowed.items():
            if not values:
                raise ConstraintError(f"rule {name!r}: allowed values of {col!r} are empty")
            dcs.append(DenialConstraint(name, tuple(Predicate(Ref("t", col), "!=", v) for v in values)))
        return CompiledRule(rule, tuple(dcs))
    if rule.unique:
        preds = tuple(Predicate(Ref("t1", c), "=", Ref("t2", c)) for c in rule.unique)
        return CompiledRule(rule, (_validated(DenialConstraint(name, preds)),))
    if rule.reference is not None:
        return CompiledRule(rule, (), reference=rule.reference)
    raise ConstraintError(f"rule {name!r}: no form")  # unreachable: RuleSpec validates one form


def compile_rules(rules: list[RuleSpec], columns: list[str]) -> list[CompiledRule]:
    """Compile ``rules`` and check every column they use exists in ``columns``."""
    compiled = []
    for rule in rules:
        cr = compile_rule(rule)
        missing = sorted(cr.columns - set(columns))
        if missing:
            raise ConstraintError(f"rule {rule.name!r}: unknown column(s) {missing}; the table has {columns}")
        if rule.repair is not None:
            targets = set(rule.repair.set or {}) | ({rule.repair.by} if rule.repair.by else set())
            bad = sorted(targets - set(columns))
            if bad:
                raise ConstraintError(f"rule {rule.name!r}: repair names unknown column(s) {bad}")
        compiled.append(cr)
    return compiled


# ------------------------------------------------------------------------------------------ spark
# Conditions are written as Spark SQL text. The two-tuple form needs a lambda (``exists``), and a lambda
# built with PySpark's Python API gets a fresh variable name on every call (x_1, x_2, ...): the name ends
# up in the generated Java code, so every month's plan compiled anew and ran in freshly loaded classes.
# A lambda written in SQL keeps its name: the same plan on another month hits Spark's code cache.
_OTHER = "__other"  # the lambda variable of a two-tuple rule: the other row of the block


def sql_name(column: str) -> str:
    """``column`` as a Spark SQL identifier."""
    return "`" + column.replace("`", "``") + "`"


def _sql_value(o: object) -> str:
    """A constant of a rule as a Spark SQL literal of the type ``F.lit`` gives it."""
    if o is None:
        return "NULL"
    if isinstance(o, bool):
        return "TRUE" if o else "FALSE"
    if isinstance(o, int):
        return str(o)
    if isinstance(o, float):
        return f"{o!r}D" if math.isfinite(o) else f"CAST('{o!r}' AS DOUBLE)"
    if isinstance(o, str):
        return "'" + o.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise ConstraintError(f"cannot compare with {o!r} ({type(o).__name__})")


def _condition_sql(dc: DenialConstraint, operand: Callable[[Ref], str]) -> str:
    """``dc``'s predicates as one SQL condition, with ``operand(ref)`` giving each column reference.

    NULL comparisons count as not holding, except ``= null`` / ``!= null`` which test for null.
    """
    preds = []
    for p in dc.predicates:
        left = operand(p.left) if isinstance(p.left, Ref) else _sql_value(p.left)
        if p.right is None and p.op in ("=", "!="):
            preds.append(f"({left} IS {'NOT ' if p.op == '!=' else ''}NULL)")
            continue
        right = operand(p.right) if isinstance(p.right, Ref) else _sql_value(p.right)
        preds.append(f"coalesce({left} {p.op} {right}, false)")
    return " AND ".join(preds)


def violation_condition(dc: DenialConstraint, prefix: dict[str, str] | None = None) -> Column:
    """A boolean column true where all predicates hold (the row(s) violate the constraint).

    ``prefix``: tuple → column-name prefix (``t1.x`` is column ``l_x`` by default).
    """
    from pyspark.sql import functions as F

    prefix = prefix or {"t": "", "t1": "l_", "t2": "r_"}
    return F.expr(_condition_sql(dc, lambda r: sql_name(prefix[r.tuple] + r.column)))


def row_condition(cr: CompiledRule) -> Column:
    """For a one-tuple rule: true on the rows that violate any of its constraints."""
    from pyspark.sql import functions as F

    if cr.two_tuple or cr.reference is not None:
        raise ConstraintError(f"rule {cr.name!r} is not a one-tuple rule")
    cond = F.lit(False)
    for dc in cr.constraints:
        cond = cond | violation_condition(dc, {"t": ""})
    return cond


def check_columns(dc: DenialConstraint, columns: list[str]) -> None:
    missing = sorted(dc.columns - set(columns))
    if missing:
        raise ConstraintError(f"rule {dc.rule!r}: unknown column(s) {missing}; table has {columns}")


def block_condition(dc: DenialConstraint, row_id: str, scope: str | None = None) -> Column:
    """True on the rows that take part in a violation of the two-tuple ``dc`` (a window expression).

    The rows are blocked on ``dc``'s equality keys: a window partitioned by them (a hash partitioning —
    rows of different blocks never meet, so nothing like a cross join is ever planned) gathers each
    block, and the predicates are tested between each row and the other members of its block, with the
    row as ``t1`` and as ``t2``. Pure key equalities (``unique``) only count the block. ``scope``: a
    boolean SQL expression; only rows where it holds take part (the others form their own blocks).
    """
    from pyspark.sql import functions as F

    keys = [sql_name(k) for k in dc.blocking_keys()]
    scoped = [f"({scope})"] if scope is not None else []
    inside = " AND ".join([f"{k} IS NOT NULL" for k in keys] + scoped)
    block = f"PARTITION BY {', '.join(keys + scoped)}"
    if dc.key_equality_only:
        return F.expr(f"{inside} AND count(1) OVER ({block}) > 1")
    fields = [f"{sql_name(row_id)} AS __id"] + [f"{sql_name(c)} AS {sql_name(c)}" for c in sorted(dc.columns)]
    members = f"collect_list(struct({', '.join(fields)})) OVER ({block})"

    def row_is(tup: str) -> str:
        return _condition_sql(dc, lambda r: sql_name(r.column) if r.tuple == tup else f"{_OTHER}.{sql_name(r.column)}")

    other = f"{_OTHER}.__id != {sql_name(row_id)}"
    return F.expr(f"{inside} AND exists({members}, {_OTHER} -> {other} AND (({row_is('t1')}) OR ({row_is('t2')})))")


def rule_condition(cr: CompiledRule, row_id: str, scope: str | None = None) -> Column:
    """True on the rows violating a one- or two-tuple rule (any of its constraints); ``scope`` as in
    :func:`block_condition`."""
    from pyspark.sql import functions as F

    if cr.reference is not None:
        raise ConstraintError(f"rule {cr.name!r}: a reference rule needs the referenced table (rule_violations)")
    cond = F.lit(False)
    for dc in cr.constraints:
        if dc.two_tuple:
            cond = cond | block_condition(dc, row_id, scope)
        else:
            cond = cond | violation_condition(dc, {"t": ""})
    return cond & F.expr(scope) if scope is not None else cond


def violating_rows(df: DataFrame, dc: DenialConstraint, row_id: str) -> DataFrame:
    """Ids (``row_id``) of the rows that take part in a violation of ``dc``."""
    from pyspark.sql import functions as F

    check_columns(dc, df.columns)
    if not dc.two_tuple:
        return df.filter(violation_condition(dc, {"t": ""})).select(row_id)
    return df.withColumn("__violates", block_condition(dc, row_id)).filter(F.col("__violates")).select(row_id)


def rule_violations(df: DataFrame, cr: CompiledRule, row_id: str, reference: DataFrame | None = None) -> DataFrame:
    """Ids of the rows of ``df`` that violate ``cr`` (any of its constraints, or a missing reference).

    ``reference``: the referenced table's rows (for ``reference`` rules; its column ``to``).
    """
    from pyspark.sql import functions as F

    if cr.reference is not None:
        return df.join(reference_flags(cr, reference), on=_ref_on(df, cr), how="left").filter(
            F.col("__ref_found").isNull() & F.col(f"`{cr.reference.column}`").isNotNull()
        ).select(row_id)
    return df.withColumn("__violates", rule_condition(cr, row_id)).filter(F.col("__violates")).select(row_id)


def reference_flags(cr: CompiledRule, reference: DataFrame | None) -> DataFrame:
    """The distinct known values of a reference rule (``__ref_value``, ``__ref_found``), to broadcast."""
    from pyspark.sql import functions as F

    if reference is None:
        raise ConstraintError(f"rule {cr.name!r}: the referenced table {cr.reference.table} is not available")
    r = cr.reference
    if r.target_column not in reference.columns:
        raise ConstraintError(f"rule {cr.name!r}: {r.table} has no column {r.target_column!r}")
    known = reference.select(F.col(f"`{r.target_column}`").alias("__ref_value")).where("__ref_value IS NOT NULL")
    return F.broadcast(known.distinct().withColumn("__ref_found", F.lit(True)))


def _ref_on(df: DataFrame, cr: CompiledRule):
    from pyspark.sql import functions as F

    return F.col(f"`{cr.reference.column}`") == F.col("__ref_value")


def has_cross_join(df: DataFrame) -> bool:
    """Whether Spark's physical plan of ``df`` holds a cartesian product or a nested-loop join."""
    plan = df._jdf.queryExecution().executedPlan().toString()  # noqa: SLF001 - plan text, classic Spark
    return "CartesianProduct" in plan or "BroadcastNestedLoopJoin" in plan
