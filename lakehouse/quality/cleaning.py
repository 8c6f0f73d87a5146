"""Formatted → trusted for one month: assess the rules, clean, and set rejected rows aside — in Spark.

The month is carried through the steps as one *annotated* DataFrame: every formatted row stays in it
from start to end with its status, so no row can get lost between steps:

``__status``   ``kept`` · ``rejected`` (a quarantine rule or step refused it) · ``merged`` (a duplicate
               folded into the row it repeats) · ``imputed`` (a row cleaning added to fill a gap)
``__flags``    every rule/step that flagged the row, whatever its action (the assessment counts these)
``__reasons``  the rule(s) that rejected or merged it; ``__errors`` why, in words
``__repairs``  every cell a step changed: ``(column, old, new, rule)`` — becomes ``quality/repairs``
``__orig``     the row as it came from the formatted table — the quarantine keeps exactly this

Order: exact duplicates are merged first, then the declared cleaning steps run in order, with the rules
evaluated where ``- step: rules`` stands (right after the exact duplicates when absent). Rules are all
evaluated on the same snapshot (so their counts do not depend on their order), then applied: quarantine
rules reject, ``repair`` rules repair the rows still kept, ``warn`` and ``fail`` only flag. Every step
only looks at the rows still kept (``kept``/``imputed``): a quarantined reading neither feeds a rolling
median nor ends a stuck run.

``formatted rows = trusted rows - imputed rows + rejected rows + merged rows`` holds by construction and
is asserted on what was actually written (see :mod:`lakehouse.quality.metrics`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lakehouse.quality.constraints import (
    CARRIED,
    CompiledRule,
    Series,
    compile_rules,
    default_series,
    reference_flags,
    rule_condition,
    sql_name,
)
from lakehouse.specs.models import (
    FillNullsStep,
    ImputeStep,
    OutlierStep,
    RulesStep,
    SourceSpec,
    StandardizeStep,
    StuckStep,
    UnitStep,
)
from lakehouse.transforms.derive import derive_columns
from lakehouse.transforms.parse import FILE_COL, LINE_COL

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from lakehouse.io.storage import Storage
    from lakehouse.quality.metrics import Batch

ROW_ID = "__rid"
STATUS = "__status"
FLAGS = "__flags"
REASONS = "__reasons"
ERRORS = "__errors"
REPAIRS = "__repairs"
ORIG = "__orig"
#: when the row's file was received (see ``clean_month(received=...)``)
RECEIVED = "__received"
ACTIVE = "__active"
KEPT, REJECTED, MERGED, IMPUTED = "kept", "rejected", "merged", "imputed"
EXACT_DUPLICATE = "exact_duplicate"
MONTH = "month"
TS_TEXT = "yyyy-MM-dd'T'HH:mm:ssXXX"
# computed with the month (see _payload_columns) and split by the staging tasks: the quarantine's text of a
# rejected/merged row, the key of a repaired row
Q_RULE, Q_ERROR, Q_KEY, Q_RECORD, R_KEY = "__q_rule", "__q_error", "__q_key", "__q_record", "__r_key"
REPAIR_TYPE = "array<struct<column:string,old:string,new:string,rule:string>>"


class CleaningError(ValueError):
    """A cleaning step does not fit the table; the message names the step."""


@dataclass
class Outcome:
    """What one rule or step did to the month."""

    name: str
    kind: str  # "rule", "step" or "builtin"
    action: str
    description: str = ""
    violations: int = 0
    rejected: int = 0
    merged: int = 0
    repaired_cells: int = 0
    evaluated: bool = True
    note: str = ""
    max_rate: float | None = None


@dataclass(frozen=True)
class Staging:
    """Where Spark's tasks write a cleaned month (nothing is committed): the trusted table, the quarantine and
    the repairs log, as table URIs on ``storage``, and the batch its quarantine and repairs rows belong to."""

    storage: Storage
    trusted: str
    quarantine: str
    repairs: str
    batch: Batch


@dataclass
class CleanResult:
    """The cleaned month as the driver holds it: the Parquet files Spark's tasks staged for the trusted
    table, the quarantine and the repairs log (``staged[table]``: path, size, statistics, rows of each; not
    committed), and the month's figures. Rows never come back to the driver."""

    source: SourceSpec
    month: str
    outcomes: dict[str, Outcome]
    counts: dict[str, int]
    #: changed cells in the month (the repairs log's rows)
    cells_repaired: int
    completeness_in: dict[str, float]
    completeness_out: dict[str, float]
    key_uniqueness_in: float | None
    key_uniqueness_out: float | None
    #: "trusted", "quarantine", "repairs" -> the files staged for that table
    staged: dict[str, list[dict]]
    #: the trusted table's Arrow schema (partition column included), what its month is committed with
    trusted_schema: pa.Schema
    notes: list[str] = field(default_factory=list)

    @property
    def failed_rules(self) -> list[str]:
        """``fail`` rules whose violation rate exceeds their ``max_rate`` (0 when unset)."""
        n = max(self.counts["rows_in"], 1)
        return [
            o.name
            for o in self.outcomes.values()
            if o.action == "fail" and o.evaluated and o.violations / n > (o.max_rate or 0.0)
        ]


def _trusted_rows(t: pa.Table, source: SourceSpec) -> pa.Table:
    """The trusted table's rows of a share of the annotated month: kept and imputed rows, canonical and derived
    columns, lineage (null on imputed rows) and month."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = t.filter(pc.is_in(t[STATUS], pa.array([KEPT, IMPUTED])))
    return out.select([*trusted_columns(source), FILE_COL, LINE_COL, MONTH])


def _rejected_rows(t: pa.Table) -> pa.Table:
    """Rejected and merged rows of a share of the annotated month, with their original content, rule(s),
    disposition and lineage (what :func:`lakehouse.quality.quarantine.quarantine_table` takes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = t.filter(pc.is_in(t[STATUS], pa.array([REJECTED, MERGED])))
    names = {
        "rule": Q_RULE,
        "disposition": STATUS,
        "error": Q_ERROR,
        FILE_COL: FILE_COL,
        LINE_COL: LINE_COL,
        "key": Q_KEY,
        "record": Q_RECORD,
    }
    return pa.table({name: t[column] for name, column in names.items()})


def _repaired_cells(t: pa.Table) -> pa.Table:
    """One row per changed cell of a share of the annotated month: the row's key (as in trusted), column,
    old, new, rule, the row's status and lineage, in the rows' order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lists = t[REPAIRS].combine_chunks()
    cells = pc.list_flatten(lists)
    rows = t.select([R_KEY, STATUS, FILE_COL, LINE_COL]).take(pc.list_parent_indices(lists))
    field_of = {"column": "column", "old_value": "old", "new_value": "new", "rule": "rule"}
    return pa.table(
        {
            "key": rows[R_KEY],
            **{name: pc.struct_field(cells, [f]) for name, f in field_of.items()},
            "row_status": rows[STATUS],
            FILE_COL: rows[FILE_COL],
            LINE_COL: rows[LINE_COL],
        }
    )


def canonical_columns(source: SourceSpec) -> list[str]:
    return [c.name for c in source.columns]


def trusted_columns(source: SourceSpec) -> list[str]:
    """The canonical columns, then the derived ones (``derive:``, computed in the trusted zone)."""
    return [c.name for c in source.trusted_columns]


def _key_json(source: SourceSpec, row: Column) -> Column:
    from pyspark.sql import functions as F

    key = source.quality.key
    if not key:
        return F.lit(None).cast("string")
    return F.to_json(F.struct(*[row.getField(k).alias(k) for k in key]), {"timestampFormat": TS_TEXT})


def _rejected_text(source: SourceSpec) -> dict[str, Column]:
    """What the quarantine keeps of a rejected or merged row: rule(s), error(s), key and record as text."""
    from pyspark.sql import functions as F

    return {
        Q_RULE: F.array_join(F.col(REASONS), ","),
        Q_ERROR: F.array_join(F.col(ERRORS), "; "),
        Q_KEY: _key_json(source, F.col(ORIG)),
        Q_RECORD: F.to_json(F.col(ORIG), {"timestampFormat": TS_TEXT}),
    }


def _row_key(source: SourceSpec) -> Column:
    """The key of a row as it stands now (as in trusted), as JSON: what a repair is logged under."""
    from pyspark.sql import functions as F

    return _key_json(source, F.struct(*[F.col(f"`{c}`").alias(c) for c in canonical_columns(source)]))


def _as_text(col: Column, spark_type: str) -> Column:
    from pyspark.sql import functions as F

    if spark_type == "timestamp":
        return F.date_format(col, TS_TEXT)
    return col.cast("string")


#: the rows still in the table: what every rule and step looks at
ACTIVE_SQL = f"{STATUS} IN ('{KEPT}', '{IMPUTED}')"


def _active() -> Column:
    from pyspark.sql import functions as F

    return F.expr(ACTIVE_SQL)


def _append(array_col: str, cond: Column, value: Column) -> Column:
    from pyspark.sql import functions as F

    return F.when(cond, F.concat(F.col(array_col), F.array(value))).otherwise(F.col(array_col))


def _where_true(pairs: list[tuple[str, Column]]) -> Column:
    """An array of the values whose boolean column holds on the row, in the given order."""
    from pyspark.sql import functions as F

    # array_compact, not F.filter with a Python lambda: such a lambda gets a fresh variable name on every
    # call, the name lands in the generated code, and each month's plan then compiles anew (see
    # lakehouse.quality.constraints); the values are literals, never null themselves
    return F.array_compact(F.array(*[F.when(F.col(col), value) for col, value in pairs]))


def _flag(cond: Column, name: str) -> Column:
    from pyspark.sql import functions as F

    return F.when(cond, F.array_union(F.col(FLAGS), F.array(F.lit(name)))).otherwise(F.col(FLAGS))


def _remove(df: DataFrame, cond: Column, name: str, error: Column, status: str = REJECTED) -> DataFrame:
    """Move the active rows where ``cond`` holds out of the table (rejected or merged), with a reason."""
    from pyspark.sql import functions as F

    hit = _active() & F.coalesce(cond, F.lit(False))
    return df.withColumns(
        {
            REASONS: _append(REASONS, hit, F.lit(name)),
            ERRORS: _append(ERRORS, hit, error),
            FLAGS: _flag(hit, name),
            STATUS: F.when(hit, F.lit(status)).otherwise(F.col(STATUS)),
        }
    )


def _set(df: DataFrame, cond: Column, column: str, new: Column, rule: str, spark_type: str) -> DataFrame:
    """Replace ``column`` by ``new`` on the active rows where ``cond`` holds, logging changed cells."""
    from pyspark.sql import functions as F

    old = F.col(f"`{column}`")
    hit = _active() & F.coalesce(cond, F.lit(False))
    changed = hit & ~old.eqNullSafe(new)
    entry = F.struct(
        F.lit(column).alias("column"),
        _as_text(old, spark_type).alias("old"),
        _as_text(new, spark_type).alias("new"),
        F.lit(rule).alias("rule"),
    )
    return df.withColumns(
        {
            REPAIRS: _append(REPAIRS, changed, entry),
            FLAGS: _flag(changed, rule),
            column: F.when(changed, new.cast(spark_type)).otherwise(old),
        }
    )


# ------------------------------------------------------------------------------------- the month
@dataclass
class _Ctx:
    source: SourceSpec
    rules: list[CompiledRule]
    history: DataFrame | pa.Table | Callable[[], DataFrame | pa.Table | None] | None
    #: rule name → month → the referenced rows that month reads (a month without them: not evaluated)
    references: Mapping[str, Mapping[str, DataFrame]]
    outcomes: dict[str, Outcome]
    #: the months of the plan, in order, and what each month's steps say in words
    months: list[str]
    notes: dict[str, list[str]]
    session: Any = None
    #: month → the earlier months its unit steps compare with, when several months are one plan (their
    #: written rows in ``history``, with their month; the others are months of the plan); None: one month,
    #: ``history`` exactly the rows it reads
    reads: Mapping[str, Sequence[str]] | None = None
    #: the unit steps' decisions (see :mod:`lakehouse.quality.units`)
    units: list = field(default_factory=list)
    #: the columns the month is partitioned by (a series pass grouped by a superset needs no shuffle)
    series_partition: list[str] = field(default_factory=list)
    #: what every window and block is also partitioned by: ``[month]`` when several months are cleaned in
    #: one plan (rows of different months never meet), else nothing
    within: list[str] = field(default_factory=list)

    _earlier: list = field(default_factory=list)

    def step_outcome(self, step: Any, action: str, default: str) -> None:
        """Register what cleaning ``step`` does (its own description, else ``default``) before it runs."""
        self.outcomes[step.name] = Outcome(step.name, "step", action, step.description or default, max_rate=step.max_rate)

    def earlier(self) -> DataFrame | None:
        """The trusted rows of earlier months (``history``, an Arrow table as a Spark one), read once for every
        step and rule that asks."""
        import pyarrow as pa

        from lakehouse.io.spark import arrow_frame

        if not self._earlier:
            rows = self.history() if callable(self.history) else self.history
            self._earlier.append(arrow_frame(self.session, rows) if isinstance(rows, pa.Table) else rows)
        return self._earlier[0]

    def type_of(self, column: str) -> str:
        try:
            return self.source.column(column).type
        except KeyError:
            raise CleaningError(f"{self.source.name}: unknown column {column!r}") from None


def validate_quality(source: SourceSpec) -> list[CompiledRule]:
    """Compile the rules and check every step against the declared columns (raises on a mismatch)."""
    cols, derived = canonical_columns(source), list(source.derive)
    types = {c.name: c.type for c in source.trusted_columns}
    # rules may read derived columns; nothing may change them (they are recomputed after the cleaning)
    rules = compile_rules(source.quality.rules, cols + derived, series=default_series(source.quality.key, types))
    for cr in rules:
        repaired = sorted(set(cr.spec.repair.set or {}) & set(derived)) if cr.spec.repair else []
        if repaired:
            raise CleaningError(f"{source.name}: rule {cr.name!r} repairs derived column(s) {repaired}; repair their inputs")
    for step in source.quality.steps:
        if isinstance(step, RulesStep):
            continue
        targets = list(step.columns) if isinstance(step, FillNullsStep) else [step.column]
        if set(targets) & set(derived):
            raise CleaningError(
                f"{source.name}: cleaning step {step.name!r} changes derived column(s) {sorted(set(targets) & set(derived))};"
                " clean their inputs (derived columns are recomputed after the cleaning)"
            )
        used = targets + list(getattr(step, "group_by", [])) + ([step.time] if hasattr(step, "time") else [])
        missing = sorted(set(used) - set(cols + derived))
        if missing:
            raise CleaningError(f"{source.name}: cleaning step {step.name!r} names unknown column(s) {missing}")
        if hasattr(step, "time") and types[step.time] not in ("timestamp", "date"):
            raise CleaningError(f"{source.name}: step {step.name!r}: time column {step.time!r} must be a timestamp or a date")
        if isinstance(step, FillNullsStep):
            series = {*step.group_by, step.time}
            for target in targets:
                if target in series:
                    raise CleaningError(
                        f"{source.name}: step {step.name!r} cannot fill {target!r}: it places the rows in their series"
                    )
                numeric = source.column(target).type in ("double", "int", "bigint")
                if step.method == "linear" and not numeric:
                    raise CleaningError(
                        f"{source.name}: step {step.name!r}: linear fills numbers, {target!r} is {source.column(target).type}"
                    )
                if step.round is not None and not numeric:
                    raise CleaningError(
                        f"{source.name}: step {step.name!r}: round needs numeric columns, {target!r} is {source.column(target).type}"
                    )
            continue
        kind = source.column(step.column).type
        numeric = kind in ("double", "int", "bigint")
        if isinstance(step, (UnitStep, OutlierStep, StuckStep, ImputeStep)) and not numeric:
            raise CleaningError(f"{source.name}: step {step.name!r} needs a numeric column, {step.column!r} is {kind}")
        if isinstance(step, StandardizeStep):
            if step.truncate and kind not in ("timestamp",):
                raise CleaningError(f"{source.name}: step {step.name!r}: truncate needs a timestamp column")
            if (step.trim or step.case) and kind != "string":
                raise CleaningError(f"{source.name}: step {step.name!r}: trim/case need a string column")
            if step.round is not None and not numeric:
                raise CleaningError(f"{source.name}: step {step.name!r}: round needs a numeric column")
    return rules


def clean_month(
    formatted: DataFrame,
    source: SourceSpec,
    *,
    month: str,
    staging: Staging,
    history: DataFrame | pa.Table | Callable[[], DataFrame | pa.Table | None] | None = None,
    references: dict[str, DataFrame] | None = None,
    received: Mapping[str, str] | None = None,
) -> CleanResult:
    """Apply ``source.quality`` to one month of the formatted table and stage the result.

    Spark's tasks write the trusted rows, the quarantine rows and the changed cells as Parquet files
    (``staging``) and count the month's figures; only the file lists and the figures come back to the
    driver, which commits the files (see :mod:`lakehouse.factories.trusted`).

    Args:
        formatted: the month's formatted rows (canonical columns, ``_source_file``/``_source_line``).
        source: the dataset's spec (its ``quality`` section drives everything).
        month: the month, ``YYYY-MM``.
        staging: where the tasks write, and the batch of the quarantine and repairs rows.
        history: trusted rows of earlier months (the unit step's per-series reference; a Spark or an Arrow
            table), if any; or a function returning them, called when the unit step needs them (so the
            steps before it can run while the earlier months are still being written).
        references: rule name → the referenced table's rows, for ``reference`` rules.
        received: landed file name → when it was received (the landing manifest's ``received_at``, ISO
            8601 UTC): ``keep: first``/``last`` and exact duplicates keep the row received first (last),
            then by file and line. Without it, file and line order alone.
    """
    return clean_months(
        formatted,
        source,
        stagings={month: staging},
        history=history,
        references={rule: {month: rows} for rule, rows in (references or {}).items()},
        received={month: received} if received else None,
    )[month]


def one_plan(source: SourceSpec) -> bool:
    """Whether several consecutive months of ``source`` can be cleaned in one Spark plan
    (:func:`clean_months`): every window, block and series is cut at the month, so no rule may read the
    previous row of a series (``prev.``: a month's first row continues the month before)."""
    return all(cr.series is None for cr in validate_quality(source))


def clean_months(
    formatted: DataFrame,
    source: SourceSpec,
    *,
    stagings: Mapping[str, Staging],
    history: DataFrame | pa.Table | Callable[[], DataFrame | pa.Table | None] | None = None,
    reads: Mapping[str, Sequence[str]] | None = None,
    references: Mapping[str, Mapping[str, DataFrame]] | None = None,
    received: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, CleanResult]:
    """:func:`clean_month` of every month of ``stagings`` (month → where its rows are staged) in one Spark
    plan: one job stages every month's rows, each under its own partition and batch, and the figures come
    back per month. Every window, block and series is partitioned by the month too, so each month is
    cleaned exactly as alone. Several months need ``formatted`` with its ``month`` column and a source
    whose rules do not read the previous row (:func:`one_plan`); ``received``: month → landed file name →
    when it was received; ``references``: rule → month → the rows that month's reference rule reads.

    A unit step compares a month with the trusted months before it: ``reads`` (month → those months) and
    ``history`` (the rows of those not in the plan, with their month). Its decisions for months reading
    months of the plan rest on estimates and are settled once staged (:mod:`lakehouse.quality.units`):
    the result then holds the months up to the first one decided differently, the others are to be cleaned
    again one by one."""
    from pyspark.sql import functions as F

    months = sorted(stagings)
    several = len(months) > 1
    _check_plan(source, months, reads)
    rules = validate_quality(source)
    cols = canonical_columns(source)
    outcomes: dict[str, Outcome] = {}
    ctx = _Ctx(source, rules, history, references or {}, outcomes, months, {m: [] for m in months})
    ctx.session, ctx.reads = formatted.sparkSession, reads if several else None
    ctx.within = [MONTH] if several else []
    common = [*_common_partition(source, rules), *ctx.within]
    if common:
        # every window below partitions by a superset of these columns: one shuffle serves them all, of
        # the formatted rows (the annotations are added after it, not shuffled)
        formatted = formatted.repartition(*[F.col(f"`{c}`") for c in common])
        ctx.series_partition = common
    df = _annotated(formatted, source, months, received)
    if source.quality.drop_exact_duplicates:
        outcomes[EXACT_DUPLICATE] = Outcome(
            EXACT_DUPLICATE, "builtin", "merge", "rows identical in every column: the first is kept"
        )
        df = _exact_duplicates(df, [*cols, *ctx.within])
    df = _run_steps(df, ctx)
    # from the cleaned inputs: a filled or repaired input gives the derived value it implies
    df = derive_columns(df, source.derive)
    staged, partials, distinct = _stage(df, source, stagings, keys_together=_keys_together(source, common))
    trusted_schema = _trusted_schema(df, source)
    from lakehouse.quality.units import settle

    unsettled = settle(ctx, staged, stagings, trusted_schema)
    results = {}
    for month in months:
        if unsettled is not None and month >= unsettled:
            break
        mine = _month_outcomes(ctx, month)
        counts, cells_repaired, comp_in, comp_out, uniq_in, uniq_out = _tally(
            [p for p in partials if p["month"] == month], distinct[month], source, mine
        )
        results[month] = CleanResult(
            source=source,
            month=month,
            outcomes=mine,
            counts=counts,
            cells_repaired=cells_repaired,
            completeness_in=comp_in,
            completeness_out=comp_out,
            key_uniqueness_in=uniq_in,
            key_uniqueness_out=uniq_out,
            staged=staged[month],
            trusted_schema=trusted_schema,
            notes=ctx.notes[month],
        )
    return results


def _check_plan(source: SourceSpec, months: list[str], reads: Mapping[str, Sequence[str]] | None) -> None:
    if len(months) > 1 and not one_plan(source):
        raise CleaningError(
            f"{source.name}: months {months[0]}..{months[-1]} cannot be cleaned in one plan: a rule reads the"
            " previous row of a series across months (clean them one by one)"
        )
    if len(months) > 1 and history_months_of(source) and reads is None:
        raise CleaningError(f"{source.name}: months {months[0]}..{months[-1]}: a unit step needs the months each reads")


def history_months_of(source: SourceSpec) -> int:
    """How many trusted months before a month its unit steps compare with (0: none)."""
    return max((s.history_months for s in source.quality.cleaning if isinstance(s, UnitStep)), default=0)


def _month_outcomes(ctx: _Ctx, month: str) -> dict[str, Outcome]:
    """The plan's outcomes as one month has them (its own copy): a reference rule whose table has no rows
    for the month is not evaluated in it."""
    mine = copy.deepcopy(ctx.outcomes)
    for cr in ctx.rules:
        if cr.reference is not None and month not in ctx.references.get(cr.name, {}):
            mine[cr.name].evaluated = False
            mine[cr.name].note = f"not evaluated: {cr.reference.table} has no data for this month"
    return mine


def _annotated(
    formatted: DataFrame, source: SourceSpec, months: list[str], received: Mapping[str, Mapping[str, str]] | None
) -> DataFrame:
    """The months' formatted rows, each kept with its id, original content, empty annotations, derived
    columns and (when files were received at different times) its file's receipt time."""
    from pyspark.sql import functions as F

    cols = canonical_columns(source)
    df = formatted.select(
        *cols,
        FILE_COL,
        LINE_COL,
        (F.lit(months[0]) if len(months) == 1 else F.col(MONTH)).alias(MONTH),
        F.concat_ws(":", F.col(FILE_COL), F.col(LINE_COL).cast("string")).alias(ROW_ID),
        F.struct(*cols).alias(ORIG),
        F.lit(KEPT).alias(STATUS),
        F.array().cast("array<string>").alias(FLAGS),
        F.array().cast("array<string>").alias(REASONS),
        F.array().cast("array<string>").alias(ERRORS),
        F.array().cast(REPAIR_TYPE).alias(REPAIRS),
    )
    df = derive_columns(df, source.derive)  # the rules and steps may read them
    times = sorted((m, f, t) for m, files in (received or {}).items() for f, t in files.items())
    if len({t for _, _, t in times}) > 1:  # one receipt time orders nothing: no join
        order = formatted.sparkSession.createDataFrame(times, f"__month string, __file string, {RECEIVED} string")
        on = (df[FILE_COL] == order["__file"]) & (df[MONTH] == order["__month"])
        df = df.join(F.broadcast(order), on, "left").drop("__file", "__month")
    else:
        df = df.withColumn(RECEIVED, F.lit(None).cast("string"))
    return df


def _run_steps(df: DataFrame, ctx: _Ctx) -> DataFrame:
    """The declared cleaning steps in order; each run of consecutive series steps grouped alike is one
    vectorized pass over the series (:mod:`lakehouse.quality.series`)."""
    from lakehouse.quality.series import plan_steps, series_pass
    from lakehouse.quality.units import unit_step

    source = ctx.source
    for step in plan_steps(source.quality.steps):
        if isinstance(step, list):
            df = series_pass(df, step, ctx)
        elif isinstance(step, RulesStep):
            df = _apply_rules(derive_columns(df, source.derive), ctx)  # derived from the cells as they stand
        elif isinstance(step, StandardizeStep):
            df = _standardize(df, step, ctx)
        elif isinstance(step, UnitStep):
            # its aggregation is a job of its own; the month's staging job computes the steps before it
            # again rather than reading a cache (caching the annotated rows costs more than recomputing them)
            df = unit_step(df, step, ctx)
    return df


def _common_partition(source: SourceSpec, rules: list[CompiledRule]) -> list[str]:
    """Columns every step and two-tuple rule groups by (their windows then need no further shuffle)."""
    groups: list[set[str]] = []
    for step in source.quality.steps:
        if hasattr(step, "group_by"):
            groups.append(set(step.group_by))
    for cr in rules:
        for dc in cr.constraints:
            if dc.two_tuple:
                groups.append(set(dc.blocking_keys()))
    if not groups:
        return []
    common = set.intersection(*groups)
    return [c for c in canonical_columns(source) if c in common]


def _rewritten(source: SourceSpec) -> set[str]:
    """The columns a cleaning step or a repair may change in an existing row."""
    from lakehouse.quality.series import SERIES_STEPS, _written_columns

    steps = source.quality.steps
    cols = {s.column for s in steps if isinstance(s, StandardizeStep | UnitStep)}
    cols.update(_written_columns([s for s in steps if isinstance(s, SERIES_STEPS)]))
    for rule in source.quality.rules:
        if rule.repair is not None and rule.repair.set:
            cols.update(rule.repair.set)
    return cols


def _keys_together(source: SourceSpec, partitioned_by: list[str]) -> bool:
    """Whether the rows sharing a month and a key, before cleaning and after, sit in one task: the annotated
    months are partitioned by ``partitioned_by`` (every later window and join keeps that partitioning, a
    subset of their own keys), and each of those columns is the month or a key column no step changes (an
    imputed row copies its series' keys). The tasks then count the distinct keys themselves, with pyarrow;
    a key with a floating-point column is left to Spark, whose ``distinct`` takes -0.0 for 0.0 and every
    NaN for one value."""
    key = set(source.quality.key or [])
    if any(source.column(k).type == "double" for k in key):
        return False
    unchanged = key - _rewritten(source)
    return bool(partitioned_by) and all(c == MONTH or c in unchanged for c in partitioned_by)


def _tally_columns(source: SourceSpec) -> list[Column]:
    """What the figures need of each row: status, flag/reason/repair lists, one null-flag per column, the
    key before and after."""
    from pyspark.sql import functions as F

    cols = canonical_columns(source)
    key = source.quality.key or []
    present = [F.col(ORIG).getField(c).isNotNull().alias(f"__in{j}") for j, c in enumerate(cols)]
    present += [F.col(f"`{c}`").isNotNull().alias(f"__out{j}") for j, c in enumerate(cols)]
    keys = [F.col(ORIG).getField(k).alias(f"__ki{i}") for i, k in enumerate(key)]
    keys += [F.col(f"`{k}`").alias(f"__ko{i}") for i, k in enumerate(key)]
    return [F.col(STATUS), F.col(FLAGS), F.col(REASONS), F.col(REPAIRS), *present, *keys]


def _payload_columns(source: SourceSpec) -> list[Column]:
    """The rest of what the trusted zone writes: the trusted columns, and the quarantine's text of the
    rejected/merged rows and the key of the repaired rows (computed on those rows only)."""
    from pyspark.sql import functions as F

    out = F.col(STATUS).isin(REJECTED, MERGED)
    text = [F.when(out, expr).alias(name) for name, expr in _rejected_text(source).items()]
    repaired = F.when(F.size(F.col(REPAIRS)) > 0, _row_key(source)).alias(R_KEY)
    return [*[F.col(f"`{c}`") for c in trusted_columns(source)], F.col(FILE_COL), F.col(LINE_COL), F.col(MONTH), *text, repaired]


#: a task splits and counts the annotated month this many rows at a time (its memory stays bounded)
CHUNK_ROWS = 100_000
#: what a staging task returns: a staged file (``kind`` = its table) of a ``month``, that month's figures
#: (``tally``), or a key of the month (``key_in``: a formatted row's, ``key_out``: a trusted row's; followed
#: by the key columns)
STAGED_FIELDS = (
    ("kind", "string"),
    ("month", "string"),
    ("path", "string"),
    ("size", "bigint"),
    ("stats", "string"),
    ("rows", "bigint"),
    ("tally", "string"),
)


def _trusted_schema(df: DataFrame, source: SourceSpec) -> pa.Schema:
    """The trusted table's Arrow schema, as the rows the tasks stage have it (partition column last)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema

    from lakehouse.io.lake import normalized_schema

    cols = [F.col(f"`{c}`") for c in [*trusted_columns(source), FILE_COL, LINE_COL, MONTH]]
    return normalized_schema(to_arrow_schema(df.select(*cols).schema, timezone="UTC"))


def _stage(df: DataFrame, source: SourceSpec, stagings: Mapping[str, Staging], *, keys_together: bool = False):
    """The annotated months written by Spark's tasks (one job): (month → the staged files per table, each
    task's figures per month, month → the number of distinct keys in and out). With ``keys_together`` (see
    :func:`_keys_together`) each task counts its keys and the counts add up; otherwise a key's rows may sit
    in different tasks, and Spark's ``distinct`` counts the keys the tasks emit."""
    import json

    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructField, StructType, _parse_datatype_string

    key = source.quality.key or []
    types = {f.name: f.dataType for f in df.schema.fields}
    fields = [StructField(name, _parse_datatype_string(kind)) for name, kind in STAGED_FIELDS]
    fields += [StructField(f"__k{i}", types[k]) for i, k in enumerate(key)]
    out_type = StructType(fields)
    task = _stage_task(source, dict(stagings), to_arrow_schema(out_type, timezone="UTC"), keys_together)
    emitted = df.select(*_tally_columns(source), *_payload_columns(source)).mapInArrow(task, out_type)
    if key and not keys_together:
        names = [name for name, _ in STAGED_FIELDS]
        # the distinct keys of each kind counted in Spark; the files and figures pass through one row each
        emitted = emitted.distinct().groupBy(*names).agg(F.count(F.lit(1)).alias("__n"))
    rows = emitted.drop(*[f"__k{i}" for i in range(len(key))]).toArrow().to_pylist()
    staged: dict[str, dict[str, list[dict]]] = {m: {"trusted": [], "quarantine": [], "repairs": []} for m in stagings}
    partials: list[dict] = []
    distinct: dict[str, dict[str, int]] = {m: {"key_in": 0, "key_out": 0} for m in stagings}
    for r in rows:
        if r["kind"] in ("trusted", "quarantine", "repairs"):
            staged[r["month"]][r["kind"]].append({k: r[k] for k in ("path", "size", "stats", "rows")})
        elif r["kind"] == "tally":
            partials.append({**json.loads(r["tally"]), "month": r["month"]})
        elif keys_together:
            distinct[r["month"]][r["kind"]] += int(r["rows"])
        else:
            distinct[r["month"]][r["kind"]] = int(r["__n"])
    return staged, partials, distinct


def _stage_task(source: SourceSpec, stagings: dict[str, Staging], out_schema: pa.Schema, keys_together: bool):
    """The function each Spark task runs over its share of the annotated months: each month's rows split
    into trusted, quarantine and repairs rows with pyarrow, staged as Parquet under the month's partition
    (and batch); each month's figures and distinct keys (``keys_together``: their number, one row per
    kind and month at the end)."""

    def run(batches):
        import json
        import uuid

        import pyarrow as pa
        import pyarrow.compute as pc

        from lakehouse.io.staging import Stager, month_folder
        from lakehouse.quality import quarantine, repairs

        stagers: dict[tuple[str, str], Stager] = {}
        key = source.quality.key or []
        #: (kind, month) -> each chunk's distinct keys, counted together once the task has seen every chunk
        keys_seen: dict[tuple[str, str], list[pa.Table]] = {}

        def stager(kind: str, month: str) -> Stager:
            if (kind, month) not in stagers:
                staging = stagings[month]
                stagers[kind, month] = Stager(staging.storage, getattr(staging, kind), month_folder(month))
            return stagers[kind, month]

        def record(kind: str, month: str, **values) -> pa.RecordBatch:
            row: dict[str, Any] = {name: None for name in out_schema.names}
            row.update(kind=kind, month=month, **values)
            return pa.RecordBatch.from_pylist([row], schema=out_schema)

        def written(kind: str, month: str, files: list[dict]):
            for f in files:
                yield record(kind, month, path=f["path"], size=f["size"], stats=f["stats"], rows=f["rows"])

        def process(t: pa.Table, month: str):
            batch = stagings[month].batch
            yield record("tally", month, path=uuid.uuid4().hex, tally=json.dumps(_partial_tally(t, source)))
            if key:
                yield from _share_keys(t, len(key), out_schema, month, keys_seen if keys_together else None)
            trusted = _trusted_rows(t, source).drop_columns([MONTH])
            rejected = quarantine.conform(
                quarantine.quarantine_table(
                    _rejected_rows(t), dataset=batch.dataset, stage=batch.stage, run_id=batch.run_id, month=month
                ),
                batch,
            ).drop_columns([MONTH])
            cells = repairs.conform(_repaired_cells(t), batch).drop_columns([MONTH])
            for kind, rows in (("trusted", trusted), ("quarantine", rejected), ("repairs", cells)):
                yield from written(kind, month, stager(kind, month).add(rows))

        def by_month(t: pa.Table):
            if len(stagings) == 1:
                yield from process(t, next(iter(stagings)))
                return
            for month in sorted(pc.unique(t[MONTH]).to_pylist()):
                yield from process(t.filter(pc.equal(t[MONTH], month)), month)

        chunk: list[pa.RecordBatch] = []
        held = 0
        for b in batches:
            chunk.append(b)
            held += b.num_rows
            if held >= CHUNK_ROWS:
                yield from by_month(pa.Table.from_batches(chunk))
                chunk, held = [], 0
        if chunk:
            yield from by_month(pa.Table.from_batches(chunk))
        for (kind, month), stager_ in stagers.items():
            yield from written(kind, month, stager_.flush())
        for (kind, month), parts in keys_seen.items():
            yield record(kind, month, rows=_unique_rows(pa.concat_tables(parts)).num_rows)

    return run


def _share_keys(t: pa.Table, n_key: int, out_schema: pa.Schema, month: str, seen: dict[tuple[str, str], list] | None):
    """The distinct keys of a share of a month's rows, before cleaning (``key_in``: the formatted rows) and
    after (``key_out``: the trusted rows), as staging output rows; with ``seen`` ((kind, month) → key
    tables) kept there instead, to be counted when the task has seen all its rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source_row = pc.not_equal(t[STATUS], IMPUTED)
    out_row = pc.is_in(t[STATUS], pa.array([KEPT, IMPUTED]))
    for kind, prefix, rows in (("key_in", "__ki", source_row), ("key_out", "__ko", out_row)):
        part = _unique_rows(t.filter(rows).select([f"{prefix}{i}" for i in range(n_key)]))
        if not part.num_rows:
            continue
        if seen is None:
            yield _key_rows(part, prefix, n_key, out_schema, kind=kind, month=month)
        else:
            seen.setdefault((kind, month), []).append(part)


def _unique_rows(t: pa.Table) -> pa.Table:
    """The distinct rows of ``t`` (nulls equal nulls)."""
    return t.group_by(t.column_names, use_threads=False).aggregate([])


def _key_rows(part: pa.Table, prefix: str, n_key: int, out_schema: pa.Schema, *, kind: str, month: str):
    """A share's distinct keys ``part`` (columns ``<prefix><i>``) as staging output rows of ``kind``."""
    import pyarrow as pa

    n = part.num_rows
    arrays = [pa.array([kind] * n, pa.string()), pa.array([month] * n, pa.string())]
    arrays += [pa.nulls(n, out_schema.field(name).type) for name, _ in STAGED_FIELDS[2:]]
    arrays += [part[f"{prefix}{i}"].cast(out_schema.field(f"__k{i}").type).combine_chunks() for i in range(n_key)]
    return pa.RecordBatch.from_arrays(arrays, schema=out_schema)


def _partial_tally(t: pa.Table, source: SourceSpec) -> dict:
    """The figures of a share of the annotated month (its ``_tally_columns``), as sums that add up
    across shares: status counts, rows flagged/rejected/merged per name, changed cells per rule, present
    values per column. Counted with pyarrow in the task."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = canonical_columns(source)
    status = t[STATUS]
    source_row = pc.not_equal(status, IMPUTED)
    out_row = pc.is_in(status, pa.array([KEPT, IMPUTED]))

    def n(mask) -> int:
        return int(pc.sum(mask).as_py() or 0) if len(mask) else 0

    def rows_naming(column: str) -> dict[str, list[int]]:
        """name -> the indices of the rows whose list column names it (each row once)."""
        values = t[column].combine_chunks() if t.num_rows else pa.array([], pa.list_(pa.string()))
        flat = pc.list_flatten(values)
        if not len(flat):
            return {}
        pairs = pa.table({"row": pc.list_parent_indices(values), "name": flat}).group_by(["row", "name"]).aggregate([])
        found: dict[str, list[int]] = {}
        for r, name in zip(pairs["row"].to_pylist(), pairs["name"].to_pylist(), strict=True):
            found.setdefault(name, []).append(r)
        return found

    flagged, reasons = rows_naming(FLAGS), rows_naming(REASONS)
    statuses = status.to_pylist() if reasons else []
    cells = pc.list_flatten(t[REPAIRS].combine_chunks()) if t.num_rows else None
    repaired = pc.struct_field(cells, ["rule"]) if cells is not None and len(cells) else pa.array([], pa.string())
    per_rule = dict(zip(*[c.to_pylist() for c in pc.value_counts(repaired).flatten()], strict=True)) if len(repaired) else {}
    why = {name: [statuses[r] for r in rows] for name, rows in reasons.items()}
    return {
        "counts": {
            "rows_in": n(source_row),
            "rows_out": n(out_row),
            "rows_kept": n(pc.equal(status, KEPT)),
            "rows_rejected": n(pc.equal(status, REJECTED)),
            "rows_merged": n(pc.equal(status, MERGED)),
            "rows_imputed": n(pc.equal(status, IMPUTED)),
        },
        "flagged": {name: len(rows) for name, rows in flagged.items()},
        "rejected": {name: w.count(REJECTED) for name, w in why.items()},
        "merged": {name: w.count(MERGED) for name, w in why.items()},
        "repaired": {name: int(v) for name, v in per_rule.items()},
        "cells": len(repaired),
        "present_in": [n(pc.and_(source_row, t[f"__in{j}"])) for j in range(len(cols))],
        "present_out": [n(pc.and_(out_row, t[f"__out{j}"])) for j in range(len(cols))],
    }


def _tally(partials: list[dict], distinct: Mapping[str, int], source: SourceSpec, outcomes: dict[str, Outcome]):
    """Status counts, per rule/step figures, completeness and key uniqueness of the annotated month, from
    the tasks' :func:`_partial_tally` sums and the distinct keys Spark counted."""
    cols = canonical_columns(source)
    names = ("rows_in", "rows_out", "rows_kept", "rows_rejected", "rows_merged", "rows_imputed")
    counts = {name: sum(p["counts"][name] for p in partials) for name in names}

    def total(what: str, name: str) -> int:
        return sum(p[what].get(name, 0) for p in partials)

    for o in outcomes.values():
        o.violations = total("flagged", o.name)
        o.rejected, o.merged = total("rejected", o.name), total("merged", o.name)
        o.repaired_cells = total("repaired", o.name)
    n_in, n_out = counts["rows_in"], counts["rows_out"]
    comp_in = {c: (sum(p["present_in"][j] for p in partials) / n_in if n_in else 1.0) for j, c in enumerate(cols)}
    comp_out = {c: (sum(p["present_out"][j] for p in partials) / n_out if n_out else 1.0) for j, c in enumerate(cols)}
    uniq_in = uniq_out = None
    if source.quality.key:
        # distinct keys as Spark's distinct() counts them: a NULL key value is one value
        uniq_in = distinct["key_in"] / n_in if n_in else 1.0
        uniq_out = distinct["key_out"] / n_out if n_out else 1.0
    return counts, sum(p["cells"] for p in partials), comp_in, comp_out, uniq_in, uniq_out


# ----------------------------------------------------------------------------------------- steps
def _exact_duplicates(df: DataFrame, cols: list[str]) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy(*[F.col(f"`{c}`") for c in cols]).orderBy(*_keep_order("first", None))
    ranked = df.withColumns({"__dup_rank": F.row_number().over(w), "__dup_first": F.first(ROW_ID).over(w)})
    error = F.concat(F.lit("identical to "), F.col("__dup_first"))
    return _remove(ranked, F.col("__dup_rank") > 1, EXACT_DUPLICATE, error, status=MERGED).drop("__dup_rank", "__dup_first")


def _standardize(df: DataFrame, step: StandardizeStep, ctx: _Ctx) -> DataFrame:
    from pyspark.sql import functions as F

    ctx.step_outcome(step, "repair", f"standardize {step.column}")
    col = F.col(f"`{step.column}`")
    new = col
    if step.truncate:
        new = F.date_trunc(step.truncate, new)
    if step.trim:
        new = F.trim(new)
    if step.case == "lower":
        new = F.lower(new)
    elif step.case == "upper":
        new = F.upper(new)
    if step.round is not None:
        new = F.round(new, step.round)
    return _set(df, col.isNotNull(), step.column, new, step.name, ctx.type_of(step.column))


def _per(step) -> str:
    return f"per {', '.join(step.group_by)}" if step.group_by else "of the series"


# ------------------------------------------------------------------------------------------ rules
def _apply_rules(df: DataFrame, ctx: _Ctx) -> DataFrame:
    """Evaluate every rule on the same snapshot of the kept rows, then apply the actions."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    flags: dict[str, str] = {}
    conditions: dict[str, Column] = {}  # added in one projection: each DataFrame step costs an analysis
    df, carried, carried_columns = _carry_previous(df, ctx)
    # the blocks' windows sort their rows as the first keep repair does: its window then sorts nothing
    keeps = [cr.spec.repair for cr in ctx.rules if cr.spec.action == "repair" and cr.spec.repair and not cr.spec.repair.set]
    block_order = _keep_order_sql(keeps[0].keep or "first", keeps[0].by) if keeps else []
    for i, cr in enumerate(ctx.rules):
        rule = cr.spec
        outcome = Outcome(rule.name, "rule", rule.action, rule.description or cr.describe(), max_rate=rule.max_rate)
        ctx.outcomes[rule.name] = outcome
        col = f"__v{i}"
        if cr.reference is not None:
            given = {m: rows for m, rows in ctx.references.get(rule.name, {}).items() if m in ctx.months}
            if not given:  # no month of the plan has the table's rows: each month's outcome says so
                continue
            df = _referenced(df, cr, given, ctx, col)
        else:
            # every rule sees the same snapshot: the rows kept when the rules step starts
            prefix = carried.get(cr.series) if cr.series is not None else None
            conditions[col] = rule_condition(cr, ROW_ID, scope=ACTIVE_SQL, carried=prefix, within=ctx.within, order=block_order)
        flags[rule.name] = col
    if conditions:
        df = df.withColumns(conditions)
    if flags:
        # the names of the rules a row breaks, in rule order, added to its flags (as _flag does one by one)
        broken = _where_true([(c, F.lit(n)) for n, c in flags.items()])
        df = df.withColumn(FLAGS, F.array_union(F.col(FLAGS), broken))
    # quarantine: every quarantine rule the row breaks is named
    q = [(cr, flags[cr.name]) for cr in ctx.rules if cr.spec.action == "quarantine" and cr.name in flags]
    if q:
        hit = F.lit(False)
        for _, col in q:
            hit = hit | F.col(col)
        names = _where_true([(col, F.lit(cr.name)) for cr, col in q])
        errors = _where_true([(col, F.lit(f"violates {cr.name}: {cr.describe()}")) for cr, col in q])
        rejecting = _active() & hit
        df = df.withColumns(
            {
                REASONS: F.when(rejecting, F.concat(F.col(REASONS), names)).otherwise(F.col(REASONS)),
                ERRORS: F.when(rejecting, F.concat(F.col(ERRORS), errors)).otherwise(F.col(ERRORS)),
                STATUS: F.when(rejecting, F.lit(REJECTED)).otherwise(F.col(STATUS)),
            }
        )
    # repairs, in rule order, on the rows still kept
    for cr in ctx.rules:
        rule = cr.spec
        if rule.action != "repair" or cr.name not in flags:
            continue
        flag = F.col(flags[cr.name])
        repair = rule.repair
        assert repair is not None, f"rule {rule.name!r}: a repair rule names its repair"
        if repair.set:
            for target, expr in repair.set.items():
                df = _set(df, flag, target, F.expr(expr), rule.name, ctx.type_of(target))
        else:
            keys = cr.blocking_keys() if cr.two_tuple else []
            in_block = _active() & flag
            order = _keep_order(repair.keep or "first", repair.by)
            # a block's rows in keep order, the rows outside it skipped: a row's rank among the block's rows
            # so far, and the id of the block's first row, in one window (the partitioning and order of the
            # rules' block windows: no sort of its own)
            block = Window.partitionBy(*[F.col(f"`{k}`") for k in [*keys, *ctx.within]]).orderBy(*order)
            so_far = block.rowsBetween(Window.unboundedPreceding, Window.currentRow)
            whole = block.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
            df = df.withColumns(
                {
                    "__keep_rank": F.sum(in_block.cast("int")).over(so_far),
                    "__keep_first": F.first(F.when(in_block, F.col(ROW_ID)), ignorenulls=True).over(whole),
                }
            )
            error = F.format_string(f"conflicts on {', '.join(keys)}; kept %s (keep {repair.keep})", F.col("__keep_first"))
            df = _remove(df, in_block & (F.col("__keep_rank") > 1), rule.name, error, status=MERGED)
            df = df.drop("__keep_rank", "__keep_first")
    return df.drop(*flags.values(), *carried_columns)


def _referenced(df: DataFrame, cr: CompiledRule, given: Mapping[str, DataFrame], ctx: _Ctx, col: str) -> DataFrame:
    """``df`` with ``col`` true where a kept row's value is missing from the rows its month's reference rule
    reads (``given``: month → those rows; a month without them is not evaluated: nothing is flagged)."""
    from pyspark.sql import functions as F

    assert cr.reference is not None, f"rule {cr.name!r} is not a reference rule"
    value = F.col(f"`{cr.reference.column}`")
    if ctx.within:
        tagged = [rows.withColumn(MONTH, F.lit(m)) for m, rows in sorted(given.items())]
        union = tagged[0]
        for rows in tagged[1:]:
            union = union.unionByName(rows)
        known = reference_flags(cr, union, by=MONTH)
        on = (value == F.col("__ref_value")) & (F.col(MONTH) == F.col("__ref_month"))
        evaluated = F.col(MONTH).isin(sorted(given))
    else:
        known, on, evaluated = reference_flags(cr, next(iter(given.values()))), value == F.col("__ref_value"), F.lit(True)
    df = df.join(known, on, "left")
    missing = _active() & evaluated & value.isNotNull() & F.col("__ref_found").isNull()
    return df.withColumn(col, missing).drop("__ref_value", "__ref_month", "__ref_found")


def history_columns(source: SourceSpec) -> list[str]:
    """The columns of earlier trusted months the cleaning reads: unit steps' series and values, and the
    series, time and ``prev.`` columns of rules that look at the previous row."""
    cols = [c for s in source.quality.cleaning if isinstance(s, UnitStep) for c in (*s.group_by, s.column)]
    for cr in validate_quality(source):
        if cr.series is not None:
            cols += [*cr.series.group_by, cr.series.time, *sorted(c for dc in cr.constraints for c in dc.columns)]
    return list(dict.fromkeys(cols))


def _carry_previous(df: DataFrame, ctx: _Ctx) -> tuple[DataFrame, dict[Series, str], list[str]]:
    """For rules with ``prev.``: each series' last row before the month (from ``history``), joined onto the
    month as ``__carried_<n>_<column>``, so a series' first row of the month has a previous row.

    The last rows are picked by Spark (one aggregation per series, nothing collected): the row with the
    latest non-null time, among rows of the same time the last in the history's order, its values taken
    as they are (nulls included). Without history (the first month) a series' first row has no previous
    row. Returns the column prefix per series and the columns added.
    """
    from pyspark.sql import functions as F

    series = list(dict.fromkeys(cr.series for cr in ctx.rules if cr.series is not None))
    earlier = ctx.earlier() if series and ctx.history is not None else None
    if earlier is None:
        return df, {}, []
    # the history's order, the tie-break among rows of a series with the same time
    earlier = earlier.withColumn("__carried_order", F.monotonically_increasing_id())
    prefixes, added = {}, []
    for n, s in enumerate(series):
        values = sorted({c for cr in ctx.rules if cr.series == s for dc in cr.constraints for c in dc.columns})
        if any(c not in earlier.columns for c in (*s.group_by, s.time, *values)):
            continue  # history from before the rule existed: no carried rows
        prefix = f"{CARRIED}{n}_"
        keys = [f"__carried_key_{i}" for i in range(len(s.group_by))]
        ordered = F.struct(F.col(f"`{s.time}`"), F.col("__carried_order"), *[F.col(f"`{v}`").alias(prefix + v) for v in values])
        last = (
            earlier.where(F.col(f"`{s.time}`").isNotNull())
            .groupBy(*[F.col(f"`{g}`").alias(k) for g, k in zip(s.group_by, keys, strict=True)])
            .agg(F.max(ordered).alias("__carried_last"))
            .select(*keys, *[F.col("__carried_last")[prefix + v].alias(prefix + v) for v in values])
        )
        on = [F.col(f"`{g}`").eqNullSafe(F.col(k)) for g, k in zip(s.group_by, keys, strict=True)] or F.lit(True)
        df = df.join(last, on=on, how="left").drop(*keys)
        prefixes[s] = prefix
        added += [prefix + v for v in values]
    return df, prefixes, added


def _keep_keys(keep: str, by: str | None) -> list[tuple[str, bool]]:
    """The order in which ``keep`` keeps the first row of a block: (column, descending) pairs, nulls last."""
    lineage = [RECEIVED, FILE_COL, LINE_COL]
    if keep in ("first", "last"):
        return [(c, keep == "last") for c in lineage]
    assert by is not None, f"keep {keep!r} names its column"
    return [(by, keep == "max"), *[(c, False) for c in lineage]]


def _keep_order(keep: str, by: str | None) -> list[Column]:
    from pyspark.sql import functions as F

    return [F.col(f"`{c}`").desc_nulls_last() if desc else F.col(f"`{c}`").asc_nulls_last() for c, desc in _keep_keys(keep, by)]


def _keep_order_sql(keep: str, by: str | None) -> list[str]:
    return [f"{sql_name(c)} {'DESC' if desc else 'ASC'} NULLS LAST" for c, desc in _keep_keys(keep, by)]


def summary_rows(result: CleanResult) -> list[dict[str, Any]]:
    """The outcomes as plain dicts (for metadata and tests)."""
    n = max(result.counts["rows_in"], 1)
    return [
        {
            "name": o.name,
            "kind": o.kind,
            "action": o.action,
            "violations": o.violations,
            "rate": o.violations / n,
            "rejected": o.rejected,
            "merged": o.merged,
            "repaired_cells": o.repaired_cells,
            "evaluated": o.evaluated,
            "note": o.note,
        }
        for o in result.outcomes.values()
    ]
