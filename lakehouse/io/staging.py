"""Executors write, the driver commits: Spark's tasks write a table's rows as Parquet files into its month
folder through the lake's storage (:class:`lakehouse.io.storage.Storage`: the same code on disk and on S3);
only the files' paths and Delta statistics come back, and the driver commits them in the month's one Delta
transaction (:meth:`lakehouse.io.lake.Lake.commit_month`). Uncommitted files are not part of the table, so
a crash leaves the previous version intact (:func:`lakehouse.io.maintenance.sweep_staged` removes them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.io.storage import Storage

#: longer string bounds are left out of a file's statistics
STRING_STATS_CHARS = 64

#: a task parses at most about this many lines at once and writes a Parquet file at least this often
FLUSH_ROWS = 1_000_000


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


def month_folder(month: str) -> str:
    """The folder of ``month``'s files in a table partitioned by month (``month=<YYYY-MM>``)."""
    from lakehouse.io.lake import PARTITION_COLUMN

    return f"{PARTITION_COLUMN}={month}"


def stage_parquet(storage: Storage, table_uri: str, partition: str, table: pa.Table) -> dict:
    """Write ``table`` as one Parquet file into ``table_uri/<partition>/`` (``table_uri/`` for an
    unpartitioned table: ``partition=""``); what the Delta ``add`` needs.

    The file is not part of the table until a commit lists it."""
    name = f"part-{uuid.uuid4().hex}-c000.snappy.parquet"
    folder = [partition] if partition else []
    size = storage.write_parquet(storage.join(table_uri, *folder, name), table)
    return {"path": "/".join([*folder, name]), "size": size, "stats": stats(table), "rows": table.num_rows}


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
    """The rows of ``df`` (one month, with or without its ``month`` column) staged under
    ``table_uri/month=<month>/``: :func:`stage_months` of that one month (its files, the table's schema)."""
    staged, schema = stage_months(df, storage, table_uri, [month])
    return staged[month], schema


def stage_months(df, storage: Storage, table_uri: str, months: Sequence[str]) -> tuple[dict[str, list[dict]], pa.Schema]:
    """The rows of ``df`` written by Spark's tasks as Parquet files, each row under its month's folder
    ``table_uri/month=<month>/`` (the ``month`` column, which one month's rows may leave out): (each month's
    staged files, the table's Arrow schema with the partition column), for
    :meth:`lakehouse.io.lake.Lake.commit_month` month by month. One Spark job; only the files' paths and
    statistics come back to the driver, and nothing is committed. A row of a month outside ``months``, or
    without a month, fails the job."""
    from pyspark.sql import functions as F

    from lakehouse.io.lake import PARTITION_COLUMN

    months = list(months)
    if PARTITION_COLUMN not in df.columns:
        if len(months) != 1:
            raise ValueError(f"{table_uri}: rows of months {months} need their {PARTITION_COLUMN!r} column")
        df = df.withColumn(PARTITION_COLUMN, F.lit(months[0]))
    what = f"month {months[0]}" if len(months) == 1 else f"months {', '.join(months)}"

    def split(table: pa.Table) -> Iterator[tuple[str, str, pa.Table]]:
        column = table[PARTITION_COLUMN]
        other = pc.filter(column, pc.invert(pc.is_in(column, value_set=pa.array(months, column.type)))).unique().to_pylist()
        if other or column.null_count:
            # the task fails, the job with it: nothing is committed (files staged so far are not in the log)
            found = sorted(map(str, (m for m in other if m is not None))) + (["null"] if column.null_count else [])
            raise ValueError(f"{table_uri}: rows for months {found} in a write of {what}")
        for month in pc.unique(column).to_pylist():
            yield month, month_folder(month), table.filter(pc.equal(column, month)).drop_columns([PARTITION_COLUMN])

    staged, schema, _ = stage_groups(df, storage, table_uri, split)
    return {m: staged.get(m, []) for m in months}, schema


def stage_groups(
    df,
    storage: Storage,
    table_uri: str,
    split: Callable[[pa.Table], Iterator[tuple[str, str, pa.Table]]],
    *,
    marks: Sequence[str] = (),
    rows: int = FLUSH_ROWS,
) -> tuple[dict[str, list[dict]], pa.Schema, dict[str, dict[str, int]]]:
    """One Spark job whose tasks pass each batch of ``df`` through ``split`` (the batch's rows per group:
    the group, its folder — ``""`` for the table's root — and its rows), stage each group's rows under its
    folder (a :class:`Stager` each), and count the true values (or the sum) of each of ``marks`` per group,
    columns that are not written: (each group's staged files, ``df``'s Arrow schema without the marks, each
    group's mark counts). A task holds at most about ``rows`` rows over all its groups."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    from lakehouse.io.lake import normalized_schema

    schema = normalized_schema(to_arrow_schema(df.schema, timezone="UTC"))

    def work(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stagers: dict[str, Stager] = {}
        counts: dict[tuple[str, str], int] = {}

        def written(group: str, files: list[dict]) -> Iterator[pa.RecordBatch]:
            for staged in files:
                yield pa.RecordBatch.from_pylist([{**staged, "kind": f"staged:{group}"}], schema=OUT_SCHEMA)

        for batch in batches:
            for group, folder, part in split(pa.Table.from_batches([batch])):
                for m in marks:
                    counts[group, m] = counts.get((group, m), 0) + int(pc.sum(part[m].cast(pa.int64())).as_py() or 0)
                stager = stagers.setdefault(group, Stager(storage, table_uri, folder, rows=rows))
                yield from written(group, stager.add(part.drop_columns(list(marks))))
            if sum(s.rows for s in stagers.values()) >= rows:
                # rows of many groups interleaved: the task still holds about one file's rows at most
                for group, each in stagers.items():
                    yield from written(group, each.flush())
        for group, each in stagers.items():
            yield from written(group, each.flush())
        found = [{"kind": f"mark:{m}:{g}", "path": None, "size": None, "stats": None, "rows": n} for (g, m), n in counts.items()]
        if found:
            yield pa.RecordBatch.from_pylist(found, schema=OUT_SCHEMA)

    staged: dict[str, list[dict]] = {}
    counted: dict[str, dict[str, int]] = {}
    for r in df.mapInArrow(work, from_arrow_schema(OUT_SCHEMA)).toArrow().to_pylist():
        kind, _, rest = r["kind"].partition(":")
        if kind == "staged":
            staged.setdefault(rest, []).append({k: r[k] for k in ("path", "size", "stats", "rows")})
        else:
            mark, _, group = rest.partition(":")
            counted.setdefault(group, dict.fromkeys(marks, 0))[mark] += r["rows"]
    return staged, normalized_schema(pa.schema([f for f in schema if f.name not in marks])), counted


#: a task's row per file: ``kind`` (``staged``, or ``staged:<group>`` from :func:`stage_groups`; the formatted
#: zone's ``rejected``: a quarantine file; the fast lane's ``slow``: left to Spark; ``mark:<column>:<group>``: a
#: count in ``rows``), then what the Delta ``add`` needs
OUT_SCHEMA = pa.schema(
    [("kind", pa.string()), ("path", pa.string()), ("size", pa.int64()), ("stats", pa.string()), ("rows", pa.int64())]
)
