"""Landing assets: one per source, ``landing/<source>``, partitioned by month.

Materializing a month runs the source's collector and lands what it fetched, each file exactly once,
with the month's manifest (``_manifest.json``) next to the raw files.
"""

import dagster as dg

from lakehouse.collectors import collect
from lakehouse.factories.common import LakeResource, escape_md, key, monthly, report, run_months, spec_version
from lakehouse.specs.models import Project, SourceSpec


def build_landing_asset(project: Project, source: SourceSpec) -> dg.AssetsDefinition:
    """The landing asset of ``source`` (each call builds exactly one asset)."""

    @dg.asset(
        key=key("landing", source.name),
        group_name="landing",
        description=f"Raw files of `{source.name}` as received ({source.collector.type} collector), "
        f"with a manifest per month.\n\n{escape_md(source.description)}",
        partitions_def=monthly(project, source),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"python", source.collector.type.replace("_", "")},
        tags={"zone": "landing", "collector": source.collector.type},
        code_version=spec_version(source),
        metadata={"collector": source.collector.type},
    )
    def _landing(context: dg.AssetExecutionContext, lake: LakeResource):
        root = lake.lake

        def step(month: str) -> dict:
            month_dir = root.landing_month(source.name, month)
            result = collect(project, source, month, month_dir)
            for name, why in result.refused:
                context.log.warning(f"landing/{source.name} {month}: inbox entry {name!r} refused: {why}")
            current = [e for e in result.manifest if e.status == "landed"]
            return {
                "files_landed": len(result.landed),
                "files_already_landed": len(result.skipped),
                "files_refused": len(result.refused),
                "files": len(current),
                "rows": sum(e.rows for e in current),
                "bytes": sum(e.bytes for e in current),
                "path": dg.MetadataValue.path(month_dir.uri),
            }

        yield from report(context, run_months(context, step, f"landing/{source.name}"))

    return _landing
