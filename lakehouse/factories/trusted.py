"""Trusted assets: ``trusted/<source>``, the formatted table after the source's quality rules and cleaning.

Rejected rows go to ``quality/quarantine`` with the rule they broke; a ``fail`` rule with violations
fails the month (downstream does not run on it).
"""


import dagster as dg

from lakehouse.factories.common import LakeResource, SparkResource, key, monthly, run_months
from lakehouse.factories.schema import column_schema
from lakehouse.quality import quarantine
from lakehouse.quality.cleaning import canonical_columns, clean_month
from lakehouse.specs.models import Project, SourceSpec


def build_trusted_asset(project: Project, source: SourceSpec) -> dg.AssetsDefinition:
    """The trusted asset of ``source`` (each call builds exactly one asset)."""
    rules = "\n".join(f"- `{r.name}` ({r.action}): {r.description or r.deny or ''}" for r in source.quality.rules)

    @dg.asset(
        key=key("trusted", source.name),
        deps=[key("formatted", source.name)],
        group_name="trusted",
        description=f"**{source.name}** after quality rules and cleaning; rejected rows are in "
        f"`quality/quarantine`.\n\nRules:\n{rules or '- none declared'}",
        partitions_def=monthly(project),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"spark", "delta"},
        tags={"zone": "trusted"},
        metadata={"dagster/column_schema": column_schema(source.columns)},
    )
    def _trusted(context: dg.AssetExecutionContext, lake: LakeResource, spark: SparkResource) -> dg.MaterializeResult:
        root, session = lake.lake, spark.session()
        path = root.table_path("trusted", source.name)

        def step(month: str) -> dict:
            formatted = root.read_spark(session, "formatted", source.name, months=[month])
            result = clean_month(formatted, source)
            if result.failed_rules:
                raise dg.Failure(
                    f"trusted/{source.name} {month}: blocking rule(s) violated: "
                    + ", ".join(f"{r} ({result.violations[r]} rows)" for r in result.failed_rules)
                )
            data = result.trusted.toArrow()
            rejected = quarantine.quarantine_rows(
                result.rejected,
                dataset=source.name,
                stage="trusted",
                run_id=context.run_id,
                month=month,
                record_columns=canonical_columns(source),
            ).toArrow()
            version = root.overwrite_month("trusted", source.name, data, month)
            quarantine.write(root, rejected, dataset=source.name, stage="trusted", month=month)
            return {
                "rows": data.num_rows,
                "rows_quarantined": rejected.num_rows,
                **{f"violations_{k}": v for k, v in result.violations.items()},
                "delta_version": version,
                "path": dg.MetadataValue.path(str(path)),
            }

        meta = run_months(context, step, f"trusted/{source.name}")
        return dg.MaterializeResult(metadata={**meta, "dagster/row_count": meta.get("rows", meta.get("total_rows", 0))})

    return _trusted
