"""The unit step (``unit_harmonization``): files delivered in a unit ``factor`` times off, found by their
median against the series' history, and converted.

A file is converted when its median is more than √factor times its reference: the series' median over the
trusted months before the month (``history_months`` of them, with at least ``min_history`` values), else
the median of the month's positive file medians (``min_fleet`` files at least), else the absolute bound
``max_typical``. The medians are Spark aggregations; one figure per file and per series comes to the
driver, which decides.

**One month**: its history is trusted months already written, so each series' history median is exact
when the plan is built.

**Several months in one plan** (:func:`lakehouse.quality.cleaning.clean_months` with ``reads``): a month's
history may hold months of the same batch, not written when the plan is built. For those months the plan
uses an estimate — per series, the median of the monthly medians, a batch month's being the median of its
file medians as converted — and :func:`settle` checks every decision once the months are staged: it
computes each month's history exactly from the committed and the staged trusted rows (one Spark job) and
decides again. The months before the first month decided differently are kept with the exact decisions'
notes; that month and the later ones are left to be cleaned again one by one. So every kept month holds
what a month-by-month run writes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakehouse.quality.cleaning import MONTH, _active, _Ctx, _set
from lakehouse.specs.models import UnitStep
from lakehouse.transforms.parse import FILE_COL

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from lakehouse.quality.cleaning import Staging

#: series key → (median, number of values)
Medians = dict[tuple, tuple[float, int]]


@dataclass(frozen=True)
class FileMedian:
    """One file's rows of one series in one month, at the unit step: their median and number."""

    month: str
    key: tuple
    #: None for rows no file delivered (imputed before the step): they count in the month's median only
    file: str | None
    median: float
    n: int


@dataclass
class Decisions:
    """One unit step's decisions for the months of a plan: each month's files and the (series key, file)
    pairs converted, and whether they rest on estimated histories (to be settled)."""

    step: UnitStep
    files: dict[str, list[FileMedian]]
    converted: dict[str, set[tuple[tuple, str]]]
    estimated: bool


def group_medians(df: DataFrame, keys: list[str], value: str) -> Medians:
    """Median and number of the non-null ``value`` per distinct ``keys`` of ``df`` (null keys are a group of
    their own; an even count averages the two middle values), aggregated by Spark: one row per group comes
    back to the driver. Keys come back as the Python values Spark's ``collect`` gives."""
    from pyspark.sql import functions as F

    v = F.col(f"`{value}`")
    groups = [F.col(f"`{k}`") for k in keys]
    per = df.filter(v.isNotNull()).groupBy(*groups).agg(F.sort_array(F.collect_list(v)).alias("__vals"))
    out = per.select(*groups, _middle(F.col("__vals"), F.size("__vals")).alias("__med"), F.size("__vals").alias("__n")).toArrow()
    found = zip(*[out[k].to_pylist() for k in keys], out["__med"].to_pylist(), out["__n"].to_pylist(), strict=True)
    return {tuple(row[:-2]): (float(row[-2]), int(row[-1])) for row in found}


def _middle(sorted_arr: Column, n: Column) -> Column:
    """Median of a sorted array of length ``n`` (mean of the two middle elements when even)."""
    from pyspark.sql import functions as F

    lo = F.element_at(sorted_arr, F.floor((n + 1) / 2).cast("int"))
    hi = F.element_at(sorted_arr, F.ceil((n + 1) / 2).cast("int"))
    return (lo + hi) / 2


def decide(step: UnitStep, files: list[FileMedian], history: Medians) -> list[tuple[tuple, str, str]]:
    """The files of one month to convert, given each series' history (median, number of values): (series
    key, file, why in words), in the files' order."""
    positive = [f.median for f in files if f.median > 0]
    fleet = statistics.median(positive) if positive else None
    limit = math.sqrt(step.factor)
    out = []
    for f in files:
        h = history.get(f.key)
        if h is not None and h[1] >= step.min_history and h[0] and h[0] > 0:
            ref, basis = h[0], "its own history"
        elif fleet is not None and len(positive) >= step.min_fleet:
            ref, basis = fleet, "the month's other files"
        else:
            ref, basis = None, "the absolute bound"
        if f.file is None:
            continue
        med = f.median
        scaled = (med / ref > limit) if ref else (step.max_typical is not None and med > step.max_typical)
        if scaled:
            why = f"median {med:g} vs {ref:g} from {basis}" if ref else f"median {med:g} > max_typical {step.max_typical:g}"
            out.append((f.key, f.file, f"{step.name}: {f.file} ({', '.join(map(str, f.key))}) divided by {step.factor:g}: {why}"))
    return out


def unit_step(df: DataFrame, step: UnitStep, ctx: _Ctx) -> DataFrame:
    """Find the files of each month delivered in a unit ``step.factor`` times off and convert them."""
    from pyspark.sql import functions as F

    ctx.step_outcome(step, "repair", f"{step.column} in a unit {step.factor:g}x off")
    group = step.group_by
    medians = group_medians(df.filter(_active()), [MONTH, *group, FILE_COL], step.column)
    files: dict[str, list[FileMedian]] = {m: [] for m in ctx.months}
    for (month, *key, file), (med, n) in sorted(medians.items(), key=lambda item: repr(item[0][1:])):
        files[month].append(FileMedian(month, tuple(key), file, med, n))
    if ctx.reads is None:  # one month, its history written: exact
        made = _decided_alone(step, files, ctx)
    else:
        made = _decided_estimated(step, files, ctx)
    ctx.units.append(made)
    targets = ["\u0001".join([m, *map(str, key), f]) for m, pairs in made.converted.items() for key, f in sorted(pairs)]
    if not targets:
        return df
    marker = F.concat_ws("\u0001", F.col(MONTH), *[F.col(f"`{g}`").cast("string") for g in group], F.col(FILE_COL))
    new = F.col(f"`{step.column}`") / F.lit(step.factor)
    return _set(df, marker.isin(targets), step.column, new, step.name, ctx.type_of(step.column))


def _decided_alone(step: UnitStep, files: dict[str, list[FileMedian]], ctx: _Ctx) -> Decisions:
    """One month's decisions, its history (``ctx.history``: the trusted rows read, written) exact."""
    (month,) = ctx.months
    history: Medians = {}
    earlier = ctx.earlier() if step.history_months > 0 else None
    if earlier is not None:
        history = group_medians(earlier, step.group_by, step.column)
    found = decide(step, files[month], history)
    ctx.notes[month] += [note for _, _, note in found]
    return Decisions(step, files, {month: {(k, f) for k, f, _ in found}}, estimated=False)


def _decided_estimated(step: UnitStep, files: dict[str, list[FileMedian]], ctx: _Ctx) -> Decisions:
    """A batch's decisions month by month in order, each month's history estimated from the monthly medians
    of the months it reads (``ctx.reads``): the written months' from their trusted rows (``ctx.history``,
    with their month), the batch's from its file medians as converted. :func:`settle` checks them."""
    assert ctx.reads is not None, "a batch names the months each month reads"
    monthly: dict[str, Medians] = {}
    earlier = ctx.earlier() if step.history_months > 0 else None
    if earlier is not None:
        for (k, *key), got in group_medians(earlier, [MONTH, *step.group_by], step.column).items():
            monthly.setdefault(k, {})[tuple(key)] = got
    converted: dict[str, set[tuple[tuple, str]]] = {}
    for month in ctx.months:
        read = ctx.reads[month] if step.history_months > 0 else []  # a step without history reads none
        found = decide(step, files[month], _estimate([monthly.get(k, {}) for k in read]))
        converted[month] = {(k, f) for k, f, _ in found}
        if step.history_months == 0:  # decided on the month's own files: final, nothing to settle
            ctx.notes[month] += [note for _, _, note in found]
        per: dict[tuple, list[tuple[float, int]]] = {}
        for f in files[month]:
            per.setdefault(f.key, []).append((f.median / step.factor if (f.key, f.file) in converted[month] else f.median, f.n))
        monthly[month] = _estimate([{key: got} for key, values in per.items() for got in values])
    return Decisions(step, files, converted, estimated=step.history_months > 0)


def _estimate(months: Sequence[Medians]) -> Medians:
    """Per series, the median of the given medians and the sum of their numbers of values."""
    per: dict[tuple, list[tuple[float, int]]] = {}
    for medians in months:
        for key, got in medians.items():
            per.setdefault(key, []).append(got)
    return {key: (statistics.median(m for m, _ in got), sum(n for _, n in got)) for key, got in per.items()}


def settle(
    ctx: _Ctx, staged: Mapping[str, dict[str, list[dict]]], stagings: Mapping[str, Staging], schema: pa.Schema
) -> str | None:
    """Check a batch's estimated decisions against the exact histories (the committed rows ``ctx.history``
    and the batch's staged trusted rows): the first month decided differently, or None. The months before
    it get the exact decisions' notes."""
    estimated = [d for d in ctx.units if d.estimated]
    if not estimated:
        return None
    assert ctx.reads is not None, "estimated decisions come from a batch"
    exact = {id(d): _exact_histories(d.step, ctx, staged, stagings, schema) for d in estimated}
    for month in ctx.months:
        notes: list[str] = []
        for d in estimated:
            found = decide(d.step, d.files[month], exact[id(d)].get(month, {}))
            if {(k, f) for k, f, _ in found} != d.converted[month]:
                return month
            notes += [note for _, _, note in found]
        ctx.notes[month] += notes
    return None


def _exact_histories(
    step: UnitStep, ctx: _Ctx, staged: Mapping[str, dict[str, list[dict]]], stagings: Mapping[str, Staging], schema: pa.Schema
) -> dict[str, Medians]:
    """Per month of the batch, each series' median and number of ``step.column`` over the trusted rows of the
    months it reads: committed (``ctx.history``) or staged by this batch (one Spark job)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from lakehouse.io.lake import read_files_spark

    assert ctx.reads is not None, "a batch names the months each month reads"
    cols = [*step.group_by, step.column]
    pairs = sorted({(k, m) for m, ks in ctx.reads.items() for k in ks})
    if not pairs or step.history_months == 0:
        return {}
    storage = next(iter(stagings.values())).storage
    files = [(storage.join(stagings[m].trusted, *f["path"].split("/")), m) for m in ctx.months for f in staged[m]["trusted"]]
    wanted = pa.schema([schema.field(c) for c in cols] + [pa.field(MONTH, pa.string())])
    rows = read_files_spark(ctx.session, storage, files, wanted)
    earlier = ctx.earlier()
    if earlier is not None:
        rows = rows.unionByName(earlier.select(*cols, MONTH))
    reads = ctx.session.createDataFrame(pairs, "__from string, __for string")
    joined = rows.join(F.broadcast(reads), F.col(MONTH) == F.col("__from"))
    out: dict[str, Medians] = {}
    for (month, *key), got in group_medians(joined, ["__for", *step.group_by], step.column).items():
        out.setdefault(month, {})[tuple(key)] = got
    return out
