"""The formatted zone's fast lane: clean files parsed and cast with pyarrow, no Spark rows.

A month of many small clean files is cheaper to parse with pyarrow in Spark's Python workers than as Spark
rows collected to the driver (:mod:`lakehouse.io.formatting` hands each task its share of the files and
stages the rows as Parquet). Here, the data side: a clean file's strings read together with others of its
column order (:func:`parse.read_clean`) and cast to the canonical columns (:func:`cast_strict`).

Anything that is not plainly clean steps aside: a file the full parser has something to say about, a
value outside the strict forms below, an empty required value, a row of another month. Such a file is
formatted by the Spark path (:func:`parse.cast_checked`), which writes the quarantine records. The strict
forms are a subset of what Spark's casts accept and read to the same value, so a file gives the same rows
on either lane (``lakehouse_tests/test_executors.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.specs.models import FormatSpec, SourceSpec
from lakehouse.transforms.parse import FILE_COL, LINE_COL, read_clean

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


@dataclass(frozen=True)
class CastPlan:
    """What a Spark task needs to cast a clean file (small and picklable: no project objects)."""

    fmt: FormatSpec
    raw_names: tuple[str, ...]
    columns: tuple[tuple[str, str, str, bool, str | None], ...]  # (raw name, name, type, nullable, pattern)
    month_column: str | None
    month: str
    utc_session: bool
    schema: pa.Schema  # the Parquet files' schema: the table's, without the partition column


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


def cast_strict(raw: pa.Table, plan: CastPlan) -> pa.Table | None:
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


def cast_clean_files(files: list[tuple[str, bytes]], names: tuple[str, ...], plan: CastPlan) -> Iterator[pa.Table | str]:
    """Clean files of one column order (``names``; ``(path, body without header)``) as tables, and the paths
    of the files to leave to Spark: read and cast together, and when that fails, halved until the files
    that fail stand alone (a few bad files of hundreds cost a few dozen reads, not one per file)."""
    raw = read_clean([(p.rsplit("/", 1)[-1], body) for p, body in files], names, plan.fmt, list(plan.raw_names))
    table = None if raw is None else cast_strict(raw, plan)
    if table is not None:
        yield table
    elif len(files) == 1:
        yield files[0][0]
    else:
        half = len(files) // 2
        yield from cast_clean_files(files[:half], names, plan)
        yield from cast_clean_files(files[half:], names, plan)


def chunks(files: list[tuple[str, bytes]], rows: int) -> Iterator[list[tuple[str, bytes]]]:
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


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The Parquet files' schema: the table's without its partition column."""
    return pa.schema([f for f in schema if f.name != "month"])
