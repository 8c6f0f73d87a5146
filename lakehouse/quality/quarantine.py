"""The quarantine: every row a zone refused, with its original content, the rule(s) and where it came from.

``quality/quarantine`` is one Delta table for all datasets, partitioned by month, and **append-only**:
every write adds a batch (``run_id``, ``batch_id``, ``written_at``) and nothing is ever overwritten, so
the decisions of every run stay readable for as long as the table lives (not only until the next
``vacuum``, as Delta time travel would). A rerun of a month adds a new batch; :func:`current` returns,
per dataset/stage/month, the rows of the newest *published* batch (see :mod:`lakehouse.quality.metrics`),
which is what conservation checks and consumers use.

Columns: ``dataset, stage, rule, disposition, error, source_file, source_line, key, record, run_id,
batch_id, written_at, month``. ``disposition``: ``rejected`` (a rule or step refused the row) or
``merged`` (a duplicate folded into the row it repeats; ``error`` names the row that was kept).
``record`` is the row exactly as the stage received it (JSON of the canonical columns, or the raw line
for rows the formatted stage could not parse); ``key`` is the row's key as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from lakehouse.io.lake import Lake
from lakehouse.quality import metrics
from lakehouse.transforms.decode import MAX_MESSAGE_CHARS, bounded
from lakehouse.transforms.parse import FILE_COL, LINE_COL

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TABLE = ("quality", "quarantine")
SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("disposition", pa.string()),
        pa.field("error", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_line", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("record", pa.string()),
        *metrics.BATCH_FIELDS,
        pa.field("month", pa.string()),
    ]
)
REJECTED, MERGED = "rejected", "merged"


def quarantine_rows(
    rejected: DataFrame, *, dataset: str, stage: str, run_id: str, month: str, record_columns: list[str] | None
) -> DataFrame:
    """Rejected rows in the quarantine's shape. ``record_columns``: the columns to keep as the row's JSON
    content; ``None`` when ``rejected`` already has a ``record`` text column (raw lines)."""
    from pyspark.sql import functions as F

    def opt(name: str, default):
        return F.col(name) if name in rejected.columns else default

    record = F.col("record") if record_columns is None else F.to_json(F.struct(*record_columns))
    return rejected.select(
        F.lit(dataset).alias("dataset"),
        F.lit(stage).alias("stage"),
        opt("rule", F.lit("parse")).alias("rule"),
        opt("disposition", F.lit(REJECTED)).alias("disposition"),
        F.col("error"),
        F.col(FILE_COL).alias("source_file"),
        F.col(LINE_COL).cast("bigint").alias("source_line"),
        opt("key", F.lit(None).cast("string")).alias("key"),
        record.alias("record"),
        F.lit(run_id).alias("run_id"),
        F.lit(None).cast("string").alias("batch_id"),
        F.lit(None).cast("timestamp").alias("written_at"),
        F.lit(month).alias("month"),
    )


def quarantine_table(rejected: pa.Table, *, dataset: str, stage: str, run_id: str, month: str) -> pa.Table:
    """:func:`quarantine_rows` for rows in Arrow: the lineage columns, ``record`` (text) and ``error``, and
    optionally ``rule`` (default ``parse``), ``disposition`` (default ``rejected``) and ``key`` — as the
    formatted zone's Spark lane or the trusted zone's Spark tasks have them."""
    n = rejected.num_rows
    rename = {FILE_COL: "source_file", LINE_COL: "source_line"}
    rows = rejected.rename_columns([rename.get(c, c) for c in rejected.column_names])
    values = {"rule": "parse", "disposition": REJECTED}
    values = {name: v for name, v in values.items() if name not in rows.column_names}
    values.update({"dataset": dataset, "stage": stage, "run_id": run_id, "month": month})
    for name, value in values.items():
        column = pa.array([value] * n, pa.string())
        i = rows.schema.get_field_index(name)
        rows = rows.set_column(i, name, column) if i >= 0 else rows.append_column(name, column)
    return _conform(rows)


def _conform(rows: pa.Table) -> pa.Table:
    for f in SCHEMA:
        if f.name not in rows.column_names:
            rows = rows.append_column(f.name, pa.nulls(rows.num_rows, f.type))
    rows = rows.select(SCHEMA.names).cast(SCHEMA)
    return _bounded_text(rows, ("error", "record"))


def _bounded_text(rows: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """Every cell of ``columns`` at most ~2 KB, saying how much was cut (the quarantine is append-only: one
    huge cell would be read with every later query of its month)."""
    import pyarrow.compute as pc

    for name in columns:
        column = rows.column(name)
        if rows.num_rows and (pc.max(pc.utf8_length(column)).as_py() or 0) > MAX_MESSAGE_CHARS:
            values = [None if v is None else bounded(v) for v in column.to_pylist()]
            rows = rows.set_column(rows.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return rows


def conform(rows: pa.Table, batch: metrics.Batch) -> pa.Table:
    """``rows`` (as :func:`quarantine_table` gives them) in the table's shape, stamped with ``batch``."""
    bad = set(rows.column("month").unique().to_pylist()) - {batch.month} if "month" in rows.column_names else set()
    if bad:
        raise ValueError(f"quarantine rows for months {sorted(bad)} in a batch of {batch.month}")
    return _conform(batch.stamp(rows))


def commit(lake: Lake, staged: Mapping[metrics.Batch, Sequence[dict]]) -> int | None:
    """Add the Parquet files Spark's tasks staged for each batch (one month each; rows as :func:`conform`
    gives them) in one commit for all of them (not yet published); the new version, None if there are none."""
    return lake.commit_append(*TABLE, metrics.by_month(staged), SCHEMA)


def staged_rows(batch: metrics.Batch) -> Callable[[pa.Table], pa.Table]:
    """What a Spark task stages for ``batch``: rejected rows (lineage, ``record``, ``error``; see
    :func:`quarantine_table`) in the table's shape, stamped, without the partition column."""

    def rows(rejected: pa.Table) -> pa.Table:
        shaped = quarantine_table(rejected, dataset=batch.dataset, stage=batch.stage, run_id=batch.run_id, month=batch.month)
        return conform(shaped, batch).drop_columns(["month"])

    return rows


def publish_staged(lake: Lake, staged: Mapping[metrics.Batch, Sequence[dict]]) -> None:
    """Commit the staged rejected rows of a stage's batches (one per month) in one commit, then publish
    every one of them in one metrics commit.

    Each batch is published even when empty: it supersedes the rows an earlier run of its month
    quarantined. Used by stages that only quarantine (the formatted zone), for the months whose data
    commit succeeded; the trusted zone publishes its batches with their metrics
    (:func:`lakehouse.quality.metrics.publish`).
    """
    commit(lake, staged)
    metrics.publish(lake, {batch: sum(s["rows"] for s in files) for batch, files in staged.items()})


def current(lake: Lake, *, dataset: str | None = None, stage: str | None = None, months: list[str] | None = None) -> pa.Table:
    """The quarantine as of the newest published batch of every dataset/stage/month."""
    if not lake.exists(*TABLE):
        return SCHEMA.empty_table()
    return metrics.current(lake, TABLE, dataset=dataset, stage=stage, months=months)
