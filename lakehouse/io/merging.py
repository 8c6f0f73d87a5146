"""The rows of a merge (:meth:`lakehouse.io.lake.Lake.merge_months`) computed by Spark: the stored table and
the new rows of one or more months in, the table's state after each month out, as one DataFrame that
Spark's tasks stage (nothing is collected).

Semantics of an upsert on the key columns ``on``: new keys are inserted, stored keys the new rows do not
name are kept, and a matched row is updated from the new one — only when its ``newer`` column is not older
than the stored one (if ``newer`` is given; a null on either side is not newer), otherwise only its
``keep_first`` columns move. ``keep_first`` columns always keep the smaller of the stored and the new value
(the new one when the stored is null). A null key never matches a stored row (SQL equality), and a month's
rows must not repeat a key (nulls included: such a month fails, and the others are merged without it).

Several months are merged in one plan by folding, per key, the stored row and each month's row in month
order with exactly that rule (:func:`states`): the state after month ``i`` is the stored table merged with
the months up to ``i`` one after the other, as if each had been merged and committed alone. A stored table
holds each non-null key once (every merge keeps it so).

A month's rows are a DataFrame of their own, or a :class:`MonthRows`: one month's share of a frame that
holds a batch of months with their month column (a view transform taking ``months``). The months of one
such frame are read from it in one pass, so that frame is computed once for the whole fold.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.io.staging import FLUSH_ROWS, stage_groups
from lakehouse.io.storage import Storage

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructType

#: a state's marks, counted by the staging tasks (:func:`stage_states`), never written: how many of the month's
#: new rows a row of its state stands for, and how many of them repeat a key of the month
NEW, REPEATED = "__merge_new", "__merge_repeated"
#: the state a row belongs to (the index of the month merged last)
STATE = "__merge_state"
_POS = "__merge_pos"


@dataclass(frozen=True, eq=False)
class MonthRows:
    """The rows of ``frame`` whose ``column`` is ``month``, without that column: one month of a frame that
    holds a batch of months. :func:`states` reads every month of the same frame in one pass."""

    frame: DataFrame
    column: str
    month: str

    @property
    def columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.column]

    @property
    def schema(self) -> StructType:
        from pyspark.sql.types import StructType

        return StructType([f for f in self.frame.schema.fields if f.name != self.column])


def _field(i: int) -> str:
    return f"__c{i}"


def states(
    stored: DataFrame | None,
    new: Mapping[int, DataFrame | MonthRows],
    *,
    on: Sequence[str],
    newer: str | None,
    keep_first: Sequence[str],
) -> DataFrame:
    """The table's state after each month of ``new`` (a state index, from 1 in merge order -> that month's
    rows, with the columns of ``stored``): ``stored`` (the table as read, None before its first merge)
    upserted with the months up to the index one after the other. One row per row of each state, in the
    column order of ``stored`` (else of the first month), with :data:`STATE` and the marks :data:`NEW`
    (how many of that month's rows it stands for: they sum to the month's rows) and :data:`REPEATED`
    (how many of them repeat a key of the month; when that is not zero the month must fail, and its
    states and the later ones must be computed again without it). The months of ``new`` that are
    :class:`MonthRows` of one frame are one read of that frame, each row tagged with its month's index."""
    from pyspark.sql import functions as F

    columns = (stored if stored is not None else new[min(new)]).columns
    names = {c: _field(i) for i, c in enumerate(columns)}

    def tagged(frame: DataFrame, pos: Column) -> DataFrame:
        return frame.select(pos.alias(_POS), *[F.col(f"`{c}`").alias(names[c]) for c in columns])

    parts = [tagged(stored, F.lit(0))] if stored is not None else []
    batches: dict[tuple[int, str], tuple[DataFrame, dict[str, int]]] = {}
    for i, data in sorted(new.items()):
        if isinstance(data, MonthRows):
            batches.setdefault((id(data.frame), data.column), (data.frame, {}))[1][data.month] = i
        else:
            parts.append(tagged(data, F.lit(i)))
    for (_, column), (frame, positions) in batches.items():
        month = F.col(f"`{column}`")
        index = F.create_map(*[F.lit(v) for pair in positions.items() for v in pair])[month]
        parts.append(tagged(frame.where(month.isin(list(positions))), index))
    rows = reduce(lambda a, b: a.unionAll(b), parts)
    keys = [names[k] for k in on]
    # ties: rows of one month repeating a key (never committed) or with a null key (each taken alone)
    by_pos = F.array_sort(
        F.collect_list(F.struct(_POS, *names.values())),
        lambda a, b: F.when(a[_POS] < b[_POS], -1).when(a[_POS] > b[_POS], 1).otherwise(0),
    )
    grouped = rows.groupBy(*keys).agg(by_pos.alias("seq"))
    folded = grouped.withColumn("acc", _fold(F.col("seq"), names, newer, keep_first))
    indices = F.array(*[F.lit(i) for i in sorted(new)])
    loose = reduce(lambda a, b: a | b, [F.col(k).isNull() for k in keys])
    out = folded.select(F.explode(F.when(loose, _each(indices)).otherwise(_last(indices))).alias("o"))
    return out.select(
        *[F.col("o.row").getField(names[c]).alias(c) for c in columns],
        F.col("o").getField(NEW).alias(NEW),
        F.col("o").getField(REPEATED).alias(REPEATED),
        F.col("o").getField(STATE).alias(STATE),
    )


def _fold(seq: Column, names: Mapping[str, str], newer: str | None, keep_first: Sequence[str]) -> Column:
    """The rows of one key (by month) merged one after the other: the state after each, with the month of
    the row merged last (the first row is inserted as it is)."""
    from pyspark.sql import functions as F

    def merge(cur: Column, row: Column) -> Column:
        side = {c: (cur[n], row[n]) for c, n in names.items()}
        whole = F.lit(True) if newer is None else F.coalesce(side[newer][1] >= side[newer][0], F.lit(False))

        def value(c: str) -> Column:
            stored_value, new_value = side[c]
            if c in keep_first:
                return F.when(stored_value.isNull() | (new_value < stored_value), new_value).otherwise(stored_value)
            return F.when(whole, new_value).otherwise(stored_value)

        return F.struct(row[_POS].alias(_POS), *[value(c).alias(n) for c, n in names.items()])

    rest = F.slice(seq, 2, F.size(seq) - 1)
    return F.aggregate(rest, F.array(seq[0]), lambda acc, row: F.concat(acc, F.array(merge(F.element_at(acc, -1), row))))


def _marks(state: Column, pos: Column | None) -> list[Column]:
    """:data:`STATE` and the marks of a row of ``state``: for a key's row, the key's rows of that month;
    for a row with a null key (``pos``: its month), itself when it is of that month."""
    from pyspark.sql import functions as F

    n = F.size(F.filter(F.col("seq"), lambda e: e[_POS] == state))
    if pos is not None:
        mine = pos == state
        return [state.alias(STATE), mine.cast("int").alias(NEW), (mine & (n > 1)).cast("int").alias(REPEATED)]
    return [state.alias(STATE), n.alias(NEW), F.when(n > 1, n).otherwise(0).alias(REPEATED)]


def _last(indices: Column) -> Column:
    """A key's row in each state from its first month on: the fold's state after the last month up to it."""
    from pyspark.sql import functions as F

    first = F.col("seq")[0][_POS]
    return F.transform(
        F.filter(indices, lambda i: i >= first),
        lambda i: F.struct(*_marks(i, None), F.element_at(F.filter(F.col("acc"), lambda s: s[_POS] <= i), -1).alias("row")),
    )


def _each(indices: Column) -> Column:
    """Rows whose key has a null never match: each is in every state from its own month on, as it is."""
    from pyspark.sql import functions as F

    return F.flatten(
        F.transform(
            F.col("seq"),
            lambda e: F.transform(
                F.filter(indices, lambda i: i >= e[_POS]), lambda i: F.struct(*_marks(i, e[_POS]), e.alias("row"))
            ),
        )
    )


def stage_states(
    df: DataFrame, storage: Storage, table_uri: str, *, rows: int = FLUSH_ROWS
) -> tuple[dict[int, list[dict]], pa.Schema, dict[int, dict[str, int]]]:
    """The rows of :func:`states` written by Spark's tasks as Parquet files into ``table_uri/`` (an
    unpartitioned table), each state's files of their own (:func:`lakehouse.io.staging.stage_groups`, one
    :class:`lakehouse.io.staging.Stager` per state and task, together holding about ``rows`` rows at most):
    (each state's staged files, the Arrow schema of the table's columns, each state's sums of the marks).
    One Spark job; only the files' paths and statistics come back, and nothing is committed."""

    def split(table: pa.Table) -> Iterator[tuple[str, str, pa.Table]]:
        for state in pc.unique(table[STATE]).to_pylist():
            yield str(state), "", table.filter(pc.equal(table[STATE], state)).drop_columns([STATE])

    staged, schema, marks = stage_groups(df, storage, table_uri, split, marks=(NEW, REPEATED), rows=rows)
    return (
        {int(s): files for s, files in staged.items()},
        pa.schema([f for f in schema if f.name != STATE]),
        {int(s): counts for s, counts in marks.items()},
    )
