"""The rows of a merge (:meth:`lakehouse.io.lake.Lake.merge`) computed by Spark: the stored table and the new
rows in, the table's next state out, as one DataFrame that Spark's tasks stage (nothing is collected).

Semantics of an upsert on the key columns ``on``: new keys are inserted, stored keys the new rows do not
name are kept, and a matched row is updated from the new one — only when its ``newer`` column is not older
than the stored one (if ``newer`` is given; a null on either side is not newer), otherwise only its
``keep_first`` columns move. ``keep_first`` columns always keep the smaller of the stored and the new value
(the new one when the stored is null). A null key never matches a stored row (SQL equality).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

#: marks counted by the staging tasks (:func:`lakehouse.io.staging.stage_table`), never written
NEW, REPEATED = "__merge_new", "__merge_repeated"


def marked(new: DataFrame, on: Sequence[str]) -> DataFrame:
    """``new`` with the marks: every row is new, and repeats a key when another new row has the same key
    (nulls included)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    repeats = F.count(F.lit(1)).over(Window.partitionBy(*[F.col(f"`{c}`") for c in on]))
    return new.withColumns({NEW: F.lit(True), REPEATED: repeats > 1})


def merged(stored: DataFrame, new: DataFrame, *, on: Sequence[str], newer: str | None, keep_first: Sequence[str]) -> DataFrame:
    """The stored rows upserted with ``new`` (as :func:`marked` gives it), in the stored table's column
    order, with the marks (false on stored rows the new ones do not match)."""
    from pyspark.sql import functions as F

    columns = stored.columns
    t = stored.select(*[F.col(f"`{c}`").alias(f"__t{i}") for i, c in enumerate(columns)], F.lit(True).alias("__in_t"))
    s = new.select(*[F.col(f"`{c}`").alias(f"__s{i}") for i, c in enumerate(columns)], NEW, REPEATED)
    at = {c: i for i, c in enumerate(columns)}

    def side(prefix: str, c: str) -> Column:
        return F.col(f"{prefix}{at[c]}")

    joined = t.join(s, on=reduce(lambda a, b: a & b, [side("__t", k) == side("__s", k) for k in on]), how="full_outer")
    only_new, matched = F.col("__in_t").isNull(), F.col("__in_t").isNotNull() & F.col(NEW).isNotNull()
    whole = matched if newer is None else matched & F.coalesce(side("__s", newer) >= side("__t", newer), F.lit(False))

    def value(c: str) -> Column:
        stored_value, new_value = side("__t", c), side("__s", c)
        if c in keep_first:
            first = F.when(stored_value.isNull() | (new_value < stored_value), new_value).otherwise(stored_value)
            return F.when(only_new, new_value).when(matched, first).otherwise(stored_value)
        return F.when(only_new | whole, new_value).otherwise(stored_value)

    return joined.select(
        *[value(c).alias(c) for c in columns],
        F.coalesce(F.col(NEW), F.lit(False)).alias(NEW),
        F.coalesce(F.col(REPEATED), F.lit(False)).alias(REPEATED),
    )
