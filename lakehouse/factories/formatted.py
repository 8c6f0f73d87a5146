"""Formatted assets: ``formatted/<source>``, the source's canonical relational table in Delta.

Spark parses the month's landed files, casts every column to its declared type and writes the month in
one Delta transaction; rows that cannot be read go to the quarantine with file, line and cause. Clean
files take the fast lane (:mod:`lakehouse.io.formatting`: Spark's Python workers parse, cast and
write Parquet), the others Spark's casts; both land in the same commit. A run formats up to
``months_per_plan`` months in one Spark plan and still commits each month on its own; the quarantine of
the plan's committed months is then published in one quarantine commit and one metrics commit.
"""

from typing import Any

import dagster as dg
import pyarrow as pa
from pyspark.sql import SparkSession

from lakehouse.collectors.landing import Month, landed_entries, manifest_version, spanning_entries
from lakehouse.factories.checks import (
    merge_results,
    pandera_results,
    pandera_spec,
    rejected_rate_result,
    rejected_rate_spec,
    validate_written,
)
from lakehouse.factories.common import LakeResource, SparkResource, escape_md, key, monthly, report, run_months, spec_version
from lakehouse.factories.schema import column_schema
from lakehouse.io.formatting import FormattedMonth, Rejects, data_schema, format_months
from lakehouse.io.lake import Lake
from lakehouse.quality import metrics, quarantine, schemas
from lakehouse.specs.models import Project, SourceSpec


def _month_files(root: Lake, source: SourceSpec, month: str) -> tuple[list[str], int, dict[str, int]]:
    """The files ``month`` is formatted from, the rows landed for it and the files' sizes.

    Exactly the files the manifest lists: a file a crashed landing left unlisted is not read. For a source
    whose deliveries span months, also the files landed under other months that hold rows of this one
    (then the rows read count, not the rows landed: 0)."""
    landed = landed_entries(root.landing_month(source.name, month))
    landed_rows = 0 if source.spans_months else sum(e.rows or 0 for _, e in landed)
    listed = root.landing_uri(source.name, month)
    if source.spans_months:
        landed += spanning_entries(Month(root.storage, root.table_uri("landing", source.name)), month)
        listed = root.table_uri("landing", source.name)
    present = dict(root.storage.list(listed))
    missing = [e.name for uri, e in landed if uri not in present]
    if missing:
        raise FileNotFoundError(f"landing/{source.name}/{month}: listed in the manifest but missing: {missing}")
    return [uri for uri, _ in landed], landed_rows, present


def _landed_version(root: Lake, source: SourceSpec, month: str) -> Any:
    """What the month is formatted from: its manifest's version (every month's, for deliveries that span
    months)."""
    if source.spans_months:
        folder = Month(root.storage, root.table_uri("landing", source.name))
        return tuple((m.name, manifest_version(m)) for m in folder.months())
    return manifest_version(root.landing_month(source.name, month))


def _format_and_commit(
    root: Lake, session: SparkSession, source: SourceSpec, months: list[str], *, run_id: str, schema: pa.Schema, span: tuple
) -> dict[str, tuple[dict[str, Any], dg.AssetCheckResult] | Exception]:
    """Format ``months`` in one Spark plan, commit each month on its own, then publish the quarantine of
    the committed months together (:func:`_publish`): per month, its figures and its rejected-rate check,
    or the exception that month failed with."""
    path = root.table_uri("formatted", source.name)
    out: dict[str, tuple[dict[str, Any], dg.AssetCheckResult] | Exception] = {}
    found: dict[str, tuple[list[str], int, dict[str, int]]] = {}
    for month in months:
        try:
            found[month] = _month_files(root, source, month)
        except Exception as exc:  # noqa: BLE001 - this month fails alone, the others are formatted
            out[month] = exc
    if not found:
        return out
    batches = {m: metrics.Batch.new(dataset=source.name, stage="formatted", month=m, run_id=run_id) for m in found}
    rejects = {m: Rejects(root.table_uri(*quarantine.TABLE), quarantine.staged_rows(b)) for m, b in batches.items()}
    sizes = {uri: size for _, _, present in found.values() for uri, size in present.items()}
    # clean files: parsed, cast and staged as Parquet by Spark's Python workers; the rest by Spark's casts,
    # whose tasks also stage the rejected rows for the quarantine; each lane one job for all the months
    files = {m: landed for m, (landed, _, _) in found.items()}
    formatted = format_months(session, files, source, root.storage, path, schema, rejects=rejects, months=span, sizes=sizes)
    committed: dict[str, tuple[FormattedMonth, int]] = {}
    for month, month_out in formatted.items():
        try:
            committed[month] = month_out, root.commit_month("formatted", source.name, month, month_out.staged, schema)
        except Exception as exc:  # noqa: BLE001 - one month's commit failing does not undo the others'
            out[month] = exc
    return {**out, **_publish(root, source, committed, batches, {m: found[m][1] for m in committed})}


def _publish(
    root: Lake,
    source: SourceSpec,
    committed: dict[str, tuple[FormattedMonth, int]],
    batches: dict[str, metrics.Batch],
    landed_rows: dict[str, int],
) -> dict[str, tuple[dict[str, Any], dg.AssetCheckResult] | Exception]:
    """Publish the quarantine of the months whose data ``committed`` (month -> its output and Delta version):
    their rejected rows in one quarantine commit, their batches in one metrics commit (each published even
    when empty: it supersedes the rows an earlier run of the month quarantined). Each month's figures and
    rejected-rate check; when publishing fails, every one of these months fails with it (their data stands
    unpublished: a rerun of the months publishes them)."""
    if not committed:
        return {}
    try:
        quarantine.publish_staged(root, {batches[m]: out.quarantined for m, (out, _) in committed.items()})
    except Exception as exc:  # noqa: BLE001 - reported per month by run_months
        return dict.fromkeys(committed, exc)
    return {m: _figures(root, source, out, version, landed_rows[m]) for m, (out, version) in committed.items()}


def _figures(
    root: Lake, source: SourceSpec, out: FormattedMonth, version: int, landed_rows: int
) -> tuple[dict[str, Any], dg.AssetCheckResult]:
    """A committed and published month's figures and its rejected-rate check."""
    rate = rejected_rate_result(
        rejected=out.rejected,
        total=max(out.rows + out.rejected, landed_rows),
        kept=out.rows,
        limit=source.max_rejected_rate,
    )
    figures = {
        "rows": out.rows,
        "rows_quarantined": out.rejected,
        "files_fast_lane": out.fast,
        "delta_version": version,
        "path": dg.MetadataValue.path(root.table_uri("formatted", source.name)),
    }
    return figures, rate


def build_formatted_asset(project: Project, source: SourceSpec) -> dg.AssetsDefinition:
    """The formatted asset of ``source`` (each call builds exactly one asset)."""

    asset_key = key("formatted", source.name)
    months_def = monthly(project, source)

    @dg.asset(
        key=asset_key,
        deps=[key("landing", source.name)],
        group_name="formatted",
        description=f"`{source.name}` in its canonical schema, one Delta table partitioned by month.\n\n"
        f"{escape_md(source.description)}",
        partitions_def=months_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"spark", "delta"},
        tags={"zone": "formatted"},
        code_version=spec_version(source),
        metadata={"dagster/column_schema": column_schema(source.columns)},
        check_specs=[
            rejected_rate_spec(asset_key, months_def, source.max_rejected_rate, "formatted"),
            pandera_spec(asset_key, months_def, blocking=False),
        ],
    )
    def _formatted(context: dg.AssetExecutionContext, lake: LakeResource, spark: SparkResource):
        root, session = lake.lake, spark.session()
        schema = data_schema(source)
        span = (project.months_of(source).start, project.months_of(source).end)
        rates: dict[str, dg.AssetCheckResult] = {}

        def plan(months: list[str]) -> dict[str, dict[str, Any] | Exception]:
            out = _format_and_commit(root, session, source, months, run_id=context.run.run_id, schema=schema, span=span)
            figures: dict[str, dict[str, Any] | Exception] = {}
            for month, got in out.items():
                if isinstance(got, Exception):
                    figures[month] = got
                else:
                    figures[month], rates[month] = got
            return figures

        # months are independent (each parses its own landed files), so a batch of them is one Spark plan;
        # a source whose deliveries span months is formatted a month at a time (see lakehouse.io.formatting)
        done = run_months(
            context,
            None,
            f"formatted/{source.name}",
            workers=project.lakehouse.month_workers,
            inputs=lambda month: _landed_version(root, source, month),
            plan=plan,
            months_per_plan=1 if source.spans_months else project.lakehouse.months_per_plan,
        )
        months = list(done.results)
        checks = {m: [rates[m]] for m in months}
        if months:
            report_ = validate_written(
                session, root, "formatted", source.name, months, schemas.source_contract(source, "formatted")
            )
            checks = merge_results(checks, pandera_results(report_, months, {m: done.results[m]["rows"] for m in months}))
        yield from report(context, done, checks=checks)

    return _formatted
