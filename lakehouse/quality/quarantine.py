"""The quarantine: every row a zone refused, with its original content, the rule and where it came from.

``quality/quarantine`` is one Delta table for all datasets, partitioned by month. Rerunning a month of a
dataset replaces that dataset/stage/month slice (so reruns never duplicate rows); earlier contents stay
reachable through the table's Delta history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from lakehouse.io.lake import Lake
from lakehouse.transforms.parse import FILE_COL, LINE_COL

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TABLE = ("quality", "quarantine")
SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("error", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_line", pa.int64()),
        pa.field("record", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("month", pa.string()),
    ]
)


def quarantine_rows(
    rejected: DataFrame, *, dataset: str, stage: str, run_id: str, month: str, record_columns: list[str] | None
) -> DataFrame:
    """Rejected rows in the quarantine's shape. ``record_columns``: the columns to keep as the row's JSON
    content; ``None`` when ``rejected`` already has a ``record`` text column (raw lines)."""
    from pyspark.sql import functions as F

    record = F.col("record") if record_columns is None else F.to_json(F.struct(*record_columns))
    rule = F.col("rule") if "rule" in rejected.columns else F.lit("parse")
    return rejected.select(
        F.lit(dataset).alias("dataset"),
        F.lit(stage).alias("stage"),
        rule.alias("rule"),
        F.col("error"),
        F.col(FILE_COL).alias("source_file"),
        F.col(LINE_COL).cast("bigint").alias("source_line"),
        record.alias("record"),
        F.lit(run_id).alias("run_id"),
        F.lit(month).alias("month"),
    )


def write(lake: Lake, rows: pa.Table, *, dataset: str, stage: str, month: str) -> int:
    """Replace the dataset/stage/month slice of the quarantine; the new Delta version."""
    rows = rows.select(SCHEMA.names).cast(SCHEMA)
    return lake.overwrite_month(*TABLE, rows, month, where={"dataset": dataset, "stage": stage})
