"""Asset checks shared by the zone factories: quality verdicts and Pandera schemas → Dagster.

Checks are declared with ``check_specs`` on each zone asset and their results returned in the
``MaterializeResult``. A step that covers several months (a backfilled range) reports one result per
check: passed only if every month passed, with a per-month table in its metadata (the per-month
figures are also in ``quality/metrics``).
"""


from collections.abc import Callable, Sequence

import dagster as dg
from pyspark.sql import SparkSession
from pyspark.sql.types import StructType

from lakehouse.io.lake import Lake
from lakehouse.quality import schemas
from lakehouse.quality.metrics import CheckEval
from lakehouse.specs.models import ViewSpec

PANDERA = "pandera_schema"


def pandera_spec(asset_key: dg.AssetKey, *, blocking: bool) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        PANDERA,
        asset=asset_key,
        blocking=blocking,
        description="Pandera schema derived from the configs: column types, nullability, ranges/allowed values "
        "the rules guarantee, key uniqueness (pandas backend on up to "
        f"{schemas.LOCAL_ROWS:,} rows, a month at a time for a key; pandera.pyspark on larger data or on failure). "
        "Metadata: failing rows per check, examples.",
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
    shuffling the whole range (7-9 s for 12.6M readings, 48 s for 50M), a month at a time locally costs a
    read of each month (8 s at 50M). A contract without a key costs pandera.pyspark only column scans,
    which Spark runs over the range at once (3 s at 50M, where reading 48 months one by one took 8 s)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if months is not None and by_month:
        per_month = lake.month_rows(zone, table, months)
        chunks: list[list[str] | None] = [[m] for m in months] or [[]]
        sizes = [None if per_month is None else sum(per_month[m] for m in chunk) for chunk in chunks]
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
        spark, lake, "exploitation", view.name, chosen, lambda schema: schemas.view_contract(view, schema),
        by_month=bool(view.key),
    )


def pandera_result(report: schemas.Report) -> dg.AssetCheckResult:
    failures = [
        {"column": f.column, "check": f.check, "failing_rows": f.failures, "examples": f.examples, "per_month": f.per_month}
        for f in report.failures
    ]
    return dg.AssetCheckResult(
        check_name=PANDERA,
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(report.failures)} failed check(s) over {report.rows} rows" if failures else f"{report.rows} rows valid",
        metadata={
            "rows": report.rows,
            "failed_checks": len(report.failures),
            "failing_rows": report.failed_rows,
            "summary": dg.MetadataValue.md(report.markdown()),
            "failures": dg.MetadataValue.json(failures),
        },
    )


def verdict_results(per_month: dict[str, list[CheckEval]]) -> list[dg.AssetCheckResult]:
    """One result per check over the months of the step (failed if any month failed)."""
    names: list[str] = []
    for evals in per_month.values():
        names += [e.name for e in evals if e.name not in names]
    results = []
    for name in names:
        evals = {m: e for m, es in per_month.items() for e in es if e.name == name}
        failed = {m: e for m, e in evals.items() if not e.passed}
        any_eval = next(iter(evals.values()))
        severity = dg.AssetCheckSeverity.ERROR if any(e.severity == "ERROR" for e in failed.values()) else dg.AssetCheckSeverity.WARN
        meta: dict = {"months": len(evals), "months_failed": len(failed)}
        violations = [e.violations for e in evals.values() if e.violations is not None]
        if violations:
            meta["violations"] = int(sum(violations))
            rates = [e.rate for e in evals.values() if e.rate is not None]
            meta["max_violation_rate"] = float(max(rates)) if rates else 0.0
        if len(evals) == 1:
            (month, e), = evals.items()
            meta["month"] = month
            description = e.description
        else:
            rows = "".join(
                f"| {m} | {'' if e.violations is None else e.violations} | "
                f"{'' if e.rate is None else f'{e.rate:.3%}'} | {'pass' if e.passed else e.severity} | {e.description} |\n"
                for m, e in sorted(evals.items())
            )
            meta["per_month"] = dg.MetadataValue.md("| month | violations | rate | result | detail |\n|---|---:|---:|---|---|\n" + rows)
            description = (f"failed in {len(failed)} of {len(evals)} months: {', '.join(sorted(failed))}"
                           if failed else f"passed in all {len(evals)} months")
        results.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=not failed,
                severity=severity if failed else (dg.AssetCheckSeverity.ERROR if any_eval.severity == "ERROR" else dg.AssetCheckSeverity.WARN),
                description=description[:1000],
                metadata=meta,
            )
        )
    return results
