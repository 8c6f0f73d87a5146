"""``quality/repairs``: every cell cleaning changed — append-only, one row per cell and batch.

Columns: ``dataset, key, column, old_value, new_value, rule, row_status, source_file, source_line, run_id,
batch_id, written_at, month``. ``key`` is the row's key as JSON (as it stands in the trusted table);
``old_value``/``new_value`` are text (timestamps ISO 8601, UTC); ``rule`` is the rule or cleaning step
that made the change. An imputed row is one repair with ``old_value`` null and no source file/line.
``row_status`` tells where the row ended: ``kept``/``imputed`` (in trusted) or ``rejected``/``merged`` (a
later step quarantined it — the quarantine holds its original content). :func:`current` gives the rows
of the newest published batch of each slice, like the quarantine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from lakehouse.io.lake import Lake
from lakehouse.quality import metrics

TABLE = ("quality", "repairs")
SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("key", pa.string()),
        pa.field("column", pa.string()),
        pa.field("old_value", pa.string()),
        pa.field("new_value", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("row_status", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_line", pa.int64()),
        *metrics.BATCH_FIELDS,
        pa.field("month", pa.string()),
    ]
)


def conform(rows: pa.Table, batch: metrics.Batch) -> pa.Table:
    """Changed cells (as the cleaning tasks split them) in the table's shape, stamped with ``batch``."""
    rename = {"_source_file": "source_file", "_source_line": "source_line"}
    rows = rows.rename_columns([rename.get(c, c) for c in rows.column_names])
    n = rows.num_rows
    extra = {"dataset": pa.array([batch.dataset] * n, pa.string()), "month": pa.array([batch.month] * n, pa.string())}
    for name, arr in extra.items():
        rows = rows.append_column(name, arr) if name not in rows.column_names else rows
    rows = batch.stamp(rows)
    for f in SCHEMA:
        if f.name not in rows.column_names:
            rows = rows.append_column(f.name, pa.nulls(n, f.type))
    return rows.select(SCHEMA.names).cast(SCHEMA)


def append(lake: Lake, rows: pa.Table, batch: metrics.Batch) -> int | None:
    if rows.num_rows == 0:
        return None
    return lake.append(*TABLE, conform(rows, batch))


def commit(lake: Lake, staged: Mapping[metrics.Batch, Sequence[dict]]) -> int | None:
    """Add the Parquet files Spark's tasks staged for each batch (one month each; rows as :func:`conform`
    gives them) in one commit for all of them; the new version, None if there are none."""
    return lake.commit_append(*TABLE, metrics.by_month(staged), SCHEMA)


def current(lake: Lake, *, dataset: str | None = None, months: list[str] | None = None) -> pa.Table:
    if not lake.exists(*TABLE):
        return SCHEMA.empty_table()
    return metrics.current(lake, TABLE, dataset=dataset, stage="trusted", months=months)
