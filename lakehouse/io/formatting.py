"""A month's landed files read and formatted by Spark's tasks, through the lake's storage.

Two lanes, one commit. The Spark lane (:func:`read_raw`): each task opens its share of the files
(:func:`lakehouse.io.storage.open_files`) and parses them into rows of strings (:func:`parse.parse_file`),
which Spark's casts type (:func:`parse.cast_checked`). The fast lane (:func:`format_on_executors`): each
task reads its share of the month's files (balanced by size), parses and casts the *clean* ones with
pyarrow (:mod:`lakehouse.transforms.fast_lane`) and writes their rows as Parquet files into the table's
month folder (:func:`lakehouse.io.staging.stage_parquet`), leaving the others to the Spark lane, whose
tasks stage its accepted rows the same way and its rejected rows into the quarantine. Only file paths
and statistics come back; :func:`format_month` joins both lanes' staged files for the driver's one Delta
commit (:meth:`lakehouse.io.lake.Lake.commit_month`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.io.spark import arrow_frame, parallelism
from lakehouse.io.staging import FLUSH_ROWS, OUT_SCHEMA, Stager, stage_parquet
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


def read_raw(spark: SparkSession, files: str | Sequence[str], source: SourceSpec, *, storage=None) -> DataFrame:
    """Landed files as rows of strings (one Spark task parses whole files).

    ``files``: the exact files to read (the month's manifest, see
    :func:`lakehouse.collectors.landing.landed_files`), as URIs on ``storage`` (the lake's
    :class:`lakehouse.io.storage.Storage`; None: local paths). Spark's Python workers open them
    (:func:`lakehouse.io.storage.open_files`), so the same code reads a lake on disk or on S3.
    """
    fmt = source.format
    raw_names = [c.raw_name for c in source.columns]
    schema = raw_schema(raw_names)
    paths = [files] if isinstance(files, str) else [str(f) for f in files]
    if not paths:
        return empty_raw(spark, source)

    spans = source.spans_months
    slots = min(len(paths), parallelism(spark))
    shares = [paths[i::slots] for i in range(slots)]

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for slot in batch.column("id").to_pylist():
                for path, content in open_files(shares[slot], storage):
                    yield from parse_file(lineage_name(path, spans), content, fmt, raw_names).to_batches()

    from pyspark.sql.pandas.types import from_arrow_schema

    return spark.range(slots, numPartitions=slots).mapInArrow(parse_batches, from_arrow_schema(schema))


def empty_raw(spark: SparkSession, source: SourceSpec) -> DataFrame:
    return arrow_frame(spark, raw_schema([c.raw_name for c in source.columns]).empty_table())


def data_schema(spark: SparkSession, source: SourceSpec) -> pa.Schema:
    """The formatted table's Arrow schema as the Spark lane produces it (partition column included)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from lakehouse.io.lake import normalized_schema

    checked = cast_checked(empty_raw(spark, source), source, "2000-01")
    schema = to_arrow_schema(checked.drop("error", "record").schema, timezone="UTC")
    return normalized_schema(schema)


def _balanced(files: Sequence[str], slots: int, sizes: dict[str, int]) -> list[list[str]]:
    """``files`` dealt into ``slots`` lists of about equal bytes (largest first onto the lightest)."""
    out: list[list[str]] = [[] for _ in range(slots)]
    load = [0] * slots
    for size, path in sorted(((sizes[p], p) for p in files), reverse=True):
        i = load.index(min(load))
        out[i].append(path)
        load[i] += size
    return [sorted(s) for s in out if s]


def _format_slot(paths: Sequence[str], plan: CastPlan, storage: Storage, table_dir: str) -> Iterator[dict]:
    """One task's share: staged Parquet files (``kind='staged'``) and the files it leaves to Spark
    (``kind='slow'``).

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

    partition = f"month={plan.month}"
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


def format_on_executors(
    spark: SparkSession,
    files: Sequence[str],
    source: SourceSpec,
    month: str,
    storage: Storage,
    table_dir: str,
    schema: pa.Schema,
    *,
    sizes: dict[str, int] | None = None,
) -> tuple[list[dict], list[str]]:
    """The month's clean files (URIs on ``storage``) formatted by Spark tasks and staged as Parquet under
    ``table_dir`` (the table's URI): (the staged files, the files left to the Spark lane). One Spark job;
    nothing is committed. ``sizes``: the files' sizes when known (else each is looked up)."""
    if not files or not eligible(source):
        return [], list(files)
    plan = CastPlan(
        fmt=source.format,
        raw_names=tuple(c.raw_name for c in source.columns),
        columns=tuple((c.raw_name, c.name, c.type, c.nullable, c.pattern) for c in source.columns),
        month_column=source.partitioning.column if source.partitioning.kind == "time_column" else None,
        month=month,
        utc_session=(spark.conf.get("spark.sql.session.timeZone") or "").upper() in ("UTC", "Z", "ETC/UTC", "+00:00"),
        schema=file_schema(schema),
    )
    files = [str(f) for f in files]
    sizes = {f: (sizes or {}).get(f) or storage.size(f) or 0 for f in files}
    slots = _balanced(files, min(len(files), parallelism(spark)), sizes)

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for slot in batch.column("id").to_pylist():
                out = list(_format_slot(slots[slot], plan, storage, table_dir))
                if out:
                    yield pa.RecordBatch.from_pylist(out, schema=OUT_SCHEMA)

    from pyspark.sql.pandas.types import from_arrow_schema

    result = spark.range(len(slots), numPartitions=len(slots)).mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow()
    rows = result.to_pylist()
    staged = [r for r in rows if r["kind"] == "staged"]
    slow = sorted(r["path"] for r in rows if r["kind"] == "slow")
    return staged, slow


@dataclass(frozen=True)
class Rejects:
    """Where the Spark lane's tasks stage the rows they reject: the quarantine's table URI, and the function
    that turns rejected rows (``month``, lineage, ``record``, ``error``) into the quarantine's rows without
    the partition column (see :func:`lakehouse.quality.quarantine.staged_rows`)."""

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
    """The month's files formatted and staged under ``table_dir``, the rejected rows under
    ``rejects.table_dir``; nothing committed.

    Clean files take the fast lane (one Spark job, :func:`format_on_executors`); the rest are parsed and
    cast by Spark, and its tasks stage their accepted and rejected rows (one more job,
    :func:`_stage_checked`): only file lists come back. ``months``: the source's partition range, for a
    source whose deliveries span months (see :func:`parse.cast_checked`).
    """
    staged, rest = format_on_executors(spark, files, source, month, storage, table_dir, schema, sizes=sizes)
    if not rest:
        return FormattedMonth(staged, [], len(files))
    checked = cast_checked(read_raw(spark, rest, source, storage=storage), source, month, months)
    accepted, rejected = _stage_checked(checked, month, storage, table_dir, file_schema(schema), rejects)
    return FormattedMonth([*staged, *accepted], rejected, len(files) - len(rest))


def _stage_checked(
    checked: DataFrame, month: str, storage: Storage, table_dir: str, schema: pa.Schema, rejects: Rejects
) -> tuple[list[dict], list[dict]]:
    """The Spark lane's rows split by its tasks on ``error`` and staged: accepted rows (``schema``) into
    ``table_dir``, rejected ones (as ``rejects.rows`` shapes them) into ``rejects.table_dir``. One Spark
    job; (the table's files, the quarantine's files)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    partition = f"month={month}"

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stagers = {"staged": Stager(storage, table_dir, partition), "rejected": Stager(storage, rejects.table_dir, partition)}

        def written(kind: str, files: list[dict]) -> Iterator[pa.RecordBatch]:
            if files:
                yield pa.RecordBatch.from_pylist([{"kind": kind, **f} for f in files], schema=OUT_SCHEMA)

        for batch in batches:
            t = pa.Table.from_batches([batch])
            bad = pc.is_valid(t.column("error"))
            yield from written("staged", stagers["staged"].add(t.filter(pc.invert(bad)).select(schema.names).cast(schema)))
            if pc.any(bad).as_py():
                rows = rejects.rows(t.filter(bad).select(_REJECTED.names).cast(_REJECTED))
                yield from written("rejected", stagers["rejected"].add(rows))
        for kind, stager in stagers.items():
            yield from written(kind, stager.flush())

    rows = checked.mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow().to_pylist()
    files = {
        kind: [{k: r[k] for k in ("path", "size", "stats", "rows")} for r in rows if r["kind"] == kind]
        for kind in ("staged", "rejected")
    }
    return files["staged"], files["rejected"]


#: rejected rows as the Spark lane's tasks hand them to ``Rejects.rows`` (what the quarantine records of a formatted month)
_REJECTED = pa.schema(
    [("month", pa.string()), (FILE_COL, pa.string()), (LINE_COL, pa.int64()), ("record", pa.string()), ("error", pa.string())]
)
