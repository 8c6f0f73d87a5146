"""Denial constraints: parse ``deny`` expressions, compile every rule form, evaluate them in Spark.

A denial constraint lists predicates that must not all hold together::

    t.reading_kwh < 0                                                      one tuple
    t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh   two tuples

Operands are column references (``t.col``, ``t1.col``, ``t2.col``; a bare ``col`` is ``t.col``), numbers,
quoted strings or ``null``, and arithmetic over them (``+ - * /``, unary minus, parentheses, ``abs(...)``;
NULL, and so no violation, on a division by zero); operators are ``= != < <= > >=``. A two-tuple constraint is evaluated within blocks of rows equal on its
equality predicates between ``t1`` and ``t2`` (a window partitioned by those keys: each row meets only the
rows of its own block — never a cross join); it needs at least one such equality.

The convenience forms of :class:`~lakehouse.specs.models.RuleSpec` compile to the same representation
(a rule is the disjunction of its constraints: a row violates the rule when it violates any of them)::

    not_null: [a, b]             t.a = null          |  t.b = null
    range: {x: {min: 0, max: 9}} t.x < 0             |  t.x > 9
    allowed: {c: [u, v]}         t.c != 'u' & t.c != 'v'
    unique: [k1, k2]             t1.k1 = t2.k1 & t1.k2 = t2.k2

``prev.col`` is ``col`` on the previous row of the row's series (one-tuple rules only): a ``lag`` window
over the series (:class:`Series`: the key minus its time column, or the rule's ``group_by``/``time``)::

    index_kwh < prev.index_kwh                                             meter-index continuity

``reference`` (a value must exist in another table) is not a constraint over one table: it compiles to a
left join against the referenced column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NoReturn

from lakehouse.specs.models import ReferenceSpec, RuleSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

_TOKEN = re.compile(
    r"\s*(?:(?P<ref>(?:t[12]?|prev)\.[A-Za-z_][A-Za-z0-9_]*)|(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<str>'(?:[^'\\]|\\.)*')|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>!=|<=|>=|=|<|>)|(?P<and>&)"
    r"|(?P<arith>[-+*/])|(?P<open>\()|(?P<close>\)))"
)
Op = Literal["=", "!=", "<", "<=", ">", ">="]
#: functions a rule may call (name -> Spark SQL function)
FUNCTIONS = {"abs": "abs"}
#: arithmetic in Spark SQL: the try_ forms give NULL (no violation) on a division by zero or an overflow
# where ANSI mode would fail the whole month
_ARITH_SQL = {"+": "try_add", "-": "try_subtract", "*": "try_multiply", "/": "try_divide"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class ConstraintError(ValueError):
    """A rule does not parse or does not fit the table; the message names the rule."""


@dataclass(frozen=True)
class Ref:
    tuple: str  # "t", "t1", "t2" or "prev" (the previous row of the same series)
    column: str

    def __str__(self) -> str:
        return f"{self.tuple}.{self.column}"


@dataclass(frozen=True)
class Arith:
    """``left op right`` with ``op`` one of ``+ - * /``."""

    op: str
    left: object
    right: object


@dataclass(frozen=True)
class Call:
    """A function of one operand: ``abs(x)``, or ``neg`` (unary minus of a non-constant)."""

    function: str
    arg: object


def _refs(o: object):
    """The column references in an operand (a reference, a constant or an expression)."""
    if isinstance(o, Ref):
        yield o
    elif isinstance(o, Arith):
        yield from _refs(o.left)
        yield from _refs(o.right)
    elif isinstance(o, Call):
        yield from _refs(o.arg)


def _precedence(o: object) -> int:
    return _PRECEDENCE[o.op] if isinstance(o, Arith) else 3


def _text(o: object) -> str:
    if isinstance(o, Ref):
        return str(o)
    if isinstance(o, Arith):
        left, right = _text(o.left), _text(o.right)
        if _precedence(o.left) < _precedence(o):
            left = f"({left})"
        if _precedence(o.right) <= _precedence(o):  # a - (b - c), a * (b / c): kept as written
            right = f"({right})"
        return f"{left} {o.op} {right}"
    if isinstance(o, Call):
        if o.function == "neg":
            inner = _text(o.arg)
            return f"-({inner})" if isinstance(o.arg, Arith) else f"-{inner}"
        return f"{o.function}({_text(o.arg)})"
    if o is None:
        return "null"
    if isinstance(o, str):
        return "'" + o.replace("'", "\\'") + "'"
    return repr(o)


@dataclass(frozen=True)
class Predicate:
    left: object
    op: Op
    right: object

    def __str__(self) -> str:
        return f"{_text(self.left)} {self.op} {_text(self.right)}"

    def refs(self) -> list[Ref]:
        return [*_refs(self.left), *_refs(self.right)]


@dataclass(frozen=True)
class DenialConstraint:
    rule: str
    predicates: tuple[Predicate, ...]

    def __str__(self) -> str:
        return " & ".join(str(p) for p in self.predicates)

    @property
    def tuples(self) -> set[str]:
        return {r.tuple for p in self.predicates for r in p.refs()}

    @property
    def columns(self) -> set[str]:
        return {r.column for p in self.predicates for r in p.refs()}

    @property
    def two_tuple(self) -> bool:
        return bool(self.tuples & {"t1", "t2"})

    @property
    def uses_prev(self) -> bool:
        """Whether the constraint compares a row with the previous row of its series (``prev.col``)."""
        return "prev" in self.tuples

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


class _Parser:
    """Recursive descent over the tokens of a ``deny`` expression::

    constraint := predicate ('&' predicate)*
    predicate  := sum op sum
    sum        := product (('+' | '-') product)*
    product    := unary (('*' | '/') unary)*
    unary      := '-' unary | atom
    atom       := number | 'string' | null | ref | column | abs '(' sum ')' | '(' sum ')'
    """

    def __init__(self, rule: str, text: str) -> None:
        self.rule, self.text, pos = rule, text, 0
        self.tokens: list[tuple[str, str, int]] = []
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                self.fail(f"cannot read {text[pos:].strip()[:30]!r}", len(text[pos:]) - len(text[pos:].lstrip()) + pos)
            kind = str(m.lastgroup)
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def fail(self, what: str, pos: int | None = None) -> NoReturn:
        where = f"at column {pos + 1}" if pos is not None else "at the end"
        raise ConstraintError(f"rule {self.rule!r}: {what} {where} of {self.text!r}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> tuple[str, str, int] | None:
        tok = self.peek()
        if tok is not None and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, what: str) -> tuple[str, str, int]:
        tok = self.take(kind)
        if tok is None:
            nxt = self.peek()
            self.fail(f"expected {what}, found {nxt[1]!r}" if nxt else f"expected {what}", nxt[2] if nxt else None)
        return tok

    def constraint(self) -> tuple[Predicate, ...]:
        if not self.tokens:
            raise ConstraintError(f"rule {self.rule!r}: empty deny expression")
        preds = [self.predicate()]
        while (tok := self.peek()) is not None:
            if tok[0] != "and":
                self.fail(f"predicates must be joined by '&', found {tok[1]!r}", tok[2])
            self.i += 1
            preds.append(self.predicate())
        return tuple(preds)

    def predicate(self) -> Predicate:
        left = self.sum()
        op = self.peek()
        if op is None or op[0] != "op":
            self.fail(
                f"expected a comparison (= != < <= > >=) in '<operand> <op> <operand>', found {op[1]!r}"
                if op
                else "incomplete predicate",
                op[2] if op else None,
            )
        self.i += 1
        return Predicate(left, op[1], self.sum())  # type: ignore[arg-type]

    def sum(self) -> object:
        left = self.product()
        while (tok := self.peek()) is not None and tok[0] == "arith" and tok[1] in "+-":
            self.i += 1
            left = self.arith(tok, left, self.product())
        return left

    def product(self) -> object:
        left = self.unary()
        while (tok := self.peek()) is not None and tok[0] == "arith" and tok[1] in "*/":
            self.i += 1
            left = self.arith(tok, left, self.unary())
        return left

    def arith(self, tok: tuple[str, str, int], left: object, right: object) -> Arith:
        for side in (left, right):
            if side is None or isinstance(side, str):
                self.fail(f"{tok[1]!r} needs numbers or columns, not {_text(side)}", tok[2])
        return Arith(tok[1], left, right)

    def unary(self) -> object:
        tok = self.take("arith", "-")
        if tok is None:
            return self.atom()
        operand = self.unary()
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand  # a negative constant keeps its literal type
        if operand is None or isinstance(operand, str):
            self.fail(f"'-' needs a number or a column, not {_text(operand)}", tok[2])
        return Call("neg", operand)

    def atom(self) -> object:
        tok = self.peek()
        if tok is None:
            self.fail("expected an operand")
        kind, text, pos = tok
        self.i += 1
        if kind == "ref":
            tup, col = text.split(".", 1)
            return Ref(tup, col)
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "str":
            return text[1:-1].replace("\\'", "'")
        if kind == "open":
            inner = self.sum()
            self.expect("close", "')'")
            return inner
        if kind == "name":
            if text.lower() == "null":
                return None
            if self.take("open"):
                if text.lower() not in FUNCTIONS:
                    self.fail(f"unknown function {text!r} (known: {', '.join(sorted(FUNCTIONS))})", pos)
                arg = self.sum()
                self.expect("close", "')'")
                if arg is None or isinstance(arg, str):
                    self.fail(f"{text}() needs a number or a column, not {_text(arg)}", pos)
                return Call(text.lower(), arg)
            return Ref("t", text)  # a bare column name is the row's own: t.<column>
        self.fail(f"expected an operand, found {text!r}", pos)


def parse_deny(rule: str, text: str) -> DenialConstraint:
    """Parse a ``deny`` expression; :class:`ConstraintError` names the rule and the position."""
    return _validated(DenialConstraint(rule, _Parser(rule, text).constraint()))


def _validated(dc: DenialConstraint) -> DenialConstraint:
    rule = dc.rule
    if not dc.tuples:
        raise ConstraintError(f"rule {rule!r}: {dc} compares constants only; reference a column (t.col)")
    if "t" in dc.tuples and dc.two_tuple:
        raise ConstraintError(
            f"rule {rule!r}: use either t (one tuple; a bare column name means t.<column>) or t1/t2 (two tuples), not both"
        )
    if dc.uses_prev and dc.two_tuple:
        raise ConstraintError(f"rule {rule!r}: prev. (the previous row of the series) cannot be combined with t1/t2")
    if dc.two_tuple and not dc.blocking_keys():
        raise ConstraintError(f"rule {rule!r}: a two-tuple constraint needs an equality t1.c = t2.c to block on (no cross joins)")
    for p in dc.predicates:
        if p.left is None:
            raise ConstraintError(f"rule {rule!r}: write 'null' on the right of {p}")
        if p.right is None and p.op not in ("=", "!="):
            raise ConstraintError(f"rule {rule!r}: only '= null' and '!= null' compare with null, not {p}")
    return dc


# ------------------------------------------------------------------------------------- rule forms
@dataclass(frozen=True)
class Series:
    """Where ``prev.`` looks: the rows of one series (equal on ``group_by``), ordered by ``time``."""

    group_by: tuple[str, ...]
    time: str

    @property
    def columns(self) -> set[str]:
        return {*self.group_by, self.time}

    def __str__(self) -> str:
        per = f" per {', '.join(self.group_by)}" if self.group_by else ""
        return f"ordered by {self.time}{per}"


def default_series(key: list[str], types: Mapping[str, str]) -> Series | None:
    """The series of a table keyed by ``key``: the key minus its one time column (a timestamp or date),
    ordered by that column; None when the key has no single time column."""
    times = [k for k in key if types.get(k) in ("timestamp", "date")]
    if len(times) != 1:
        return None
    return Series(tuple(k for k in key if k != times[0]), times[0])


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: a disjunction of denial constraints, or a reference check."""

    spec: RuleSpec
    constraints: tuple[DenialConstraint, ...] = ()
    reference: ReferenceSpec | None = None
    notes: tuple[str, ...] = field(default=())
    #: for a rule using ``prev.``: the series whose previous row it reads
    series: Series | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def two_tuple(self) -> bool:
        return any(dc.two_tuple for dc in self.constraints)

    @property
    def uses_prev(self) -> bool:
        return any(dc.uses_prev for dc in self.constraints)

    @property
    def columns(self) -> set[str]:
        cols = {c for dc in self.constraints for c in dc.columns}
        if self.reference is not None:
            cols.add(self.reference.column)
        if self.series is not None:
            cols |= self.series.columns
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
        text = "  |  ".join(str(dc) for dc in self.constraints)
        return f"{text}  (prev: {self.series})" if self.series is not None else text


def compile_rule(rule: RuleSpec, *, series: Series | None = None) -> CompiledRule:
    """The constraints of any rule form (see the module docstring).

    ``series``: where ``prev.`` looks when the rule does not declare its own ``group_by``/``time``
    (:func:`default_series` of the table's key).
    """
    name = rule.name
    if rule.deny is not None:
        dc = parse_deny(name, rule.deny)
        if not dc.uses_prev:
            if rule.group_by is not None or rule.time is not None:
                raise ConstraintError(f"rule {name!r}: group_by/time only apply to rules using prev.")
            return CompiledRule(rule, (dc,))
        if rule.time is not None:
            series = Series(tuple(rule.group_by or ()), rule.time)
        elif rule.group_by is not None:
            raise ConstraintError(f"rule {name!r}: group_by needs time (the column that orders the series)")
        if series is None:
            raise ConstraintError(
                f"rule {name!r}: prev. needs a series: declare time (and group_by), or give the table a key with one"
                " timestamp/date column"
            )
        return CompiledRule(rule, (dc,), series=series)
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


def compile_rules(rules: list[RuleSpec], columns: list[str], *, series: Series | None = None) -> list[CompiledRule]:
    """Compile ``rules`` and check every column they use exists in ``columns`` (``series``: as in
    :func:`compile_rule`)."""
    compiled = []
    for rule in rules:
        cr = compile_rule(rule, series=series)
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


def _operand_sql(o: object, operand: Callable[[Ref], str]) -> str:
    """An operand (reference, constant or arithmetic) as Spark SQL; ``operand(ref)`` renders references."""
    if isinstance(o, Ref):
        return operand(o)
    if isinstance(o, Arith):
        return f"{_ARITH_SQL[o.op]}({_operand_sql(o.left, operand)}, {_operand_sql(o.right, operand)})"
    if isinstance(o, Call):
        return f"{'negative' if o.function == 'neg' else FUNCTIONS[o.function]}({_operand_sql(o.arg, operand)})"
    return _sql_value(o)


def _condition_sql(dc: DenialConstraint, operand: Callable[[Ref], str]) -> str:
    """``dc``'s predicates as one SQL condition, with ``operand(ref)`` giving each column reference.

    NULL comparisons count as not holding, except ``= null`` / ``!= null`` which test for null; so does a
    comparison whose arithmetic gives NULL (a division by zero, a missing previous row).
    """
    preds = []
    for p in dc.predicates:
        left = _operand_sql(p.left, operand)
        if p.right is None and p.op in ("=", "!="):
            preds.append(f"({left} IS {'NOT ' if p.op == '!=' else ''}NULL)")
            continue
        right = _operand_sql(p.right, operand)
        preds.append(f"coalesce({left} {p.op} {right}, false)")
    return " AND ".join(preds)


#: prefix of the columns that carry, on each row, the series' last values before the month (see
#: :func:`previous_sql`)
CARRIED = "__carried_"


def previous_sql(series: Series, column: str, row_id: str, scope: str | None = None, carried: str | None = None) -> str:
    """``prev.<column>``: the value of ``column`` on the previous row of the series (rows with a time,
    and where ``scope`` holds), NULL on a series' first row. ``carried``: a column prefix; the first row
    takes ``<carried><column>`` instead (the series' last value before the month, joined by the caller)."""
    inside = " AND ".join([f"{sql_name(series.time)} IS NOT NULL", *([f"({scope})"] if scope is not None else [])])
    keys = [sql_name(g) for g in series.group_by]
    w = f"PARTITION BY {', '.join([*keys, f'({inside})'])} ORDER BY {sql_name(series.time)}, {sql_name(row_id)}"
    lag = f"lag({sql_name(column)}) OVER ({w})"
    if carried is not None:
        lag = f"CASE WHEN row_number() OVER ({w}) = 1 THEN {sql_name(carried + column)} ELSE {lag} END"
    return f"CASE WHEN {inside} THEN {lag} END"


def violation_condition(
    dc: DenialConstraint, prefix: dict[str, str] | None = None, previous: Callable[[str], str] | None = None
) -> Column:
    """A boolean column true where all predicates hold (the row(s) violate the constraint).

    ``prefix``: tuple → column-name prefix (``t1.x`` is column ``l_x`` by default). ``previous``:
    column → the SQL of ``prev.<column>`` (:func:`previous_sql`).
    """
    from pyspark.sql import functions as F

    prefix = prefix or {"t": "", "t1": "l_", "t2": "r_"}

    def operand(r: Ref) -> str:
        if r.tuple == "prev":
            if previous is None:
                raise ConstraintError(f"rule {dc.rule!r}: prev. needs the series and the row order (rule_condition)")
            return previous(r.column)
        return sql_name(prefix[r.tuple] + r.column)

    return F.expr(_condition_sql(dc, operand))


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


def block_condition(
    dc: DenialConstraint, row_id: str, scope: str | None = None, within: Sequence[str] = (), order: Sequence[str] = ()
) -> Column:
    """True on the rows that take part in a violation of the two-tuple ``dc`` (a window expression).

    The rows are blocked on ``dc``'s equality keys: a window partitioned by them (a hash partitioning —
    rows of different blocks never meet, so nothing like a cross join is ever planned) gathers each
    block, and the predicates are tested between each row and the other members of its block, with the
    row as ``t1`` and as ``t2``. Pure key equalities (``unique``) only count the block. ``scope``: a
    boolean SQL expression; only rows where it holds take part (the others are no member of any block).
    ``within``: columns the blocks are also partitioned by (rows differing in them never meet).
    ``order``: SQL sort keys of the block's rows; the result does not depend on them, but a later window
    over the same blocks in that order then needs no sort of its own.
    """
    from pyspark.sql import functions as F

    keys = [sql_name(k) for k in dc.blocking_keys()]
    scoped = [f"({scope})"] if scope is not None else []
    inside = " AND ".join([f"{k} IS NOT NULL" for k in keys] + scoped)
    # the scope filters the members, it does not split the blocks: every window over these keys (the
    # repairs' keep-first windows too) then shares one partitioning and one sort of the rows
    sorted_by = f" ORDER BY {', '.join(order)}" if order else ""
    block = f"PARTITION BY {', '.join(keys + [sql_name(c) for c in within])}{sorted_by}"
    block += " ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING"

    def member(value: str) -> str:
        return f"IF({scope}, {value}, NULL)" if scope is not None else value

    if dc.key_equality_only:
        return F.expr(f"{inside} AND count({member('1')}) OVER ({block}) > 1")
    fields = [f"{sql_name(row_id)} AS __id"] + [f"{sql_name(c)} AS {sql_name(c)}" for c in sorted(dc.columns)]
    row = f"struct({', '.join(fields)})"
    members = f"collect_list({member(row)}) OVER ({block})"

    def row_is(tup: str) -> str:
        return _condition_sql(dc, lambda r: sql_name(r.column) if r.tuple == tup else f"{_OTHER}.{sql_name(r.column)}")

    other = f"{_OTHER}.__id != {sql_name(row_id)}"
    return F.expr(f"{inside} AND exists({members}, {_OTHER} -> {other} AND (({row_is('t1')}) OR ({row_is('t2')})))")


def rule_condition(
    cr: CompiledRule,
    row_id: str,
    scope: str | None = None,
    carried: str | None = None,
    within: Sequence[str] = (),
    order: Sequence[str] = (),
) -> Column:
    """True on the rows violating a one- or two-tuple rule (any of its constraints); ``scope``, ``within``
    and ``order`` as in :func:`block_condition`; ``carried`` as in :func:`previous_sql`."""
    from pyspark.sql import functions as F

    if cr.reference is not None:
        raise ConstraintError(f"rule {cr.name!r}: a reference rule needs the referenced table (rule_violations)")

    series = cr.series

    def previous(column: str) -> str:
        assert series is not None  # only passed for a rule with a series
        return previous_sql(series, column, row_id, scope, carried)

    cond = F.lit(False)
    for dc in cr.constraints:
        if dc.two_tuple:
            cond = cond | block_condition(dc, row_id, scope, within, order)
        else:
            cond = cond | violation_condition(dc, {"t": ""}, previous if series is not None else None)
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
        return (
            df.join(reference_flags(cr, reference), on=_ref_on(df, cr), how="left")
            .filter(F.col("__ref_found").isNull() & F.col(f"`{cr.reference.column}`").isNotNull())
            .select(row_id)
        )
    return df.withColumn("__violates", rule_condition(cr, row_id)).filter(F.col("__violates")).select(row_id)


def reference_flags(cr: CompiledRule, reference: DataFrame | None, by: str | None = None) -> DataFrame:
    """The distinct known values of a reference rule (``__ref_value``, ``__ref_found``), to broadcast; with
    ``by``, per value of that column of ``reference`` too (``__ref_month``)."""
    from pyspark.sql import functions as F

    r = cr.reference
    assert r is not None, f"rule {cr.name!r} is not a reference rule"
    if reference is None:
        raise ConstraintError(f"rule {cr.name!r}: the referenced table {r.table} is not available")
    if r.target_column not in reference.columns:
        raise ConstraintError(f"rule {cr.name!r}: {r.table} has no column {r.target_column!r}")
    tag = [F.col(f"`{by}`").alias("__ref_month")] if by else []
    known = reference.select(F.col(f"`{r.target_column}`").alias("__ref_value"), *tag).where("__ref_value IS NOT NULL")
    return F.broadcast(known.distinct().withColumn("__ref_found", F.lit(True)))


def _ref_on(df: DataFrame, cr: CompiledRule):
    from pyspark.sql import functions as F

    assert cr.reference is not None, f"rule {cr.name!r} is not a reference rule"
    return F.col(f"`{cr.reference.column}`") == F.col("__ref_value")


def has_cross_join(df: DataFrame) -> bool:
    """Whether Spark's physical plan of ``df`` holds a cartesian product or a nested-loop join."""
    plan = df._jdf.queryExecution().executedPlan().toString()  # noqa: SLF001 - plan text, classic Spark
    return "CartesianProduct" in plan or "BroadcastNestedLoopJoin" in plan
