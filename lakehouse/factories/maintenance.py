"""The ``table_maintenance`` job and its weekly schedule (:data:`MAINTENANCE_CRON`): sweep what crashed
writers staged, compact and vacuum every Delta table (:mod:`lakehouse.io.maintenance`), keeping the versions
models were trained on.

A table that fails does not stop the others; the job fails at the end naming it. Per table the job
reports files before/after, versions, files removed and the versions kept, as an ``AssetObservation`` on
the table's asset (when the table is an asset) and in the job's log.
"""

from collections.abc import Iterable

import dagster as dg

from lakehouse.factories.common import LakeResource
from lakehouse.io.maintenance import DEFAULT_RETENTION_HOURS, DELTA_ZONES, maintain_lake, sweep_staged
from lakehouse.specs.tables import TableRef

MAINTENANCE_JOB = "table_maintenance"
#: Sundays 03:00 UTC
MAINTENANCE_CRON = "0 3 * * 0"


class MaintenanceConfig(dg.Config):
    """Options of one maintenance run (editable in the launchpad)."""

    retention_hours: int = DEFAULT_RETENTION_HOURS
    zones: list[str] = list(DELTA_ZONES)
    #: target file size of compaction in MB (Delta's default, 100 MB, when unset)
    target_size_mb: int | None = None
    dry_run: bool = False
    #: staged files no commit lists are swept once this old (lakehouse.yaml ``limits.staged_orphan_age_h`` when unset)
    staged_orphan_age_h: float | None = None


def build_maintenance(
    asset_keys: Iterable[dg.AssetKey], *, tags: dict[str, str] | None = None, staged_orphan_age_h: float = 24.0
) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    """The ``table_maintenance`` job and its weekly schedule; observations go to ``asset_keys`` only, ``tags``
    go on its runs, staged files no commit lists are swept once ``staged_orphan_age_h`` old."""
    known = set(asset_keys)

    @dg.op(
        name="maintain_delta_tables",
        description="Compact small files and vacuum old versions of every Delta table, keeping the "
        "versions models were trained on.",
    )
    def maintain_delta_tables(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource) -> None:
        age = config.staged_orphan_age_h if config.staged_orphan_age_h is not None else staged_orphan_age_h
        swept = sweep_staged(lake.lake, older_than_hours=age, zones=config.zones, dry_run=config.dry_run)
        for uri in swept:
            context.log.info(
                f"maintenance: {'would sweep' if config.dry_run else 'swept'} staged file {uri} (older than {age:g} h, in no commit)"
            )
        results, failures = maintain_lake(
            lake.lake,
            retention_hours=config.retention_hours,
            zones=config.zones,
            target_size=config.target_size_mb * 1024 * 1024 if config.target_size_mb else None,
            dry_run=config.dry_run,
            log=context.log,
        )
        for r in results:
            key = dg.AssetKey(list(TableRef.of(r["table"])))
            if key in known:
                context.log_event(
                    dg.AssetObservation(
                        asset_key=key,
                        description="table maintenance",
                        metadata={k: v for k, v in r.items() if k != "table"},
                    )
                )
        header = "| table | files before | after | vacuumed | kept versions | note |\n|---|---|---|---|---|---|\n"
        rows = "".join(
            f"| {r['table']} | {r['files_before']} | {r['files_after']} | {r['files_vacuumed']} | "
            f"{r['versions_kept_for_models']} | {r['skipped']} |\n"
            for r in results
        )
        context.add_output_metadata(
            {"tables": len(results), "staged_files_swept": len(swept), "summary": dg.MetadataValue.md(header + rows)}
        )
        if failures:
            raise dg.Failure(
                description=f"maintenance failed for {len(failures)} table(s): "
                + "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in failures.items()),
                metadata={"failed_tables": sorted(failures)},
            )

    @dg.job(name=MAINTENANCE_JOB, executor_def=dg.in_process_executor, tags={"lakehouse/kind": "maintenance", **(tags or {})})
    def table_maintenance():
        maintain_delta_tables()

    schedule = dg.ScheduleDefinition(
        name=f"{MAINTENANCE_JOB}_weekly",
        job=table_maintenance,
        cron_schedule=MAINTENANCE_CRON,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly compaction and vacuum of every Delta table (keeps versions models were trained on).",
    )
    return table_maintenance, schedule
