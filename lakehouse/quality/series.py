"""The series steps of the cleaning (outliers, stuck runs, gap imputation, null filling) as vectorized kernels.

Consecutive series steps with the same ``group_by`` run in ONE pass of a scalar iterator Arrow UDF over the
month, partitioned by series and sorted by its keys: only the columns the steps read (series keys, times,
values, status, row id) reach the Python worker, the rest of each row waits in Spark, which re-attaches the
UDF's result to its row in order. The kernel cuts the batches it gets into series, runs the steps on each
one after the other with numpy and pyarrow (each sees the statuses and values the previous one left, as the
month's steps always do), and returns per row its new status, the values the steps wrote, the per-step
figures (``__s<i>_*``) and the rows imputed after it. Spark turns those figures into the flags, reasons,
error texts, repairs and imputed rows' ids (:func:`_annotate`), so every text is formatted by Spark exactly
as the rules' are.

Every step looks at its *active* rows: kept or imputed rows with a non-null value (fill_nulls: with a non-null
time), ordered by time then row id (nulls first), as ``lakehouse.quality.cleaning`` describes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.quality.cleaning import (
    ERRORS,
    FLAGS,
    IMPUTED,
    KEPT,
    MONTH,
    REASONS,
    REJECTED,
    REPAIRS,
    ROW_ID,
    STATUS,
    _as_text,
    _Ctx,
    _per,
)
from lakehouse.specs.models import FillNullsStep, ImputeStep, OutlierStep, StuckStep, duration_seconds

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructField, StructType

SeriesStep = OutlierStep | StuckStep | ImputeStep | FillNullsStep
SERIES_STEPS = (OutlierStep, StuckStep, ImputeStep, FillNullsStep)
#: an imputed row's id inside the kernel (its final id, from its series and time, is set by Spark)
IMPUTED_ID = "imputed:"
#: the window matrix of the outliers step is built this many cells at a time (memory stays bounded)
WINDOW_CELLS = 1 << 21
#: the precision of the decimal rounding (wide enough for any double)
_DECIMAL = Context(prec=800)
#: the kernel's result column; its field ``NEW_ROWS`` holds the rows imputed after a row
FIGURES, NEW_ROWS = "__figures", "__new_rows"
#: the position of a row in its carrier's explosion (0: the row itself) and the imputed row at that position
POS, NEW = "__pos", "__new"


# ------------------------------------------------------------------------------------ Spark side
def series_pass(df: DataFrame, steps: list[SeriesStep], ctx: _Ctx) -> DataFrame:
    """Run ``steps`` (same ``group_by``) over ``df`` in one pass of the kernel, then annotate in Spark."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_type

    for step in steps:
        _register(step, ctx)
    types = {f.name: f.dataType for f in df.schema.fields}
    aux = _aux_fields(steps, types)
    # a series is its group's rows of one month (several months cleaned in one plan: ctx.within)
    keys = list(dict.fromkeys([*steps[0].group_by, *ctx.within]))
    read, written = _read_columns(steps, keys), _written_columns(steps)
    figures = _figures_type(keys, types, read, written, aux)
    # a scalar iterator UDF (from the type hints): the stubs know no struct results for it
    kernel = F.arrow_udf(_kernel(steps, keys, to_arrow_type(figures, timezone="UTC")), figures)  # type: ignore[call-overload]
    df = _by_series(df, keys, ctx.series_partition)
    df = df.withColumn(FIGURES, kernel(F.struct(*[F.col(f"`{c}`") for c in read])))
    df = _attached(df, keys, written, [f.name for f in aux], figures)
    return _annotate(df, steps, ctx).drop(*[f.name for f in aux])


def _read_columns(steps: list[SeriesStep], keys: list[str]) -> list[str]:
    """What the kernel reads of each row: the series keys, the steps' times and values, status and row id."""
    cols = [*keys]
    for step in steps:
        values = list(step.columns) if isinstance(step, FillNullsStep) else [step.column]
        cols += [step.time, *values]
    return list(dict.fromkeys([*cols, STATUS, ROW_ID]))


def _written_columns(steps: list[SeriesStep]) -> list[str]:
    """The columns a step may change on an existing row (an outlier repair, a filled cell)."""
    cols: list[str] = []
    for step in steps:
        if isinstance(step, FillNullsStep):
            cols += step.columns
        elif isinstance(step, OutlierStep) and step.action == "repair":
            cols.append(step.column)
    return list(dict.fromkeys(cols))


def _figures_type(keys: list[str], types: dict, read: list[str], written: list[str], aux: list) -> StructType:
    """What the kernel returns per row: its status when a step changed it, the written columns, the per-step
    figures, and the rows imputed after it (what they read, their status and figures)."""
    from pyspark.sql.types import ArrayType, StringType, StructField, StructType

    status = StructField(STATUS, StringType(), True)
    own = [StructField(c, types[c], True) for c in read if c not in (*keys, STATUS, ROW_ID)]
    new_rows = StructField(NEW_ROWS, ArrayType(StructType([*own, status, *aux]), True), True)
    return StructType([status, *[StructField(c, types[c], True) for c in written], *aux, new_rows])


def _by_series(df: DataFrame, group_by: list[str], partitioned_by: list[str]) -> DataFrame:
    """``df`` with each series in one partition, its rows next to each other (sorted by the series keys).

    A month already partitioned by a subset of the keys (``partitioned_by``, see ``clean_month``) is not
    shuffled again, and Spark drops the sort when the rows are already in that order."""
    from pyspark.sql import functions as F

    keys = [F.col(f"`{g}`") for g in group_by]
    if not keys:
        return df.repartition(1)
    if not partitioned_by or not set(partitioned_by) <= set(group_by):
        df = df.repartition(*keys)
    return df.sortWithinPartitions(*keys)


def _attached(df: DataFrame, group_by: list[str], written: list[str], aux: list[str], figures: StructType) -> DataFrame:
    """The kernel's figures on their rows, and each imputed row after the row that carries it: its series'
    keys and month as on that row, the values the kernel gave it, empty lists, nulls elsewhere."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, StructType

    fields = [f for f in df.schema.fields if f.name != FIGURES]
    fig = F.col(FIGURES)
    element = figures[NEW_ROWS].dataType
    assert isinstance(element, ArrayType) and isinstance(element.elementType, StructType)
    element = element.elementType
    own = set(element.fieldNames())
    alone = F.array(F.lit(None).cast(element))  # a constant: most rows carry no imputed row
    rows = F.when(F.size(fig.getField(NEW_ROWS)) > 0, F.concat(alone, fig.getField(NEW_ROWS))).otherwise(alone)
    df = df.select("*", F.posexplode(rows).alias(POS, NEW))
    new = F.col(NEW)

    def imputed(f: StructField) -> Column:
        if f.name in group_by or f.name == MONTH:
            return F.col(f"`{f.name}`")
        if f.name in own:
            return new.getField(f.name)
        if f.name in (FLAGS, REASONS, ERRORS, REPAIRS):
            return F.array().cast(f.dataType)
        if f.name == ROW_ID:
            return F.lit(IMPUTED_ID)
        return F.lit(None).cast(f.dataType)

    def existing(name: str) -> Column:
        if name == STATUS:
            return F.coalesce(fig.getField(STATUS), F.col(STATUS))
        return fig.getField(name) if name in written else F.col(f"`{name}`")

    first = F.col(POS) == 0
    out = [F.when(first, existing(f.name)).otherwise(imputed(f)).alias(f.name) for f in fields]
    out += [F.when(first, fig.getField(a)).otherwise(new.getField(a)).alias(a) for a in aux]
    return df.select(*out)


def _register(step: SeriesStep, ctx: _Ctx) -> None:
    if isinstance(step, OutlierStep):
        ctx.step_outcome(step, step.action, f"{step.method} outliers of {step.column} over {step.window} {_per(step)}")
    elif isinstance(step, StuckStep):
        ctx.step_outcome(step, step.action, f"{step.min_run}+ identical consecutive {step.column} {_per(step)}")
    elif isinstance(step, ImputeStep):
        ctx.step_outcome(step, "repair", f"{step.method} fill of gaps up to {step.max_gap} x {step.every} in {step.column}")
    else:
        what = {
            "linear": "linear between neighbours",
            "previous": "last value carried forward",
            "seasonal": f"value one {step.season} earlier",
        }
        ctx.step_outcome(step, "repair", f"missing {', '.join(step.columns)} filled: {what[step.method]} {_per(step)}")


def _aux_fields(steps: list[SeriesStep], types: dict) -> list:
    """What the kernel reports per step, as Spark fields named ``__s<i>_<what>``."""
    from pyspark.sql.types import BooleanType, DataType, DoubleType, LongType, StructField

    fields: list[tuple[str, DataType]] = []
    for i, step in enumerate(steps):
        p = f"__s{i}_"
        if isinstance(step, OutlierStep):
            fields += [(p + "hit", BooleanType()), (p + "med", DoubleType()), (p + "scale", DoubleType())]
            fields += [(p + "q1", DoubleType()), (p + "q3", DoubleType())] if step.method == "iqr" else []
            fields += [(p + "old", types[step.column])] if step.action == "repair" else []
        elif isinstance(step, StuckStep):
            fields += [(p + "hit", BooleanType()), (p + "len", LongType())]
        elif isinstance(step, ImputeStep):
            fields += [(p + "new", types[step.column]), (p + "ts", LongType())]
        else:
            for j, column in enumerate(step.columns):
                fields.append((f"{p}{j}_new", DoubleType() if step.method == "linear" else types[column]))
    return [StructField(name, kind, True) for name, kind in fields]


def _annotate(df: DataFrame, steps: list[SeriesStep], ctx: _Ctx) -> DataFrame:
    """The kernel's figures as flags, reasons, errors, repairs and imputed rows' ids, step by step in order."""
    from pyspark.sql import functions as F

    for i, step in enumerate(steps):
        p = f"__s{i}_"
        if isinstance(step, OutlierStep):
            hit = F.coalesce(F.col(p + "hit"), F.lit(False))
            if step.action == "quarantine":
                df = _reject(df, hit, step.name, _outlier_text(step, p))
            elif step.action == "repair":
                ctype = ctx.type_of(step.column)
                df = _repaired(df, hit, step.column, F.col(p + "old"), F.col(p + "med"), step.name, ctype)
            else:
                df = df.withColumn(FLAGS, _union(hit, step.name))
        elif isinstance(step, StuckStep):
            hit = F.coalesce(F.col(p + "hit"), F.lit(False))
            value = F.col(f"`{step.column}`")
            if step.action == "quarantine":
                text = F.format_string(
                    f"{step.column} %s repeated in %d consecutive readings", value.cast("string"), F.col(p + "len")
                )
                df = _reject(df, hit, step.name, text)
            else:
                df = df.withColumn(FLAGS, _union(hit, step.name))
        elif isinstance(step, ImputeStep):
            df = _imputed(df, step, p, ctx.type_of(step.column))
        else:
            for j, column in enumerate(step.columns):
                new = F.col(f"{p}{j}_new")
                none = F.lit(None).cast("string")
                df = _repaired(df, new.isNotNull(), column, none, new, step.name, ctx.type_of(column))
    return df


def _union(hit: Column, name: str) -> Column:
    from pyspark.sql import functions as F

    return F.when(hit, F.array_union(F.col(FLAGS), F.array(F.lit(name)))).otherwise(F.col(FLAGS))


def _then(hit: Column, column: str, value: Column) -> Column:
    from pyspark.sql import functions as F

    return F.when(hit, F.concat(F.col(column), F.array(value))).otherwise(F.col(column))


def _reject(df: DataFrame, hit: Column, name: str, error: Column) -> DataFrame:
    """A row the kernel rejected: its reason, error and flag (its status is already set)."""
    from pyspark.sql import functions as F

    return df.withColumns(
        {REASONS: _then(hit, REASONS, F.lit(name)), ERRORS: _then(hit, ERRORS, error), FLAGS: _union(hit, name)}
    )


def _repaired(df: DataFrame, hit: Column, column: str, old: Column, new: Column, rule: str, ctype: str) -> DataFrame:
    """A cell the kernel changed (its new value is already in place): logged with its old and new text."""
    from pyspark.sql import functions as F

    entry = F.struct(
        F.lit(column).alias("column"),
        _as_text(old, ctype).alias("old"),
        _as_text(new, ctype).alias("new"),
        F.lit(rule).alias("rule"),
    )
    return df.withColumns({REPAIRS: _then(hit, REPAIRS, entry), FLAGS: _union(hit, rule)})


def _imputed(df: DataFrame, step: ImputeStep, p: str, ctype: str) -> DataFrame:
    """A row the kernel added: its flag, its repair (old value null) and its id from its series and time."""
    from pyspark.sql import functions as F

    made = F.col(p + "new").isNotNull()
    keyed = [F.col(f"`{g}`").alias(g) for g in step.group_by] + [F.timestamp_seconds(F.col(p + "ts")).alias(step.time)]
    df = _repaired(df, made, step.column, F.lit(None).cast("string"), F.col(p + "new"), step.name, ctype)
    return df.withColumn(ROW_ID, F.when(made, F.concat(F.lit("imputed:"), F.to_json(F.struct(*keyed)))).otherwise(F.col(ROW_ID)))


def _outlier_text(step: OutlierStep, p: str) -> Column:
    from pyspark.sql import functions as F

    value, med, scale = F.col(f"`{step.column}`"), F.col(p + "med"), F.col(p + "scale")
    if step.method == "mad":
        return F.format_string(
            f"{step.column} %s is %.1f robust deviations from the {step.window} median %s (mad, threshold {step.threshold:g})",
            value.cast("string"),
            F.abs(value - med) / scale,
            F.round(med, 4).cast("string"),
        )
    lo = F.col(p + "q1") - F.lit(step.threshold) * scale
    hi = F.col(p + "q3") + F.lit(step.threshold) * scale
    return F.format_string(
        f"{step.column} %s outside [%s, %s] (iqr over {step.window}, threshold {step.threshold:g})",
        value.cast("string"),
        F.round(lo, 4).cast("string"),
        F.round(hi, 4).cast("string"),
    )


def _kernel(steps: list[SeriesStep], keys: list[str], figures: pa.StructType):
    """The function each Spark task calls with its partition's batches (each series' rows next to each
    other; a series: the rows equal in ``keys``): one figures struct per row, in the rows' order."""

    def run(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        pending: pa.Table | None = None  # the rows of a series the batches so far have not finished
        seen: set[tuple] = set()
        for batch in batches:
            rows = pa.Table.from_batches([pa.RecordBatch.from_struct_array(batch)])
            pending = rows if pending is None else pa.concat_tables([pending, rows])
            starts = _starts(pending, keys)
            if len(starts) > 1:  # every series but the last is complete
                yield _figures(pending.slice(0, starts[-1]), starts[:-1], steps, keys, figures, seen)
                pending = pending.slice(starts[-1])
        if pending is not None and pending.num_rows:
            yield _figures(pending, _starts(pending, keys), steps, keys, figures, seen)

    return run


def _starts(t: pa.Table, group_by: list[str]) -> np.ndarray:
    """Where each series of ``t`` starts (its rows are next to each other): where a key differs from the row
    before (nulls equal nulls, NaN equals NaN, as Spark groups them)."""
    n = t.num_rows
    differs = np.zeros(max(n - 1, 0), dtype=bool)
    for g in group_by:
        col = t[g].combine_chunks()
        a, b = col.slice(1), col.slice(0, max(n - 1, 0))
        same = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
        same |= (pc.is_null(a).to_numpy(zero_copy_only=False)) & pc.is_null(b).to_numpy(zero_copy_only=False)
        if pa.types.is_floating(col.type):
            same |= pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False).to_numpy(zero_copy_only=False)
        differs |= ~same
    return np.concatenate([[0], np.flatnonzero(differs) + 1]) if n else np.zeros(0, dtype=np.int64)


def _figures(
    t: pa.Table, starts: np.ndarray, steps: list[SeriesStep], keys: list[str], figures: pa.StructType, seen: set
) -> pa.Array:
    """The steps run on each series of ``t`` (one starts at each of ``starts``): the figures of its rows."""
    ends = [*starts[1:], t.num_rows]
    out = []
    for a, b in zip(starts, ends, strict=True):
        rows = t.slice(int(a), int(b - a))
        key = tuple(rows[g][0].as_py() for g in keys)
        if key in seen:
            raise RuntimeError(f"series {key} of {keys} arrived in two pieces: its rows must be next to each other")
        seen.add(key)
        s = _Series(rows, keys)
        for i, step in enumerate(steps):
            p = f"__s{i}_"
            if isinstance(step, OutlierStep):
                _outliers(s, step, p)
            elif isinstance(step, StuckStep):
                _stuck(s, step, p)
            elif isinstance(step, ImputeStep):
                _impute(s, step, p)
            else:
                _fill_nulls(s, step, p)
        out.append(s.figures(figures))
    return pa.concat_arrays(out) if out else pa.array([], figures)


# ----------------------------------------------------------------------------------- one series
class _Series:
    """One series' rows while the steps run: the Arrow table of what the kernel reads (imputed rows appended),
    the statuses, and the figures each step reports (``aux``: name → the rows it reports on and their values)."""

    def __init__(self, table: pa.Table, group_by: list[str]):
        schema = pa.schema([f.with_nullable(True) for f in table.schema])
        self.table = pa.Table.from_arrays([c.combine_chunks() for c in table.columns], schema=schema)
        self.status = np.asarray(self.table[STATUS].to_numpy(zero_copy_only=False), dtype=object)
        #: the statuses the rows arrived with, and how many rows arrived
        self.given, self.n = self.status.copy(), table.num_rows
        #: per imputed row, the arrived row it is imputed after (its keys' row: the chain of its templates)
        self.carrier = np.zeros(0, dtype=np.int64)
        self.group_by = group_by
        self.aux: dict[str, tuple[np.ndarray, pa.Array]] = {}

    def active(self) -> np.ndarray:
        return (self.status == KEPT) | (self.status == IMPUTED)

    def column(self, name: str) -> pa.Array:
        return self.table[name].chunk(0) if self.table[name].num_chunks == 1 else self.table[name].combine_chunks()

    def values(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A numeric column as float64 (nulls as 0) and its validity."""
        col = self.column(name)
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        return pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False), valid

    def times(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A time column as (its raw ordering values, seconds since the epoch, validity); a date counts from
        its midnight (UTC), a timestamp's seconds are floored as Spark's cast to long does."""
        col = self.column(name)
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_date(col.type):
            raw = pc.fill_null(col.cast(pa.date32()).cast(pa.int32()), 0).to_numpy().astype(np.int64)
            return raw, raw * 86400, valid
        raw = pc.fill_null(col.cast(pa.int64()), 0).to_numpy().astype(np.int64)
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[col.type.unit]
        return raw, np.floor_divide(raw, per_second), valid

    def order(self, rows: np.ndarray, time: str) -> np.ndarray:
        """``rows`` ordered by time (nulls first), then row id."""
        raw, _, valid = self.times(time)
        keys = pa.table({"v": valid[rows], "t": raw[rows], "r": self.column(ROW_ID).take(rows)})
        idx = pc.sort_indices(keys, sort_keys=[("v", "ascending"), ("t", "ascending"), ("r", "ascending")])
        return rows[idx.to_numpy()]

    def put(self, name: str, rows: np.ndarray, values: pa.Array | np.ndarray) -> None:
        self.aux[name] = (rows, values if isinstance(values, pa.Array) else pa.array(values))

    def replace(self, name: str, rows: np.ndarray, values: pa.Array) -> None:
        """Set column ``name`` to ``values`` (already of its type) on ``rows``."""
        if not len(rows):
            return
        mask = np.zeros(self.table.num_rows, dtype=bool)
        mask[rows] = True
        idx = np.zeros(self.table.num_rows, dtype=np.int64)
        idx[rows] = np.arange(len(rows))
        col = self.column(name)
        new = pc.if_else(pa.array(mask), values.take(pa.array(idx)), col)
        self.table = self.table.set_column(self.table.schema.get_field_index(name), self.table.schema.field(name), new)

    def append(self, template: np.ndarray, columns: dict[str, pa.Array]) -> np.ndarray:
        """Add imputed rows (``columns`` given, the series' keys as on row ``template``, nulls elsewhere);
        returns their indices."""
        m = len(template)
        arrays = []
        for f in self.table.schema:
            if f.name in columns:
                arrays.append(columns[f.name].cast(f.type))
            elif f.name in self.group_by:
                arrays.append(self.column(f.name).take(pa.array(template)))
            elif f.name == ROW_ID:
                arrays.append(pa.array([IMPUTED_ID] * m, f.type))
            else:
                arrays.append(pa.nulls(m, f.type))
        start = self.table.num_rows
        added = pa.Table.from_arrays(arrays, schema=self.table.schema)
        self.table = pa.concat_tables([self.table, added]).combine_chunks()
        self.status = np.concatenate([self.status, np.full(m, IMPUTED, dtype=object)])
        inherited = self.carrier[np.maximum(template - self.n, 0)] if len(self.carrier) else template
        self.carrier = np.concatenate([self.carrier, np.where(template < self.n, template, inherited)])
        return np.arange(start, start + m)

    def reported(self, name: str, kind: pa.DataType) -> pa.Array:
        """Figure ``name`` of every row (null where its step reported nothing)."""
        n = self.table.num_rows
        if name not in self.aux or not len(self.aux[name][0]):
            return pa.nulls(n, kind)
        rows, values = self.aux[name]
        idx = np.full(n, -1, dtype=np.int64)
        idx[rows] = np.arange(len(rows))
        return values.cast(kind).take(pa.array(idx, mask=idx < 0))

    def figures(self, figures: pa.StructType) -> pa.StructArray:
        """Per arrived row: its status if a step changed it, the written columns, the figures and the rows
        imputed after it (what they read, their status and figures)."""
        n = self.n
        status = pa.array(self.status, pa.string())
        changed = pa.array(self.status[:n], pa.string(), mask=self.status[:n] == self.given)
        new_type = figures.field(NEW_ROWS).type
        element = new_type.value_type

        def column(name: str, kind: pa.DataType) -> pa.Array:
            if name == STATUS:
                return status
            return self.column(name).cast(kind) if name in self.table.column_names else self.reported(name, kind)

        order = np.argsort(self.carrier, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(self.carrier, minlength=n))]).astype(np.int32)
        tail = [column(f.name, f.type).slice(n).take(pa.array(order)) for f in element]
        new_rows = pa.ListArray.from_arrays(
            pa.array(offsets), pa.StructArray.from_arrays(tail, fields=list(element)), type=new_type
        )
        head = [
            changed if f.name == STATUS else new_rows if f.name == NEW_ROWS else column(f.name, f.type).slice(0, n)
            for f in figures
        ]
        return pa.StructArray.from_arrays(head, fields=list(figures))


def _typed(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """Numbers as a column of ``kind``: a double cast to an integer type drops its fraction (as Spark's cast)."""
    if pa.types.is_integer(kind):
        return pa.array(np.trunc(values).astype(np.int64)).cast(kind, safe=False)
    return pa.array(values, pa.float64()).cast(kind)


def spark_round(values: np.ndarray, digits: int, integral: bool) -> np.ndarray:
    """Spark's ``round``: half up on the value's shortest decimal text (not on its binary value)."""
    if integral and digits >= 0:
        return values
    quantum = Decimal(1).scaleb(-digits)
    out = [
        float(Decimal(repr(float(v))).quantize(quantum, rounding=ROUND_HALF_UP, context=_DECIMAL)) if math.isfinite(v) else v
        for v in values
    ]
    return np.asarray(out, dtype=np.int64 if integral else np.float64)


# ------------------------------------------------------------------------------------------ steps
def _window_stats(vals: np.ndarray, lo: np.ndarray, hi: np.ndarray, iqr: bool) -> dict[str, np.ndarray]:
    """Median, MAD-median (or Q1/Q3) of ``vals[lo:hi]`` for every row: windows of sorted slices."""
    n = hi - lo
    out = {k: np.empty(len(lo)) for k in ("med", "mad", "q1", "q3")}
    width = int(n.max()) if len(n) else 0
    chunk = max(1, WINDOW_CELLS // max(width, 1))
    cols = np.arange(width)
    for a in range(0, len(lo), chunk):
        b = min(a + chunk, len(lo))
        nn = n[a:b]
        rows = np.arange(b - a)
        inside = cols[None, :] < nn[:, None]
        idx = np.minimum(lo[a:b, None] + cols[None, :], len(vals) - 1)
        win = np.sort(np.where(inside, vals[idx], np.inf), axis=1)
        mid_lo, mid_hi = (nn + 1) // 2 - 1, (nn + 2) // 2 - 1
        med = (win[rows, mid_lo] + win[rows, mid_hi]) / 2
        out["med"][a:b] = med
        if iqr:
            out["q1"][a:b] = win[rows, np.maximum(1, np.ceil(nn * 0.25).astype(np.int64)) - 1]
            out["q3"][a:b] = win[rows, np.maximum(1, np.ceil(nn * 0.75).astype(np.int64)) - 1]
        else:
            dev = np.sort(np.where(inside, np.abs(win - med[:, None]), np.inf), axis=1)
            out["mad"][a:b] = (dev[rows, mid_lo] + dev[rows, mid_hi]) / 2
    return out


def _outliers(s: _Series, step: OutlierStep, p: str) -> None:
    """Judge each active value against its centred window ``[t - half, t + half]`` of the series' active
    values (rows without a time: against each other)."""
    half = int(duration_seconds(step.window) / 2)
    v, valid = s.values(step.column)
    _, sec, tvalid = s.times(step.time)
    rows = np.flatnonzero(s.active() & valid)
    untimed, timed = rows[~tvalid[rows]], rows[tvalid[rows]]
    timed = timed[np.argsort(sec[timed], kind="stable")]
    rows, m, ts = np.concatenate([untimed, timed]), len(untimed), sec[timed]
    lo = np.concatenate([np.zeros(m, np.int64), m + np.searchsorted(ts, ts - half, "left")])
    hi = np.concatenate([np.full(m, m, np.int64), m + np.searchsorted(ts, ts + half, "right")])
    x = v[rows]
    w = _window_stats(x, lo, hi, step.method == "iqr")
    med = w["med"]
    floor_scale = step.min_relative_scale * np.abs(med)
    if step.method == "mad":
        scale = np.maximum(1.4826 * w["mad"], floor_scale)
        out = np.abs(x - med) > step.threshold * scale
    else:
        scale = np.maximum(w["q3"] - w["q1"], floor_scale)
        out = (x < w["q1"] - step.threshold * scale) | (x > w["q3"] + step.threshold * scale)
    hit = ((hi - lo) >= step.min_points) & out
    if step.action == "repair":
        hit &= x != med
        kind = s.table.schema.field(step.column).type
        s.put(p + "old", rows[hit], s.column(step.column).take(pa.array(rows[hit])))
        s.replace(step.column, rows[hit], _typed(med[hit], kind))
    elif step.action == "quarantine":
        s.status[rows[hit]] = REJECTED
    s.put(p + "hit", rows[hit], np.ones(int(hit.sum()), dtype=bool))
    s.put(p + "med", rows[hit], med[hit])
    s.put(p + "scale", rows[hit], scale[hit])
    if step.method == "iqr":
        s.put(p + "q1", rows[hit], w["q1"][hit])
        s.put(p + "q3", rows[hit], w["q3"][hit])


def _stuck(s: _Series, step: StuckStep, p: str) -> None:
    """Runs of identical consecutive active values; a run of ``min_run`` or more (not of an ignored value)."""
    v, valid = s.values(step.column)
    rows = s.order(np.flatnonzero(s.active() & valid), step.time)
    x = v[rows]
    same = (x[1:] == x[:-1]) | (np.isnan(x[1:]) & np.isnan(x[:-1]))
    run = np.cumsum(np.concatenate([[True], ~same])) - 1
    length = np.bincount(run)[run] if len(run) else np.array([], dtype=np.int64)
    hit = (length >= step.min_run) & ~np.isin(x, step.ignore_values)
    if step.action == "quarantine":
        s.status[rows[hit]] = REJECTED
    s.put(p + "hit", rows[hit], np.ones(int(hit.sum()), dtype=bool))
    s.put(p + "len", rows[hit], length[hit].astype(np.int64))


def _impute(s: _Series, step: ImputeStep, p: str) -> None:
    """New rows in the gaps of 2 .. ``max_gap`` + 1 steps of ``every`` between consecutive active readings."""
    every = int(duration_seconds(step.every))
    v, valid = s.values(step.column)
    _, sec, tvalid = s.times(step.time)
    rows = s.order(np.flatnonzero(s.active() & valid & tvalid), step.time)
    a, b = rows[:-1], rows[1:]
    span = sec[b] - sec[a]
    gap = (span % every == 0) & (span / every >= 2) & (span / every <= step.max_gap + 1)
    a, b, steps = a[gap], b[gap], span[gap] // every
    if not len(a):
        return
    k = np.concatenate([np.arange(1, n) for n in steps])
    src, nxt, total = np.repeat(a, steps - 1), np.repeat(b, steps - 1), np.repeat(steps, steps - 1)
    new = v[src] + (v[nxt] - v[src]) * k / total if step.method == "linear" else v[src]
    kind = s.table.schema.field(step.column).type
    if step.round is not None:
        new = spark_round(new, step.round, pa.types.is_integer(kind) and step.method != "linear")
    new_sec = sec[src] + k * every
    time_type = s.table.schema.field(step.time).type
    if pa.types.is_date(time_type):
        when = pa.array(np.floor_divide(new_sec, 86400).astype(np.int32)).cast(time_type)
    else:
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[time_type.unit]
        when = pa.array(new_sec * per_second).cast(time_type)
    typed = _typed(new, kind)
    added = s.append(src, {step.column: typed, step.time: when})
    s.put(p + "new", added, typed)
    s.put(p + "ts", added, new_sec.astype(np.int64))


def _neighbours(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position: the last valid position before it (-1: none) and the first after it (n: none)."""
    n = len(valid)
    pos = np.arange(n)
    last = np.maximum.accumulate(np.where(valid, pos, -1)) if n else pos
    first = np.minimum.accumulate(np.where(valid, pos, n)[::-1])[::-1] if n else pos
    return np.concatenate([[-1], last[:-1]]), np.concatenate([first[1:], [n]])


def _fill_nulls(s: _Series, step: FillNullsStep, p: str) -> None:
    """Fill null cells of each column from the same series' values (see FillNullsStep)."""
    _, sec, tvalid = s.times(step.time)
    rows = s.order(np.flatnonzero(s.active() & tvalid), step.time)
    t = sec[rows]
    limit = duration_seconds(step.max_distance) if step.max_distance else None
    for j, column in enumerate(step.columns):
        col = s.column(column).take(pa.array(rows))
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        prev, nxt = _neighbours(valid)
        kind = s.table.schema.field(column).type
        if step.method == "linear":
            x = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
            ok = (prev >= 0) & (nxt < len(rows))
            pi, ni = np.where(ok, prev, 0), np.where(ok, nxt, 0)
            span = t[ni] - t[pi] if len(rows) else t
            ok &= span != 0
            if limit is not None:
                ok &= span <= limit
            with np.errstate(divide="ignore", invalid="ignore"):
                new = x[pi] + (x[ni] - x[pi]) * ((t - t[pi]) / span)
            hit = ~valid & ok
            filled: np.ndarray | pa.Array = new[hit]
        else:
            src = prev if step.method == "previous" else _season_source(t, valid, int(duration_seconds(step.season or "0s")))
            ok = src >= 0
            if limit is not None:
                ok &= t - t[np.where(ok, src, 0)] <= limit
            hit = ~valid & ok
            filled = col.take(pa.array(src[hit]))
        if step.round is not None:
            numbers = filled if isinstance(filled, np.ndarray) else filled.to_numpy(zero_copy_only=False)
            integral = pa.types.is_integer(kind) and step.method != "linear"
            filled = spark_round(numbers, step.round, integral)
            if step.method != "linear":
                filled = _typed(filled, kind)
        s.put(f"{p}{j}_new", rows[hit], filled)
        new_cells = _typed(filled, kind) if isinstance(filled, np.ndarray) else filled.cast(kind)
        s.replace(column, rows[hit], new_cells)


def _season_source(t: np.ndarray, valid: np.ndarray, season: int) -> np.ndarray:
    """For each position, the first valid position exactly ``season`` seconds earlier (-1: none)."""
    have = np.flatnonzero(valid)
    at = np.searchsorted(t[have], t - season, "left")
    found = at < len(have)
    found[found] = t[have[at[found]]] == (t - season)[found]
    return np.where(found, have[np.minimum(at, max(len(have) - 1, 0))] if len(have) else -1, -1)


def plan_steps(steps: Iterable) -> list:
    """The cleaning steps with each run of consecutive series steps of the same ``group_by`` as one list."""
    out: list = []
    for step in steps:
        if isinstance(step, SERIES_STEPS):
            last = out[-1] if out else None
            if isinstance(last, list) and last[0].group_by == step.group_by:
                last.append(step)
                continue
            out.append([step])
        else:
            out.append(step)
    return out
