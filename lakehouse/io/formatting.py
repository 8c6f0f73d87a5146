"""Months' landed files read and formatted by Spark's tasks, through the lake's storage.

Two lanes, one commit per month. The Spark lane (:func:`read_raw`): each task opens its share of the files
(:func:`lakehouse.io.storage.open_files`) and parses them into rows of strings (:func:`parse.parse_file`),
which Spark's casts type (:func:`parse.cast_checked`). The fast lane (:func:`format_on_executors`): each
task reads its share of the month's files (balanced by size), parses and casts the *clean* ones with
pyarrow (:mod:`lakehouse.transforms.fast_lane`) and writes their rows as Parquet files into the table's
month folder (:func:`lakehouse.io.staging.stage_parquet`), leaving the others to the Spark lane, whose
tasks stage its accepted rows the same way and its rejected rows into the quarantine. Only file paths
and statistics come back; :func:`format_months` joins both lanes' staged files of each month for the
driver's one Delta commit of that month (:meth:`lakehouse.io.lake.Lake.commit_month`).

Several months are formatted in one Spark plan (a batch: one job per lane for all of them, each file staged
under its own month's partition), which pays a job's fixed cost once per batch instead of once per month;
a single month is a batch of one. A source whose deliveries span months is formatted one month at a time:
one of its files may hold rows of several months, and which month a row is formatted for depends on the
month being formatted (see :func:`parse.cast_checked`), not on the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.io.spark import arrow_frame, parallelism
from lakehouse.io.staging import FLUSH_ROWS, OUT_SCHEMA, Stager, month_folder, stage_parquet
from lakehouse.io.storage import Storage, open_files
from lakehouse.specs.models import SourceSpec
from lakehouse.transforms.fast_lane import CastPlan, cast_clean_files, chunks, eligible, file_schema
from lakehouse.transforms.parse import (
    FILE_COL,
    LINE_COL,
    cast_checked,
    clean_layout,
    lineage_name,
    parse_file,
    raw_schema,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def read_raw(
    spark: SparkSession,
    files: str | Sequence[str],
    source: SourceSpec,
    *,
    storage=None,
    delivered: Mapping[str, str] | None = None,
) -> DataFrame:
    """Landed files as rows of strings (one Spark task parses whole files).

    ``files``: the exact files to read (the month's manifest, see
    :func:`lakehouse.collectors.landing.landed_files`), as URIs on ``storage`` (the lake's
    :class:`lakehouse.io.storage.Storage`; None: local paths). Spark's Python workers open them
    (:func:`lakehouse.io.storage.open_files`), so the same code reads a lake on disk or on S3.
    ``delivered``: the month each file is formatted for; when given, every row carries its file's in
    :data:`DELIVERED_COL` (several months read in one plan).
    """
    fmt = source.format
    raw_names = [c.raw_name for c in source.columns]
    schema = raw_schema(raw_names)
    if delivered is not None:
        schema = schema.append(pa.field(DELIVERED_COL, pa.string()))
    paths = [files] if isinstance(files, str) else [str(f) for f in files]
    if not paths:
        return arrow_frame(spark, schema.empty_table())

    spans = source.spans_months
    slots = min(len(paths), parallelism(spark))
    shares = [paths[i::slots] for i in range(slots)]

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for slot in batch.column("id").to_pylist():
                for path, content in open_files(shares[slot], storage):
                    rows = parse_file(lineage_name(path, spans), content, fmt, raw_names)
                    if delivered is not None:
                        rows = rows.append_column(DELIVERED_COL, pa.array([delivered[path]] * rows.num_rows, pa.string()))
                    yield from rows.to_batches()

    from pyspark.sql.pandas.types import from_arrow_schema

    return spark.range(slots, numPartitions=slots).mapInArrow(parse_batches, from_arrow_schema(schema))


#: the month a row's file is formatted for, when :func:`read_raw` reads several months' files at once
DELIVERED_COL = "_delivered_month"


#: the Arrow type of each declared column type, as Spark's casts (:func:`parse.cast_checked`) give it
_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def data_schema(source: SourceSpec) -> pa.Schema:
    """The formatted table's Arrow schema (partition column included): the rows of
    :func:`parse.cast_checked` (every value may be NULL: an empty or rejected one) with lineage, as the Spark
    lane stages them. From the declaration alone, so a run builds no Spark plan for it."""
    columns = [pa.field(c.name, _ARROW_TYPES[c.type]) for c in source.columns]
    lineage = [pa.field(FILE_COL, pa.string()), pa.field(LINE_COL, pa.int64())]
    return pa.schema([*columns, *lineage, pa.field("month", pa.string(), nullable=False)])


def _balanced(files: Sequence[tuple[str, str]], slots: int, sizes: dict[str, int]) -> list[list[tuple[str, str]]]:
    """``files`` (month, path) dealt into ``slots`` lists of about equal bytes (largest first onto the
    lightest)."""
    out: list[list[tuple[str, str]]] = [[] for _ in range(slots)]
    load = [0] * slots
    for size, item in sorted(((sizes[p], (m, p)) for m, p in files), reverse=True):
        i = load.index(min(load))
        out[i].append(item)
        load[i] += size
    return [sorted(s) for s in out if s]


def _format_slot(
    items: Sequence[tuple[str, str]], plans: Mapping[str, CastPlan], storage: Storage, table_dir: str
) -> Iterator[dict]:
    """One task's share (month, path), one month after the other (the task holds one month's share at a
    time): see :func:`_format_share`."""
    by_month: dict[str, list[str]] = {}
    for month, path in items:
        by_month.setdefault(month, []).append(path)
    for month, paths in by_month.items():
        yield from _format_share(paths, plans[month], storage, table_dir)


def _format_share(paths: Sequence[str], plan: CastPlan, storage: Storage, table_dir: str) -> Iterator[dict]:
    """One task's share of one month: staged Parquet files (``kind='staged'``, under the month's
    partition) and the files it leaves to Spark (``kind='slow'``).

    Clean files with the same column order are read and cast together (one pyarrow call per run of
    ``FLUSH_ROWS`` lines, instead of one per small file). The task holds its share's raw bytes and at most
    about twice ``FLUSH_ROWS`` parsed rows at a time.
    """
    groups: dict[tuple[str, ...], list[tuple[str, bytes]]] = {}
    for path in paths:
        data = storage.read(path)
        layout = clean_layout(data, plan.fmt, plan.raw_names)
        if layout is None:
            yield _slow(path)
            continue
        names, header_bytes = layout
        groups.setdefault(tuple(names), []).append((path, data[header_bytes:]))

    partition = month_folder(plan.month)
    parts: list[pa.Table] = []
    rows = 0
    for group_names, files in groups.items():
        for chunk in chunks(files, FLUSH_ROWS):
            for out in cast_clean_files(chunk, group_names, plan):
                if isinstance(out, str):
                    yield _slow(out)
                    continue
                parts.append(out)
                rows += out.num_rows
            if rows >= FLUSH_ROWS:
                yield {"kind": "staged", **stage_parquet(storage, table_dir, partition, pa.concat_tables(parts))}
                parts, rows = [], 0
    if parts:
        yield {"kind": "staged", **stage_parquet(storage, table_dir, partition, pa.concat_tables(parts))}


def _slow(path: str) -> dict:
    return {"kind": "slow", "path": path, "size": None, "stats": None, "rows": None}


def _month_of(staged: dict) -> str:
    """The month of a staged file: its partition folder (``month=<m>/part-...``)."""
    return staged["path"].split("/", 1)[0].removeprefix(month_folder(""))


def _by_month(months: Sequence[str], staged: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {m: [] for m in months}
    for s in staged:
        out[_month_of(s)].append({k: s[k] for k in ("path", "size", "stats", "rows")})
    return out


def format_on_executors(
    spark: SparkSession,
    files: Mapping[str, Sequence[str]],
    source: SourceSpec,
    storage: Storage,
    table_dir: str,
    schema: pa.Schema,
    *,
    sizes: dict[str, int] | None = None,
) -> tuple[dict[str, list[dict]], dict[str, list[str]]]:
    """The clean files of each month (``files``: month -> URIs on ``storage``) formatted by Spark tasks and
    staged as Parquet under ``table_dir`` (the table's URI), each under its own month's partition: (the
    staged files, the files left to the Spark lane), per month. One Spark job for all the months; nothing
    is committed. ``sizes``: the files' sizes when known (else each is looked up)."""
    months = list(files)
    if not any(files.values()) or not eligible(source):
        return {m: [] for m in months}, {m: [str(f) for f in files[m]] for m in months}
    first = CastPlan(
        fmt=source.format,
        raw_names=tuple(c.raw_name for c in source.columns),
        columns=tuple((c.raw_name, c.name, c.type, c.nullable, c.pattern) for c in source.columns),
        month_column=source.partitioning.column if source.partitioning.kind == "time_column" else None,
        month=months[0],
        utc_session=(spark.conf.get("spark.sql.session.timeZone") or "").upper() in ("UTC", "Z", "ETC/UTC", "+00:00"),
        schema=file_schema(schema),
    )
    plans = {m: replace(first, month=m) for m in months}
    items = [(m, str(f)) for m in months for f in files[m]]
    sizes = {f: (sizes or {}).get(f) or storage.size(f) or 0 for _, f in items}
    slots = _balanced(items, min(len(items), parallelism(spark)), sizes)

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for slot in batch.column("id").to_pylist():
                out = list(_format_slot(slots[slot], plans, storage, table_dir))
                if out:
                    yield pa.RecordBatch.from_pylist(out, schema=OUT_SCHEMA)

    from pyspark.sql.pandas.types import from_arrow_schema

    result = spark.range(len(slots), numPartitions=len(slots)).mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow()
    rows = result.to_pylist()
    month_of = {f: m for m, f in items}  # a file is one month's (deliveries that span months never take this lane)
    slow: dict[str, list[str]] = {m: [] for m in months}
    for path in sorted(r["path"] for r in rows if r["kind"] == "slow"):
        slow[month_of[path]].append(path)
    return _by_month(months, [r for r in rows if r["kind"] == "staged"]), slow


@dataclass(frozen=True)
class Rejects:
    """Where the Spark lane's tasks stage a month's rejected rows: the quarantine's table URI, and the
    function that turns rejected rows (``month``, lineage, ``record``, ``error``) into the quarantine's rows
    without the partition column (see :func:`lakehouse.quality.quarantine.staged_rows`: stamped with that
    month's batch)."""

    table_dir: str
    rows: Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class FormattedMonth:
    """A formatted month as the driver holds it: the files staged for the table and for the quarantine
    (path, size, statistics, rows of each; nothing committed) and how many files the fast lane took."""

    staged: list[dict]
    quarantined: list[dict]
    fast: int

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.staged)

    @property
    def rejected(self) -> int:
        return sum(s["rows"] for s in self.quarantined)


def format_months(
    spark: SparkSession,
    files: Mapping[str, Sequence[str]],
    source: SourceSpec,
    storage: Storage,
    table_dir: str,
    schema: pa.Schema,
    *,
    rejects: Mapping[str, Rejects],
    months: tuple[str, str | None] | None = None,
    sizes: dict[str, int] | None = None,
) -> dict[str, FormattedMonth]:
    """Each month's files (``files``: month -> URIs) formatted and staged under ``table_dir``, its rejected
    rows under ``rejects[month].table_dir``, each under its month's partition; nothing committed.

    Clean files take the fast lane (one Spark job for all the months, :func:`format_on_executors`); the
    rest are parsed and cast by Spark, and its tasks split the rows by month and stage each month's
    accepted and rejected rows (one more job, :func:`_stage_checked`): only file lists come back.
    ``months``: the source's partition range, for a source whose deliveries span months (see
    :func:`parse.cast_checked`); such a source is formatted one month at a time (see the module's
    docstring).
    """
    batch = list(files)
    if source.spans_months and len(batch) > 1:
        raise ValueError(f"{source.name}: deliveries span months, so its months are formatted one at a time, not {batch}")
    staged, rest = format_on_executors(spark, files, source, storage, table_dir, schema, sizes=sizes)
    accepted: dict[str, list[dict]] = {}
    rejected: dict[str, list[dict]] = {}
    if any(rest.values()):
        from pyspark.sql import functions as F

        delivered = {f: m for m in batch for f in rest[m]}
        raw = read_raw(spark, list(delivered), source, storage=storage, delivered=delivered)
        checked = cast_checked(raw, source, F.col(DELIVERED_COL), months)
        accepted, rejected = _stage_checked(checked, batch, storage, table_dir, file_schema(schema), rejects)
    return {
        m: FormattedMonth([*staged[m], *accepted.get(m, [])], rejected.get(m, []), len(files[m]) - len(rest[m])) for m in batch
    }


def format_month(
    spark: SparkSession,
    files: Sequence[str],
    source: SourceSpec,
    month: str,
    storage: Storage,
    table_dir: str,
    schema: pa.Schema,
    *,
    rejects: Rejects,
    months: tuple[str, str | None] | None = None,
    sizes: dict[str, int] | None = None,
) -> FormattedMonth:
    """One month's files formatted as :func:`format_months` formats a batch (a batch of one month)."""
    batch = {month: files}
    out = format_months(spark, batch, source, storage, table_dir, schema, rejects={month: rejects}, months=months, sizes=sizes)
    return out[month]


def _stage_checked(
    checked: DataFrame,
    batch: Sequence[str],
    storage: Storage,
    table_dir: str,
    schema: pa.Schema,
    rejects: Mapping[str, Rejects],
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """The Spark lane's rows split by its tasks on ``month`` and ``error`` and staged under their month's
    partition: accepted rows (``schema``) into ``table_dir``, rejected ones (as ``rejects[month].rows``
    shapes them) into ``rejects[month].table_dir``. One Spark job; (the table's files, the quarantine's
    files), per month of ``batch``."""
    from pyspark.sql.pandas.types import from_arrow_schema

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stagers: dict[tuple[str, str], Stager] = {}

        def stager(kind: str, month: str) -> Stager:
            if (kind, month) not in stagers:
                where = table_dir if kind == "staged" else rejects[month].table_dir
                stagers[kind, month] = Stager(storage, where, month_folder(month))
            return stagers[kind, month]

        def written(kind: str, files: list[dict]) -> Iterator[pa.RecordBatch]:
            if files:
                yield pa.RecordBatch.from_pylist([{"kind": kind, **f} for f in files], schema=OUT_SCHEMA)

        for record_batch in batches:
            rows = pa.Table.from_batches([record_batch])
            months = pc.unique(rows.column("month")).to_pylist()
            # a task's files come month after month: a month no longer read is written out, so the task
            # buffers about one month's rows, as when it formats a single month
            for key in [k for k in stagers if k[1] not in months]:
                yield from written(key[0], stagers.pop(key).flush())
            for month in months:
                t = rows.filter(pc.equal(rows.column("month"), month))
                bad = pc.is_valid(t.column("error"))
                good = t.filter(pc.invert(bad)).select(schema.names).cast(schema)
                yield from written("staged", stager("staged", month).add(good))
                if pc.any(bad).as_py():
                    shaped = rejects[month].rows(t.filter(bad).select(_REJECTED.names).cast(_REJECTED))
                    yield from written("rejected", stager("rejected", month).add(shaped))
        for (kind, _), each in stagers.items():
            yield from written(kind, each.flush())

    rows = checked.mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow().to_pylist()
    accepted = _by_month(batch, [r for r in rows if r["kind"] == "staged"])
    return accepted, _by_month(batch, [r for r in rows if r["kind"] == "rejected"])


#: rejected rows as the Spark lane's tasks hand them to ``Rejects.rows`` (what the quarantine records of a formatted month)
_REJECTED = pa.schema(
    [("month", pa.string()), (FILE_COL, pa.string()), (LINE_COL, pa.int64()), ("record", pa.string()), ("error", pa.string())]
)
