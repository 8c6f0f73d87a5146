"""Table maintenance: compact small files and vacuum old versions of every Delta table in the lake.

Appends (the quarantine) and month rewrites leave many small Parquet files and unreferenced old ones.
:func:`maintain_lake` (the ``table_maintenance`` job of :mod:`lakehouse.factories.maintenance`) runs per table:

1. ``DeltaTable.optimize.compact()``: rewrites small files of a partition into fewer, larger ones (a new
   version with the same rows; it is not a materialization, so automation does not react to it).
2. ``DeltaTable.vacuum(retention_hours, keep_versions=...)``: deletes files no version younger than the
   retention needs, **except the files of every version a model was trained on**. Models record their
   inputs' Delta versions in ``<lake>/ml/<pipeline>/models/v*/lineage.json``; those versions stay readable
   (time travel) for as long as the model folder exists. A dry run checks first that no file of such a
   version would go; if one would, the table's vacuum is skipped and reported, never run. The vacuum is
   *full*: it also deletes files older than the retention that no commit ever listed (Parquet a crashed
   job staged into a month folder, see :meth:`lakehouse.io.lake.Lake.commit_month`).

Before that, :func:`sweep_staged` deletes what crashed writers left, once older than
``limits.staged_orphan_age_h`` (younger files may belong to a commit in flight): Parquet under a table's
folder that no version of its Delta log lists (staged by :func:`lakehouse.io.staging.stage_parquet`
for a commit that never happened), ``*.part`` files, and on a local lake the object store's partial
uploads (``<name>#<n>``, invisible to listings). Their number is the run's ``staged_files_swept``.

A table that fails does not stop the others (:func:`maintain_lake` returns the failures); per table it
returns files before/after, versions, files removed and the versions kept.
"""

import datetime as dt
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
from deltalake import DeltaTable

from lakehouse.io.lake import Lake
from lakehouse.io.storage import is_local
from lakehouse.specs.tables import TableRef

#: Delta's own default: readers of snapshots up to a week old keep their files
DEFAULT_RETENTION_HOURS = 168
#: zones holding Delta tables (landing holds raw files, never touched)
DELTA_ZONES = ("formatted", "trusted", "quality", "exploitation", "ml")
#: the name :func:`lakehouse.io.staging.stage_parquet` gives a staged file, under its partition
STAGED_FILE = re.compile(r"(?:[^/]+=[^/]+/)*part-[0-9a-f]{32}-c000\.snappy\.parquet")
#: an object store's partial upload on a local disk (``<name>#<n>``) or a partial file (``*.part``)
PARTIAL_FILE = re.compile(r".+(?:#\d+|\.part)")


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
    paths = [u for u, _ in lake.storage.list(ml) if re.fullmatch(r"[^/]+/models/v\d{4,}/lineage\.json", u[len(ml) + 1 :])]
    for path in paths:
        try:
            inputs = json.loads(lake.storage.read(path))["inputs"]
            for table, info in inputs.items():
                zone, name = TableRef.of(table)
                if info.get("delta_version") is not None:
                    in_use[(zone, name)].add(int(info["delta_version"]))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise LineageError(f"{path}: cannot read the model's input versions ({type(exc).__name__}: {exc})") from exc
    return dict(in_use)


def logged_files(lake: Lake, table_uri: str) -> set[str]:
    """Every data file (relative path) any surviving version of the table's Delta log adds or removes: its
    commits (``NNN.json``) and checkpoints (``*.checkpoint*.parquet``)."""
    import pyarrow.parquet as pq

    found: set[str] = set()
    for uri, _ in lake.storage.list(lake.storage.join(table_uri, "_delta_log")):
        name = uri.rsplit("/", 1)[-1]
        if name.endswith(".json") and name[:-5].isdigit():
            for line in lake.storage.read(uri).splitlines():
                action = json.loads(line) if line.strip() else {}
                found |= {unquote(action[k]["path"]) for k in ("add", "remove") if k in action}
        elif ".checkpoint" in name and name.endswith(".parquet"):
            checkpoint = pq.read_table(pa.BufferReader(lake.storage.read(uri)))
            for kind in ("add", "remove"):
                if kind in checkpoint.column_names:
                    found |= {unquote(a["path"]) for a in checkpoint[kind].to_pylist() if a}
    return found


def sweep_staged(
    lake: Lake,
    *,
    older_than_hours: float,
    zones: Iterable[str] = DELTA_ZONES,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[str]:
    """Delete the files crashed writers left that are older than ``older_than_hours``: in ``zones``, Parquet
    under a table folder that no version of its Delta log lists (in a folder without a log, only files
    named as staged ones) and ``*.part`` files; anywhere in a local lake, the object store's partial
    uploads. The URIs deleted (or, with ``dry_run``, that would be)."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=older_than_hours)
    storage = lake.storage
    orphans: list[str] = []
    for zone in zones:
        zone_uri = storage.uri(zone)
        for name in storage.folders(zone_uri):
            table_uri = storage.join(zone_uri, name)
            objects = [(uri[len(table_uri) + 1 :], uri, modified) for uri, modified in storage.list_modified(table_uri)]
            is_delta = any(rel.startswith("_delta_log/") for rel, _, _ in objects)
            logged = logged_files(lake, table_uri) if is_delta else set()
            for rel, uri, modified in objects:
                if modified > cutoff or rel.startswith(("_", ".")):
                    continue
                partial = PARTIAL_FILE.fullmatch(rel.rsplit("/", 1)[-1]) is not None
                staged = rel.endswith(".parquet") and rel not in logged and (is_delta or STAGED_FILE.fullmatch(rel))
                if partial or staged:
                    orphans.append(uri)
    if not dry_run:
        for uri in orphans:
            storage.delete(uri)
    if is_local(storage.root):  # partial uploads are invisible to listings: look at the disk, the whole lake
        for folder, _, names in os.walk(storage.root):
            for n in names:
                path = os.path.join(folder, n)
                if "#" in n and PARTIAL_FILE.fullmatch(n) and dt.datetime.fromtimestamp(os.lstat(path).st_mtime, dt.UTC) < cutoff:
                    orphans.append(path)
                    if not dry_run:
                        os.unlink(path)
    return sorted(orphans)


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
    vacuum_args: dict[str, Any] = {
        "retention_hours": retention_hours,
        "enforce_retention_duration": False,
        "keep_versions": keep or None,
        "full": True,
    }
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
        v
        for v in keep
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
    results: list[dict[str, Any]] = []
    failures: dict[str, BaseException] = {}
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
