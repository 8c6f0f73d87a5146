"""Formatted assets: ``formatted/<source>``, the source's canonical relational table in Delta.

Spark parses the month's landed files, casts every column to its declared type and writes the month in
one Delta transaction; rows that cannot be read go to the quarantine with file, line and cause. Clean
files take the fast lane (:mod:`lakehouse.transforms.executors`: Spark's Python workers parse, cast and
write Parquet), the others Spark's casts; both land in the same commit.
"""


import dagster as dg

from lakehouse.collectors.landing import landed_files, spanning_files
from lakehouse.factories.checks import pandera_result, pandera_spec, validate_written
from lakehouse.factories.common import LakeResource, SparkResource, key, monthly, months_of, run_months
from lakehouse.factories.schema import column_schema
from lakehouse.quality import quarantine, schemas
from lakehouse.specs.models import Project, SourceSpec
from lakehouse.transforms.executors import data_schema, format_month


def build_formatted_asset(project: Project, source: SourceSpec) -> dg.AssetsDefinition:
    """The formatted asset of ``source`` (each call builds exactly one asset)."""

    @dg.asset(
        key=key("formatted", source.name),
        deps=[key("landing", source.name)],
        group_name="formatted",
        description=f"**{source.name}** in its canonical schema, one Delta table partitioned by month.\n\n"
        f"{source.description}",
        partitions_def=monthly(project, source),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"spark", "delta"},
        tags={"zone": "formatted"},
        metadata={"dagster/column_schema": column_schema(source.columns)},
        check_specs=[pandera_spec(key("formatted", source.name), blocking=False)],
    )
    def _formatted(context: dg.AssetExecutionContext, lake: LakeResource, spark: SparkResource) -> dg.MaterializeResult:
        root, session = lake.lake, spark.session()
        path = root.table_path("formatted", source.name)

        schema = data_schema(session, source)
        span = (project.months_of(source).start, project.months_of(source).end)

        def step(month: str) -> dict:
            # exactly the files the manifest lists: a file a crashed landing left unlisted is not read
            files = landed_files(root.landing_dir(source.name, month))
            if source.spans_months:  # and files landed under other months that hold rows of this one
                files += spanning_files(root.table_path("landing", source.name), month)
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"landing/{source.name}/{month}: listed in the manifest but missing: {missing}")
            # clean files: parsed, cast and staged as Parquet by Spark's Python workers; the rest by Spark's casts
            staged, bad, fast = format_month(session, [str(f) for f in files], source, month, str(path), schema, months=span)
            rejected = quarantine.quarantine_table(bad, dataset=source.name, stage="formatted", run_id=context.run_id, month=month)
            version = root.commit_month("formatted", source.name, month, staged, schema)
            # published even when empty: it supersedes the rows an earlier run of the month quarantined
            quarantine.write(root, rejected, dataset=source.name, stage="formatted", month=month, run_id=context.run_id)
            return {
                "rows": sum(s["rows"] for s in staged),
                "rows_quarantined": rejected.num_rows,
                "files_fast_lane": fast,
                "delta_version": version,
                "path": dg.MetadataValue.path(str(path)),
            }

        # months are independent (each parses its own landed files)
        meta = run_months(context, step, f"formatted/{source.name}", workers=project.lakehouse.month_workers)
        report = validate_written(session, root, "formatted", source.name, months_of(context), schemas.source_contract(source, "formatted"))
        return dg.MaterializeResult(
            metadata={**meta, "dagster/row_count": meta.get("rows", meta.get("total_rows", 0))},
            check_results=[pandera_result(report)],
        )

    return _formatted
