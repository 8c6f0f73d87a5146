"""Table maintenance: compact small files and vacuum old versions of every Delta table in the lake.

Appends (the quarantine) and month rewrites leave many small Parquet files and unreferenced old ones.
The ``table_maintenance`` job (scheduled weekly, :data:`MAINTENANCE_CRON`) runs per table:

1. ``DeltaTable.optimize.compact()``: rewrites small files of a partition into fewer, larger ones (a new
   version with the same rows; it is not a materialization, so automation does not react to it).
2. ``DeltaTable.vacuum(retention_hours, keep_versions=...)``: deletes files no version younger than the
   retention needs, **except the files of every version a model was trained on**. Models record their
   inputs' Delta versions in ``<lake>/ml/<pipeline>/models/v*/lineage.json``; those versions stay readable
   (time travel) for as long as the model folder exists. A dry run checks first that no file of such a
   version would go; if one would, the table's vacuum is skipped and reported, never run.

A table that fails does not stop the others; the job fails at the end naming it. Per table the job
reports files before/after, versions, files removed and the versions kept, as an ``AssetObservation`` on
the table's asset (when the table is an asset) and in the job's log.
"""

import json
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import dagster as dg
import pyarrow as pa
from deltalake import DeltaTable

from lakehouse.factories.common import LakeResource
from lakehouse.io.lake import Lake

MAINTENANCE_JOB = "table_maintenance"
#: Sundays 03:00 UTC
MAINTENANCE_CRON = "0 3 * * 0"
#: Delta's own default: readers of snapshots up to a week old keep their files
DEFAULT_RETENTION_HOURS = 168
#: zones holding Delta tables (landing holds raw files, never touched)
DELTA_ZONES = ("formatted", "trusted", "quality", "exploitation", "ml")


class LineageError(RuntimeError):
    """A model's lineage.json cannot be read: vacuuming could delete the data it was trained on."""


def delta_tables(lake: Lake, zones: Iterable[str] = DELTA_ZONES) -> list[tuple[str, str]]:
    """Every ``(zone, table)`` under the lake root that is a Delta table."""
    found = []
    for zone in zones:
        found += [(zone, name) for name in lake.storage.folders(lake.storage.uri(zone)) if lake.exists(zone, name)]
    return found


def versions_in_use(lake: Lake) -> dict[tuple[str, str], set[int]]:
    """``(zone, table) -> {delta_version}`` of every model's inputs (``ml/*/models/v*/lineage.json``)."""
    in_use: dict[tuple[str, str], set[int]] = defaultdict(set)
    ml = lake.storage.uri("ml")
    paths = [u for u, _ in lake.storage.list(ml) if re.fullmatch(r"[^/]+/models/v\d{4,}/lineage\.json", u[len(ml) + 1:])]
    for path in paths:
        try:
            inputs = json.loads(lake.storage.read(path))["inputs"]
            for table, info in inputs.items():
                zone, name = table.split("/")
                if info.get("delta_version") is not None:
                    in_use[(zone, name)].add(int(info["delta_version"]))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise LineageError(f"{path}: cannot read the model's input versions ({type(exc).__name__}: {exc})") from exc
    return dict(in_use)


def _relative_files(table: DeltaTable) -> set[str]:
    return set(pa.table(table.get_add_actions(flatten=True))["path"].to_pylist())


def maintain_table(
    lake: Lake,
    zone: str,
    table: str,
    *,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    keep_versions: Iterable[int] = (),
    target_size: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Compact then vacuum ``zone/table``, keeping the files of ``keep_versions``; what was done.

    ``retention_hours`` below Delta's 168 h default is allowed (tests, a lake nobody reads concurrently);
    the versions in ``keep_versions`` are protected whatever the retention.
    """
    t0 = time.monotonic()
    uri = lake.table_uri(zone, table)
    options = lake.storage.delta_options

    def present(relative: str) -> bool:
        return lake.storage.exists(lake.storage.join(uri, *relative.split("/")))

    dt = lake.delta(zone, table)
    version_before, files_before = dt.version(), len(dt.file_uris())
    compacted = {"numFilesAdded": 0, "numFilesRemoved": 0}
    if not dry_run:
        compacted = dt.optimize.compact(target_size=target_size)
        dt = lake.delta(zone, table)
    keep = sorted({v for v in keep_versions if 0 <= v <= dt.version()})
    protected: set[str] = set()
    unreadable: list[int] = []
    for v in keep:
        try:
            protected |= _relative_files(DeltaTable(uri, version=v, storage_options=options))
        except Exception:  # noqa: BLE001 - the version's log is gone: nothing left to protect, report it
            unreadable.append(v)
    vacuum_args = {"retention_hours": retention_hours, "enforce_retention_duration": False, "keep_versions": keep or None}
    # vacuum lists every expired tombstone of the log, also files an earlier vacuum already deleted
    candidates = {f for f in dt.vacuum(dry_run=True, **vacuum_args) if present(f)}
    endangered = sorted(candidates & protected)
    removed: list[str] = []
    skipped = ""
    if endangered:
        skipped = f"vacuum skipped: it would delete {len(endangered)} file(s) of in-use version(s) {keep}"
    elif not dry_run and candidates:
        dt.vacuum(dry_run=False, **vacuum_args)
        removed = [f for f in candidates if not present(f)]
    still_readable = [
        v for v in keep
        if v not in unreadable and all(present(f) for f in _relative_files(DeltaTable(uri, version=v, storage_options=options)))
    ]
    return {
        "table": f"{zone}/{table}",
        "version_before": version_before,
        "version_after": lake.delta(zone, table).version(),
        "files_before": files_before,
        "files_after": len(lake.delta(zone, table).file_uris()),
        "files_compacted": int(compacted.get("numFilesRemoved", 0)),
        "files_written_by_compaction": int(compacted.get("numFilesAdded", 0)),
        "files_vacuumed": len(removed),
        "files_vacuumable": len(candidates),
        "retention_hours": retention_hours,
        "versions_kept_for_models": keep,
        "versions_kept_readable": still_readable,
        "versions_already_unreadable": unreadable,
        "skipped": skipped,
        "dry_run": dry_run,
        "seconds": round(time.monotonic() - t0, 2),
    }


def maintain_lake(
    lake: Lake,
    *,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    zones: Iterable[str] = DELTA_ZONES,
    target_size: int | None = None,
    dry_run: bool = False,
    log=None,
) -> tuple[list[dict[str, Any]], dict[str, BaseException]]:
    """:func:`maintain_table` for every Delta table; ``(results, failures by table)``."""
    in_use = versions_in_use(lake)  # raises before anything is touched when a lineage file is unreadable
    results, failures = [], {}
    tables = delta_tables(lake, zones)
    for i, (zone, table) in enumerate(tables, 1):
        try:
            result = maintain_table(
                lake,
                zone,
                table,
                retention_hours=retention_hours,
                keep_versions=in_use.get((zone, table), ()),
                target_size=target_size,
                dry_run=dry_run,
            )
        except Exception as exc:  # noqa: BLE001 - one table does not stop the others; reported at the end
            failures[f"{zone}/{table}"] = exc
            if log:
                log.error(f"maintenance {zone}/{table}: {type(exc).__name__}: {exc}")
            continue
        results.append(result)
        if log:
            log.info(
                f"maintenance {result['table']} ({i}/{len(tables)}): files {result['files_before']} -> "
                f"{result['files_after']}, v{result['version_before']} -> v{result['version_after']}, "
                f"vacuumed {result['files_vacuumed']}, kept for models {result['versions_kept_for_models']}"
                + (f"; {result['skipped']}" if result["skipped"] else "")
            )
    return results, failures


class MaintenanceConfig(dg.Config):
    """Options of one maintenance run (editable in the launchpad)."""

    retention_hours: int = DEFAULT_RETENTION_HOURS
    zones: list[str] = list(DELTA_ZONES)
    #: target file size of compaction in MB (Delta's default, 100 MB, when unset)
    target_size_mb: int | None = None
    dry_run: bool = False


def build_maintenance(
    asset_keys: Iterable[dg.AssetKey], *, tags: dict[str, str] | None = None
) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    """The ``table_maintenance`` job and its weekly schedule; observations go to ``asset_keys`` only, ``tags``
    go on its runs."""
    known = set(asset_keys)

    @dg.op(
        name="maintain_delta_tables",
        description="Compact small files and vacuum old versions of every Delta table, keeping the "
        "versions models were trained on.",
    )
    def maintain_delta_tables(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: LakeResource) -> None:
        results, failures = maintain_lake(
            lake.lake,
            retention_hours=config.retention_hours,
            zones=config.zones,
            target_size=config.target_size_mb * 1024 * 1024 if config.target_size_mb else None,
            dry_run=config.dry_run,
            log=context.log,
        )
        for r in results:
            key = dg.AssetKey(r["table"].split("/"))
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
        context.add_output_metadata({"tables": len(results), "summary": dg.MetadataValue.md(header + rows)})
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
