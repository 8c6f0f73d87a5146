"""R3 over the whole project: every source and view of ``configs/``, materialized twice for the same month.

The fast part of R3 (meter zones, quality logs, a view) is ``test_crash.py::test_rerun_changes_nothing``;
this one runs every zone asset of the default scenario (file drops, the HTTP weather provider, the SQL
registry, the holiday calendar, the reconciled customers and the integrated views) in the slow suite.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest

from lakehouse.collectors.landing import read_manifest
from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse_tests.reliability.helpers import duplicates, lake_hashes, landing_state, materialize, project_at

MONTH = "2012-02"


def zone_tables(lake: Lake) -> list[tuple[str, str]]:
    out = []
    for zone in ("landing", "formatted", "trusted", "exploitation", "quality"):
        out += [(zone, t) for t in lake.storage.folders(lake.storage.uri(zone)) if zone == "landing" or lake.exists(zone, t)]
    return [t for t in out if t != ("quality", "metrics")]  # metrics describe runs (timings, batches)


@pytest.mark.slow
def test_every_zone_asset_twice_gives_the_same_content(spark, tmp_path, weather_server):
    from lakehouse.sim.demo import build_world

    weather_server.clear()
    build_world(tmp_path / "world", "2012-01", "2012-03", meters=4, fault_rate=0.01)
    project = project_at(tmp_path / "lake", tmp_path / "world", LAKEHOUSE_WEATHER_URL=weather_server.url)
    defs = build_definitions(project)
    # every zone asset; the monthly ML outputs need a promoted champion (trained over all months), not a zone
    keys = [a.key for a in defs.assets if a.partitions_def is not None and a.key.path[0] != "ml"]
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(defs, keys, MONTH, instance=instance)
    assert first.success
    lake = Lake(project.lake_root)
    tables = zone_tables(lake)
    assert {z for z, _ in tables} >= {"landing", "formatted", "trusted", "exploitation", "quality"}
    before = lake_hashes(lake, tables)
    manifests = {name: landing_state(lake, name) for z, name in tables if z == "landing"}

    second = materialize(defs, keys, MONTH, instance=instance)
    assert second.success
    after = lake_hashes(lake, tables)
    changed = sorted(t for t in before if before[t] != after[t])
    assert not changed, f"content changed on a rerun: {changed}"
    assert {name: landing_state(lake, name) for z, name in tables if z == "landing"} == manifests
    for zone, table in tables:
        if zone == "landing":
            for month in lake.storage.folders(lake.table_uri(zone, table)):
                entries = [e.__dict__ for e in read_manifest(lake.landing_month(table, month))]
                assert not duplicates(entries, ["name", "sha256"]), (table, month)
        elif zone in ("formatted", "trusted"):
            rows = lake.read_arrow(zone, table).to_pylist()
            lineage = [r for r in rows if r.get("_source_file") is not None]
            assert not duplicates(lineage, ["_source_file", "_source_line"]), f"{zone}/{table}"
    print("\nR3 tables compared: " + json.dumps(sorted(before)))
