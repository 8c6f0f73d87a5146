"""Formatted → trusted for one month: assess the rules, clean, and set rejected rows aside.

Every row of the formatted month ends in exactly one place: the trusted table or the quarantine (with
the rule it broke). Exact duplicates are quarantined too (rule ``exact_duplicate``), one copy is kept —
so ``formatted rows = trusted rows + quarantined rows`` holds for every month.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lakehouse.quality.constraints import parse_deny, violating_rows
from lakehouse.specs.models import SourceSpec
from lakehouse.transforms.parse import FILE_COL, LINE_COL

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

ROW_ID = "__row_id"
EXACT_DUPLICATE = "exact_duplicate"


@dataclass
class CleanResult:
    trusted: DataFrame
    #: rejected rows: the canonical columns, lineage, ``rule`` and ``error``
    rejected: DataFrame
    #: violations per rule (all actions), computed eagerly
    violations: dict[str, int] = field(default_factory=dict)
    failed_rules: list[str] = field(default_factory=list)


def canonical_columns(source: SourceSpec) -> list[str]:
    return [c.name for c in source.columns]


def clean_month(formatted: DataFrame, source: SourceSpec) -> CleanResult:
    """Apply ``source.quality`` to one month of the formatted table."""
    from pyspark.sql import functions as F

    cols = canonical_columns(source)
    df = formatted.withColumn(ROW_ID, F.concat_ws(":", F.col(FILE_COL), F.col(LINE_COL).cast("string")))
    rejected_parts: list[DataFrame] = []
    violations: dict[str, int] = {}
    failed: list[str] = []

    if source.quality.drop_exact_duplicates:
        from pyspark.sql import Window

        w = Window.partitionBy(*cols).orderBy(F.col(FILE_COL), F.col(LINE_COL))
        ranked = df.withColumn("__dup_rank", F.row_number().over(w))
        dups = ranked.filter(F.col("__dup_rank") > 1).drop("__dup_rank")
        rejected_parts.append(
            dups.select(*df.columns, F.lit(EXACT_DUPLICATE).alias("rule"), F.lit("identical to an earlier row").alias("error"))
        )
        df = ranked.filter(F.col("__dup_rank") == 1).drop("__dup_rank")

    for rule in source.quality.rules:
        if rule.deny is None:
            continue  # convenience forms are compiled by the quality system
        dc = parse_deny(rule.name, rule.deny)
        ids = violating_rows(df, dc, ROW_ID)
        flagged = df.join(ids, on=ROW_ID, how="left_semi")
        violations[rule.name] = flagged.count()
        if rule.action == "fail" and violations[rule.name]:
            failed.append(rule.name)
        if rule.action == "quarantine":
            rejected_parts.append(
                flagged.select(
                    *df.columns, F.lit(rule.name).alias("rule"), F.lit(f"violates: {rule.deny}").alias("error")
                )
            )
            df = df.join(ids, on=ROW_ID, how="left_anti")

    rejected = rejected_parts[0] if rejected_parts else None
    for part in rejected_parts[1:]:
        rejected = rejected.unionByName(part)
    if rejected is None:
        rejected = df.limit(0).select(*df.columns, F.lit("").alias("rule"), F.lit("").alias("error"))
    return CleanResult(
        trusted=df.drop(ROW_ID),
        rejected=rejected.drop(ROW_ID),
        violations=violations,
        failed_rules=failed,
    )
