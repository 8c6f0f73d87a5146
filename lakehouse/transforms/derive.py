"""Derived columns (``derive:`` of a source or a view): Spark SQL expressions over the row, in order."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from lakehouse.specs.models import DeriveSpec


def derive_columns(df: DataFrame, derive: dict[str, DeriveSpec]) -> DataFrame:
    """``df`` with every derived column set (added, or recomputed when present), cast to its type.

    One projection per column, in declared order, so a column may read the ones before it. The
    expressions stay SQL text: the same text every month, so Spark's generated code is reused.
    """
    from pyspark.sql import functions as F

    for name, spec in derive.items():
        df = df.withColumn(name, F.expr(spec.expr).cast(spec.type))
    return df
