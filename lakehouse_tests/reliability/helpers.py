"""Shared helpers of the reliability suite: runs, content hashes, conservation figures."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.io.lake import Lake
from lakehouse.specs import Project, load_project
from lakehouse_tests.conftest import TEST_CONFIGS

REPO = Path(__file__).resolve().parents[2]
#: columns that name the run rather than the data (excluded from content hashes)
RUN_COLUMNS = frozenset({"run_id", "batch_id", "written_at", "created_at", "computed_at", "run_started_at"})
SOURCE = "meter_readings"
#: the fast corpus run: one month holding the US fall-back DST change (2012-11-04), three days per file
FAST_MONTHS = ["2012-11"]
FAST_DAYS = [3, 4, 5]
#: the views materialized with the meter zones in the crash and idempotency runs
VIEWS = ["daily_consumption"]
#: the zone tables of the meter source and the quarantine, in write order
ZONE_KEYS = [("landing", SOURCE), ("formatted", SOURCE), ("trusted", SOURCE)]


def project_at(root: Path, world: Path, configs: Path | None = None, **env: str) -> Project:
    values = {"LAKEHOUSE_ROOT": str(root), "LAKEHOUSE_DEMO_ROOT": str(world), **env}
    return load_project(configs or TEST_CONFIGS, env=values)


def zone_definitions(project: Project, sources: Sequence[str] = (SOURCE,), views: Sequence[str] = ()) -> dg.Definitions:
    """The zone assets of ``sources`` (landing, formatted, trusted) and ``views``, with the project's
    resources: built by the same factories as :func:`lakehouse.factories.build_definitions`, without the
    sources and ML pipelines a test does not run (their providers are not started)."""
    from lakehouse.factories.common import resources
    from lakehouse.factories.exploitation import build_view_asset
    from lakehouse.factories.formatted import build_formatted_asset
    from lakehouse.factories.landing import build_landing_asset
    from lakehouse.factories.trusted import build_trusted_asset

    assets = []
    for name in sources:
        source = project.source(name)
        assets += [
            build_landing_asset(project, source),
            build_formatted_asset(project, source),
            build_trusted_asset(project, source),
        ]
    for view in project.views:
        if view.name in views:
            assets.append(build_view_asset(project, view))
    return dg.Definitions(assets=assets, resources=resources(project), executor=dg.in_process_executor)


def quarantine_rows(lake: Lake, dataset: str | None = SOURCE) -> list[dict]:
    """The quarantine as it stands (the newest published batch of each slice when it is append-only);
    ``dataset=None``: every dataset."""
    from lakehouse.quality import quarantine

    if not lake.exists("quality", "quarantine"):
        return []
    if hasattr(quarantine, "current"):
        return quarantine.current(lake, dataset=dataset).to_pylist()
    return [r for r in lake.read_arrow("quality", "quarantine").to_pylist() if dataset in (None, r["dataset"])]


def repair_rows(lake: Lake, dataset: str | None = SOURCE) -> list[dict]:
    """The repairs log as it stands ([] when the quality system keeps none)."""
    try:
        from lakehouse.quality import repairs
    except ImportError:
        return []
    if not lake.exists("quality", "repairs"):
        return []
    return repairs.current(lake, dataset=dataset).to_pylist()


def meter_keys(defs: dg.Definitions, zones: Sequence[str] = ("landing", "formatted", "trusted")) -> list[dg.AssetKey]:
    keys = {a.key for a in defs.assets if a.partitions_def is not None}
    wanted = [dg.AssetKey([z, SOURCE]) for z in zones]
    missing = [k for k in wanted if k not in keys]
    assert not missing, f"assets missing from the definitions: {missing}"
    return wanted


def materialize(
    defs: dg.Definitions,
    keys: Iterable[dg.AssetKey],
    start: str,
    end: str | None = None,
    instance: dg.DagsterInstance | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInJobResult:
    """One run of ``keys`` over the months ``start..end`` (a single-run backfill, like the UI's)."""
    return dg.materialize(
        defs.assets,
        selection=list(keys),
        resources=defs.resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end or start},
        raise_on_error=raise_on_error,
    )


def table_rows(lake: Lake, zone: str, table: str, months: Sequence[str] | None = None) -> list[dict]:
    if not lake.exists(zone, table):
        return []
    t = lake.read_arrow(zone, table, months=months)
    return t.select([c for c in t.column_names if c not in RUN_COLUMNS]).to_pylist()


def rows_hash(rows: Iterable[dict]) -> str:
    ordered = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return hashlib.sha256("\n".join(ordered).encode()).hexdigest()


def content_hash(lake: Lake, zone: str, table: str, months: Sequence[str] | None = None) -> str:
    """A hash over the sorted rows of a table (run metadata columns excluded)."""
    return rows_hash(table_rows(lake, zone, table, months))


def duplicates(rows: list[dict], key: Sequence[str]) -> list[tuple]:
    seen: dict[tuple, int] = {}
    for r in rows:
        k = tuple(r[c] for c in key)
        seen[k] = seen.get(k, 0) + 1
    return [k for k, n in seen.items() if n > 1]


def landing_state(lake: Lake, source: str = SOURCE) -> dict[str, list[dict]]:
    """Every month's manifest (sorted entries without the arrival time) — the landing zone's content."""
    from dataclasses import asdict

    from lakehouse.collectors.landing import read_manifest

    out = {}
    for month in lake.storage.folders(lake.table_uri("landing", source)):
        entries = [asdict(e) for e in read_manifest(lake.landing_month(source, month))]
        if entries:
            out[month] = sorted(
                ({k: v for k, v in e.items() if k != "received_at"} for e in entries), key=lambda e: json.dumps(e, sort_keys=True)
            )
    return out


def lake_hashes(lake: Lake, tables: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Content hashes of ``tables``: manifests for landing, the current slices for quality logs."""
    out = {}
    for zone, table in tables:
        if (zone, table) in (("quality", "quarantine"), ("quality", "repairs")):
            # the current batch of every dataset's slices; which run wrote it is not content
            rows = quarantine_rows(lake, dataset=None) if table == "quarantine" else repair_rows(lake, dataset=None)
            out[f"{zone}/{table}"] = rows_hash({k: v for k, v in r.items() if k not in RUN_COLUMNS} for r in rows)
        elif zone == "landing":
            out[f"{zone}/{table}"] = rows_hash([{"month": m, **e} for m, es in landing_state(lake, table).items() for e in es])
        else:
            out[f"{zone}/{table}"] = content_hash(lake, zone, table)
    return out
