"""The formatted zone's fast lane: Spark's Python workers parse, cast and write clean files as Parquet.

A month of many small clean files is cheaper to parse with pyarrow in the workers than as Spark rows
collected to the driver. Here a Spark job hands each task a share of the month's files (balanced by
size); the task reads them, parses its *clean* files with pyarrow (:func:`parse.read_clean`), casts them
with pyarrow (:func:`cast_strict`) and writes the rows as Parquet files into the Delta table's month
folder, all through the lake's storage (:class:`lakehouse.io.storage.Storage`: the same code on disk and
on S3). Only the file paths and their statistics come back; the driver commits them in the month's one Delta transaction
(:meth:`lakehouse.io.lake.Lake.commit_month`). Uncommitted files are not part of the table, so a crash
leaves the previous version intact.

Anything that is not plainly clean steps aside: a file the full parser has something to say about, a
value outside the strict forms below, an empty required value, a row of another month. Such a file is
formatted by the Spark path (:func:`parse.read_raw` + :func:`parse.cast_checked`), which writes the
quarantine records. The strict forms are a subset of what Spark's casts accept and read to the same
value, so a file gives the same rows on either lane (``lakehouse_tests/test_executors.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.io.spark import parallelism
from lakehouse.io.storage import Storage
from lakehouse.specs.models import FormatSpec, SourceSpec
from lakehouse.transforms.parse import FILE_COL, LINE_COL, cast_checked, clean_layout, empty_raw, read_clean

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: the forms a raw value may take on the fast lane (RE2, whole value); other forms go to Spark's casts.
#: Digits are bounded so that no value overflows or loses precision differently in pyarrow and in Spark.
STRICT = {
    "int": r"^-?[0-9]{1,9}$",
    "bigint": r"^-?[0-9]{1,18}$",
    "double": r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$",
    "date": r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}$",
    # ISO 8601 in UTC; without the Z only when Spark's session time zone is UTC (see cast_strict)
    "timestamp": r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$",
    "timestamp_naive": r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$",
    "boolean": r"^(true|false)$",
}
#: longer string bounds are left out of a file's statistics
STRING_STATS_CHARS = 64
#: a task parses at most about this many lines at once and writes a Parquet file at least this often
FLUSH_ROWS = 1_000_000


@dataclass(frozen=True)
class Plan:
    """What a Spark task needs to format a file (small and picklable: no project objects)."""

    fmt: FormatSpec
    raw_names: tuple[str, ...]
    columns: tuple[tuple[str, str, str, bool, str | None], ...]  # (raw name, name, type, nullable, pattern)
    month_column: str | None
    month: str
    utc_session: bool
    schema: pa.Schema  # the Parquet files' schema: the table's, without the partition column
    table_dir: str  # the table's URI
    storage: Storage


def eligible(source: SourceSpec) -> bool:
    """Whether the source's files can take the fast lane at all (every column of a type it casts, no
    explicit datetime pattern, a single-byte delimiter)."""
    fmt = source.format
    return (
        fmt.kind == "csv"
        and not source.spans_months
        and fmt.compression == "none"
        and fmt.decimal == "."
        and fmt.thousands is None
        and all(c.type in ("string", *STRICT) and not c.format and _re2(c.pattern) for c in source.columns)
    )


def _re2(pattern: str | None) -> bool:
    """Whether pyarrow's regular expressions (RE2) take ``pattern`` (the fast lane checks it with RE2, and
    leaves a file whose values do not match it to Spark, which checks it with Java's)."""
    if pattern is None:
        return True
    try:
        pc.match_substring_regex(pa.array([""]), f"^(?:{pattern})$")
    except pa.ArrowInvalid:
        return False
    return True


def cast_strict(raw: pa.Table, plan: Plan) -> pa.Table | None:
    """The fast-parsed strings of one file cast to the canonical columns, plus lineage; ``None`` when a
    value is not in its strict form, a required value is empty, or a row falls outside the month."""
    arrays, names = [], []
    for raw_name, name, kind, nullable, pattern in plan.columns:
        text = raw.column(raw_name)
        empty = pc.equal(text, "")
        if pc.any(empty).as_py():
            if not nullable:
                return None
            text = pc.if_else(empty, pa.scalar(None, pa.string()), text)
        if kind == "string":
            if pattern is not None and not pc.all(pc.match_substring_regex(text, f"^(?:{pattern})$")).as_py():
                return None
            value = text
        else:
            pattern = STRICT[kind]
            if kind == "timestamp" and plan.utc_session and not pc.all(pc.ends_with(text, "Z")).as_py():
                pattern = STRICT["timestamp_naive"]
            if not pc.all(pc.match_substring_regex(text, pattern)).as_py():
                return None
            try:
                if kind == "timestamp":
                    naive = pattern == STRICT["timestamp_naive"]
                    value = pc.cast(text, pa.timestamp("us") if naive else pa.timestamp("us", tz="UTC"))
                    if naive:
                        value = pc.assume_timezone(value, "UTC")
                elif kind == "boolean":
                    value = pc.equal(text, "true")
                else:
                    value = pc.cast(
                        text, {"int": pa.int32(), "bigint": pa.int64(), "double": pa.float64(), "date": pa.date32()}[kind]
                    )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return None  # e.g. 2012-02-30: Spark's cast decides, and the quarantine says why
        arrays.append(value)
        names.append(name)
    table = pa.Table.from_arrays([*arrays, raw.column(FILE_COL), raw.column(LINE_COL)], names=[*names, FILE_COL, LINE_COL])
    if plan.month_column is not None:
        start = datetime.strptime(plan.month, "%Y-%m").replace(tzinfo=UTC)
        end = (start + timedelta(days=32)).replace(day=1)
        bounds = pc.min_max(table.column(plan.month_column))
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo is not None and not isinstance(lo, datetime):  # a date column
            inside = start.date() <= lo and hi < end.date()
        else:
            inside = lo is None or (start <= lo and hi < end)
        if not inside:
            return None
    return table.cast(plan.schema)


def stats(table: pa.Table) -> str:
    """Delta ``add`` statistics of a file's rows (the form delta-rs writes): row count, per-column nulls,
    minimum and maximum."""

    def text(value):
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
            return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{value.microsecond:06d}" if value.microsecond else "") + "Z"
        return value.isoformat() if hasattr(value, "isoformat") else value

    lows, highs, nulls = {}, {}, {}
    for name in table.column_names:
        column = table.column(name)
        nulls[name] = column.null_count
        if column.null_count < len(column) and not pa.types.is_boolean(column.type):
            bounds = pc.min_max(column)
            low, high = text(bounds["min"].as_py()), text(bounds["max"].as_py())
            if isinstance(low, str) and max(len(low), len(high)) > STRING_STATS_CHARS:
                continue  # no bounds rather than long ones in every add of the log (a cut maximum would lie)
            lows[name], highs[name] = low, high
    return json.dumps({"numRecords": table.num_rows, "minValues": lows, "maxValues": highs, "nullCount": nulls})


def stage_parquet(storage: Storage, table_uri: str, partition: str, table: pa.Table) -> dict:
    """Write ``table`` as one Parquet file into ``table_uri/<partition>/``; what the Delta ``add`` needs.

    The file is not part of the table until a commit lists it."""
    name = f"part-{uuid.uuid4().hex}-c000.snappy.parquet"
    size = storage.write_parquet(storage.join(table_uri, partition, name), table)
    return {"path": f"{partition}/{name}", "size": size, "stats": stats(table), "rows": table.num_rows}


class Stager:
    """One task's rows of one table, written as Parquet files of about ``FLUSH_ROWS`` rows into
    ``table_uri/<partition>/`` (:func:`stage_parquet`): the task holds at most that many rows of the table."""

    def __init__(self, storage: Storage, table_uri: str, partition: str, *, rows: int = FLUSH_ROWS) -> None:
        self.storage, self.table_uri, self.partition, self.limit = storage, table_uri, partition, rows
        self.parts: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> list[dict]:
        """Buffer ``table``; the files written when the buffer reached the limit."""
        if table.num_rows:
            self.parts.append(table)
            self.rows += table.num_rows
        return self.flush() if self.rows >= self.limit else []

    def flush(self) -> list[dict]:
        """Write what is buffered (nothing when empty)."""
        if not self.rows:
            return []
        from lakehouse.io.lake import normalized_schema

        data = pa.concat_tables(self.parts)
        self.parts, self.rows = [], 0
        return [stage_parquet(self.storage, self.table_uri, self.partition, data.cast(normalized_schema(data.schema)))]


def stage_frame(df, storage: Storage, table_uri: str, month: str) -> tuple[list[dict], pa.Schema]:
    """The rows of ``df`` (one month, with or without its ``month`` column) written by Spark's tasks as
    Parquet files into ``table_uri/month=<month>/``: (the staged files, the table's Arrow schema with the
    partition column), for :meth:`lakehouse.io.lake.Lake.commit_month`. One Spark job; only the files'
    paths and statistics come back to the driver, and nothing is committed."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    from lakehouse.io.lake import PARTITION_COLUMN, normalized_schema

    if PARTITION_COLUMN not in df.columns:
        df = df.withColumn(PARTITION_COLUMN, F.lit(month))
    schema = normalized_schema(to_arrow_schema(df.schema, timezone="UTC"))
    partition = f"{PARTITION_COLUMN}={month}"

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stager = Stager(storage, table_uri, partition)
        for batch in batches:
            table = pa.Table.from_batches([batch])
            other = pc.filter(table[PARTITION_COLUMN], pc.not_equal(table[PARTITION_COLUMN], month)).unique().to_pylist()
            if other or table[PARTITION_COLUMN].null_count:
                # the task fails, the job with it: nothing is committed (files staged so far are not in the log)
                raise ValueError(f"{table_uri}: rows for months {sorted(map(str, other))} in a write of month {month}")
            for staged in stager.add(table.drop_columns([PARTITION_COLUMN])):
                yield pa.RecordBatch.from_pylist([{"kind": "staged", **staged}], schema=OUT_SCHEMA)
        for staged in stager.flush():
            yield pa.RecordBatch.from_pylist([{"kind": "staged", **staged}], schema=OUT_SCHEMA)

    rows = df.mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow().to_pylist()
    return [r for r in rows if r["kind"] == "staged"], schema


def _balanced(files: Sequence[str], slots: int, sizes: dict[str, int]) -> list[list[str]]:
    """``files`` dealt into ``slots`` lists of about equal bytes (largest first onto the lightest)."""
    out: list[list[str]] = [[] for _ in range(slots)]
    load = [0] * slots
    for size, path in sorted(((sizes[p], p) for p in files), reverse=True):
        i = load.index(min(load))
        out[i].append(path)
        load[i] += size
    return [sorted(s) for s in out if s]


def _format_slot(paths: Sequence[str], plan: Plan) -> Iterator[dict]:
    """One task's share: staged Parquet files (``kind='staged'``) and the files it leaves to Spark
    (``kind='slow'``).

    Clean files with the same column order are read and cast together (one pyarrow call per run of
    ``FLUSH_ROWS`` lines, instead of one per 25 KB file). The task holds its share's raw bytes and at most
    about twice ``FLUSH_ROWS`` parsed rows at a time.
    """
    raw_names = list(plan.raw_names)
    groups: dict[tuple[str, ...], list[tuple[str, bytes]]] = {}
    for path in paths:
        data = plan.storage.read(path)
        layout = clean_layout(data, plan.fmt, raw_names)
        if layout is None:
            yield _slow(path)
            continue
        names, header_bytes = layout
        groups.setdefault(tuple(names), []).append((path, data[header_bytes:]))

    def typed(files: list[tuple[str, bytes]], names: tuple[str, ...]) -> Iterator[pa.Table | str]:
        """The files' rows as tables, and the paths of the files to leave: read and cast together, and
        when that fails, halved until the files that fail stand alone (a few bad files of hundreds cost a
        few dozen reads, not one per file)."""
        raw = read_clean([(p.rsplit("/", 1)[-1], body) for p, body in files], names, plan.fmt, raw_names)
        table = None if raw is None else cast_strict(raw, plan)
        if table is not None:
            yield table
        elif len(files) == 1:
            yield files[0][0]
        else:
            half = len(files) // 2
            yield from typed(files[:half], names)
            yield from typed(files[half:], names)

    parts: list[pa.Table] = []
    rows = 0
    for group_names, files in groups.items():
        for chunk in _chunks(files, FLUSH_ROWS):
            for out in typed(chunk, group_names):
                if isinstance(out, str):
                    yield _slow(out)
                    continue
                parts.append(out)
                rows += out.num_rows
            if rows >= FLUSH_ROWS:
                yield {
                    "kind": "staged",
                    **stage_parquet(plan.storage, plan.table_dir, f"month={plan.month}", pa.concat_tables(parts)),
                }
                parts, rows = [], 0
    if parts:
        yield {"kind": "staged", **stage_parquet(plan.storage, plan.table_dir, f"month={plan.month}", pa.concat_tables(parts))}


def _slow(path: str) -> dict:
    return {"kind": "slow", "path": path, "size": None, "stats": None, "rows": None}


def _chunks(files: list[tuple[str, bytes]], rows: int) -> Iterator[list[tuple[str, bytes]]]:
    """``files`` in runs of about ``rows`` lines (a task's memory stays bounded on large months)."""
    chunk: list[tuple[str, bytes]] = []
    lines = 0
    for item in files:
        chunk.append(item)
        lines += item[1].count(b"\n")
        if lines >= rows:
            yield chunk
            chunk, lines = [], 0
    if chunk:
        yield chunk


OUT_SCHEMA = pa.schema(
    [("kind", pa.string()), ("path", pa.string()), ("size", pa.int64()), ("stats", pa.string()), ("rows", pa.int64())]
)


def data_schema(spark: SparkSession, source: SourceSpec) -> pa.Schema:
    """The formatted table's Arrow schema as the Spark lane produces it (partition column included)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from lakehouse.io.lake import normalized_schema

    checked = cast_checked(empty_raw(spark, source), source, "2000-01")
    schema = to_arrow_schema(checked.drop("error", "record").schema, timezone="UTC")
    return normalized_schema(schema)


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
    plan = Plan(
        fmt=source.format,
        raw_names=tuple(c.raw_name for c in source.columns),
        columns=tuple((c.raw_name, c.name, c.type, c.nullable, c.pattern) for c in source.columns),
        month_column=source.partitioning.column if source.partitioning.kind == "time_column" else None,
        month=month,
        utc_session=(spark.conf.get("spark.sql.session.timeZone") or "").upper() in ("UTC", "Z", "ETC/UTC", "+00:00"),
        schema=_file_schema(schema),
        table_dir=table_dir,
        storage=storage,
    )
    files = [str(f) for f in files]
    sizes = {f: (sizes or {}).get(f) or storage.size(f) or 0 for f in files}
    slots = _balanced(files, min(len(files), parallelism(spark)), sizes)

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for slot in batch.column("id").to_pylist():
                out = list(_format_slot(slots[slot], plan))
                if out:
                    yield pa.RecordBatch.from_pylist(out, schema=OUT_SCHEMA)

    from pyspark.sql.pandas.types import from_arrow_schema

    result = spark.range(len(slots), numPartitions=len(slots)).mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow()
    rows = result.to_pylist()
    staged = [r for r in rows if r["kind"] == "staged"]
    slow = sorted(r["path"] for r in rows if r["kind"] == "slow")
    return staged, slow


def format_month(
    spark: SparkSession,
    files: Sequence[str],
    source: SourceSpec,
    month: str,
    storage: Storage,
    table_dir: str,
    schema: pa.Schema,
    *,
    months: tuple[str, str | None] | None = None,
    sizes: dict[str, int] | None = None,
) -> tuple[list[dict], pa.Table, int]:
    """The month's files formatted and staged under ``table_dir``, nothing committed: (the staged files,
    the rejected rows with ``month``, lineage, ``record`` and ``error``, the files the fast lane took).

    Clean files take the fast lane (one Spark job, :func:`format_on_executors`); the rest are parsed and
    cast by Spark (one more job) and their accepted rows staged from the driver. ``months``: the source's
    partition range, for a source whose deliveries span months (see :func:`parse.cast_checked`).
    """
    from lakehouse.transforms.parse import read_raw

    staged, rest = format_on_executors(spark, files, source, month, storage, table_dir, schema, sizes=sizes)
    if not rest:
        return staged, _REJECTED.empty_table(), len(files)
    checked = cast_checked(read_raw(spark, rest, source, storage=storage), source, month, months).toArrow()
    is_bad = pc.is_valid(checked.column("error"))
    data = checked.filter(pc.invert(is_bad)).drop_columns(["error", "record", "month"])
    if data.num_rows:
        staged.append(stage_parquet(storage, table_dir, f"month={month}", data.cast(_file_schema(schema))))
    bad = checked.filter(is_bad).select(_REJECTED.names).cast(_REJECTED)
    return staged, bad, len(files) - len(rest)


#: rejected rows as :func:`format_month` returns them (what the quarantine records of a formatted month)
_REJECTED = pa.schema(
    [("month", pa.string()), (FILE_COL, pa.string()), (LINE_COL, pa.int64()), ("record", pa.string()), ("error", pa.string())]
)


def _file_schema(schema: pa.Schema) -> pa.Schema:
    """The Parquet files' schema: the table's without its partition column."""
    return pa.schema([f for f in schema if f.name != "month"])
