"""Asset checks shared by the zone factories: quality verdicts, rejected rows and Pandera schemas → Dagster.

Every check of a zone table is partitioned like the table (``AssetCheckSpec(partitions_def=...)``): a step
over a backfilled range reports one result per check *and month*
(:func:`lakehouse.factories.common.report`), each tied to that month's materialization. Severities are the
same everywhere: a check that found what it looks for and may not block fails with ``WARN`` (a ``warn``
rule with violations, drift), a blocking check fails with ``ERROR``.
"""

import json
from collections.abc import Callable, Mapping, Sequence

import dagster as dg
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from lakehouse.factories.common import month_check_spec
from lakehouse.io.lake import Lake
from lakehouse.quality import schemas
from lakehouse.quality.metrics import CheckEval
from lakehouse.specs.models import ViewSpec

PANDERA = "pandera_schema"
REJECTED_RATE = "rejected_rate"


def pandera_spec(asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition, *, blocking: bool) -> dg.AssetCheckSpec:
    return month_check_spec(
        PANDERA,
        asset_key,
        partitions_def,
        blocking=blocking,
        description="Pandera schema derived from the configs: column types, nullability, ranges/allowed values "
        "the rules guarantee, key uniqueness within the month (pandas backend on up to "
        f"{schemas.LOCAL_ROWS:,} rows, a month at a time for a key; pandera.pyspark on larger data or on failure). "
        "Metadata: the month's failing rows per check, with an example.",
    )


def rejected_rate_spec(
    asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition, limit: float, stage: str
) -> dg.AssetCheckSpec:
    what = (
        "rows quarantined while formatting / rows landed"
        if stage == "formatted"
        else "rows quarantined by the rules and cleaning / rows in"
    )
    return month_check_spec(
        REJECTED_RATE,
        asset_key,
        partitions_def,
        blocking=True,
        description=f"Blocking: {what} must stay at or below {limit:.2%} (the source's `max_rejected_rate`), and a "
        "month whose input held rows must keep at least one.",
    )


def rejected_rate_result(*, rejected: int, total: int, kept: int, limit: float) -> dg.AssetCheckResult:
    """The month's rejected share against ``limit``; a month that had rows and kept none always fails."""
    rate = rejected / total if total else 0.0
    passed = rate <= limit and not (total > 0 and kept == 0)
    if total > 0 and kept == 0:
        description = f"all {total} row(s) rejected, none kept"
    else:
        description = f"{rejected} of {total} row(s) rejected ({rate:.2%}, allowed {limit:.2%})"
    return dg.AssetCheckResult(
        check_name=REJECTED_RATE,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"rejected": rejected, "rows_in": total, "rate": float(rate), "allowed": float(limit)},
    )


def _validate(
    spark: SparkSession,
    lake: Lake,
    zone: str,
    table: str,
    months: Sequence[str] | None,
    contract_of: Callable[[StructType], schemas.Contract],
    *,
    by_month: bool,
) -> schemas.Report:
    """Validate ``months`` of ``zone/table`` (None: the whole, unpartitioned table) as stored.

    Small data is checked with pandera's pandas backend: with ``by_month`` each month of at most
    :data:`~lakehouse.quality.schemas.LOCAL_ROWS` rows on its own, else the months together when they are
    that small. What it cannot vouch for, and what is larger, goes to pandera.pyspark in one validation,
    which counts the failing rows. ``contract_of`` builds the contract from the table's Spark schema (a
    view's contract is derived from it).

    ``by_month`` is for contracts with a key that holds within a month: pandera.pyspark checks a key by
    shuffling the whole range, where consecutive months that fit one local validation cost one read. A contract
    without a key costs pandera.pyspark only column scans, which Spark runs over the range at once, cheaper
    than reading the months one by one."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if months is not None and by_month:
        per_month = lake.month_rows(zone, table, months)
        chunks: list[list[str] | None] = [[m] for m in months] or [[]]
        if per_month is not None:
            # small months read and checked together (the key holds within each month: the month is part of
            # it), as many as fit in one local validation
            packed: list[list[str]] = []
            for m in months:
                if packed and sum(per_month[x] for x in packed[-1]) + per_month[m] <= schemas.LOCAL_ROWS:
                    packed[-1].append(m)
                else:
                    packed.append([m])
            chunks = list(packed) or [[]]
        sizes = [None if per_month is None else sum(per_month[m] for m in chunk or ()) for chunk in chunks]
    else:
        chunks, sizes = [None if months is None else list(months)], [lake.row_count(zone, table, months)]
    vouched, pending = [], []
    for chunk, rows in zip(chunks, sizes, strict=True):
        if rows is not None and rows <= schemas.LOCAL_ROWS:
            data = lake.read_arrow(zone, table, months=chunk)
            report = schemas.validate_local(data, contract_of(from_arrow_schema(data.schema)))
            if report is not None:
                vouched.append(report)
                continue
        pending.append(chunk)
    if not pending:
        return schemas.Report(vouched[0].contract, sum(r.rows for r in vouched), [])
    chosen = None if pending == [None] else [m for chunk in pending for m in chunk or []]
    df = lake.read_spark(spark, zone, table, months=chosen)
    report = schemas.validate(df, contract_of(df.schema))
    report.rows += sum(r.rows for r in vouched)
    return report


def validate_written(
    spark: SparkSession, lake: Lake, zone: str, table: str, months: Sequence[str], contract: schemas.Contract
) -> schemas.Report:
    """Validate the months just written, read back from Delta (the table as stored, not as computed):
    small months with pandera's pandas backend, the rest with pandera.pyspark (:func:`_validate`)."""
    by_month = schemas.MONTH in contract.key
    return _validate(spark, lake, zone, table, months, lambda _schema: contract, by_month=by_month)


def validate_view(spark: SparkSession, lake: Lake, view: ViewSpec, months: Sequence[str]) -> schemas.Report:
    """Validate an exploitation view as written: its months (a monthly view's key is checked within each
    month), or the whole table for merge (unpartitioned) views, as :func:`validate_written`."""
    chosen = list(months) if lake.partitioned("exploitation", view.name) else None
    return _validate(
        spark,
        lake,
        "exploitation",
        view.name,
        chosen,
        lambda schema: schemas.view_contract(view, schema),
        by_month=bool(view.key),
    )


FAILURES_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("column", "string"),
        dg.TableColumn("check", "string"),
        dg.TableColumn("failing_rows", "int"),
        dg.TableColumn("example", "string"),
    ]
)


def _month_failures(report: schemas.Report, month: str | None) -> list[tuple[schemas.Failure, int | None]]:
    """The report's failures in ``month`` with their failing rows there (schema-level failures, without
    per-month counts, hit every month; ``month`` None: the whole report)."""
    out = []
    for f in report.failures:
        if month is None or not f.per_month:
            out.append((f, f.failures))
        elif f.per_month.get(month, 0):
            out.append((f, f.per_month[month]))
    return out


def pandera_results(
    report: schemas.Report, months: Sequence[str], rows: Mapping[str, int]
) -> dict[str, list[dg.AssetCheckResult]]:
    """One ``pandera_schema`` result per month from a report over several months (``rows``: each month's rows)."""
    out = {}
    for month in months:
        failures = _month_failures(report, month)
        n = rows.get(month, report.rows)
        table = [
            dg.TableRecord(
                {
                    "column": f.column,
                    "check": f.check,
                    "failing_rows": -1 if k is None else int(k),
                    "example": json.dumps(f.examples[0], default=str)[:300] if f.examples else "",
                }
            )
            for f, k in failures
        ]
        out[month] = [
            dg.AssetCheckResult(
                check_name=PANDERA,
                passed=not failures,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"{len(failures)} failed check(s) in {n} rows" if failures else f"{n} rows valid",
                metadata={
                    "rows": n,
                    "failing_rows": sum(k or 0 for _, k in failures),
                    "failures": dg.MetadataValue.table(table, schema=FAILURES_SCHEMA),
                },
            )
        ]
    return out


def failing_rows_in(report: schemas.Report, month: str) -> int:
    """Failing rows of one month (schema-level failures, without per-month counts, count every row)."""
    return sum(k or 0 for _, k in _month_failures(report, month))


def verdict_results(per_month: Mapping[str, list[CheckEval]]) -> dict[str, list[dg.AssetCheckResult]]:
    """One result per check and month, from the months' verdicts (:func:`lakehouse.quality.metrics.evaluate`)."""
    out: dict[str, list[dg.AssetCheckResult]] = {}
    for month, evals in per_month.items():
        results = []
        for e in evals:
            meta: dict = {}
            if e.violations is not None:
                meta["violations"] = int(e.violations)
            if e.rate is not None:
                meta["rate"] = float(e.rate)
            results.append(
                dg.AssetCheckResult(
                    check_name=e.name,
                    passed=e.passed,
                    severity=dg.AssetCheckSeverity.ERROR if e.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
                    description=e.description[:1000],
                    metadata=meta,
                )
            )
        out[month] = results
    return out


def merge_results(*parts: Mapping[str, Sequence[dg.AssetCheckResult]]) -> dict[str, list[dg.AssetCheckResult]]:
    """Per-month check results of several kinds, month by month."""
    out: dict[str, list[dg.AssetCheckResult]] = {}
    for part in parts:
        for month, results in part.items():
            out.setdefault(month, []).extend(results)
    return out
