"""Two months through every zone and the model, on a temporary lake; a rerun changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.collectors.landing import read_manifest
from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse.quality import quarantine as quarantine_table
from lakehouse.quality import repairs as repairs_table
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse_tests.conftest import FIXTURE_MODEL_KEYS, TEST_CONFIGS

MONTHS = ["2012-01", "2012-02", "2012-03", "2012-04"]
RUN_COLUMNS = {"run_id", "batch_id", "written_at"}


def content_hash(lake: Lake, zone: str, table: str) -> str:
    # quarantine and repairs are append-only: compare what is current (the newest batch of each month)
    current = {("quality", "quarantine"): quarantine_table.current, ("quality", "repairs"): repairs_table.current}
    t = current[(zone, table)](lake) if (zone, table) in current else lake.read_arrow(zone, table)
    t = t.select([c for c in t.column_names if c not in RUN_COLUMNS])
    rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def world_and_project(tmp_path_factory, weather_server):
    from lakehouse.sim.customers import CustomerWorld
    from lakehouse.specs import load_project

    root = tmp_path_factory.mktemp("pipeline")
    config = WorldConfig(meters=3, fault_rate=0.01, seed=3)
    MeterWorld(config).write(root / "world", MONTHS)
    CustomerWorld(config).write(root / "world", MONTHS)  # registry (SQLite) + billing exports
    env = {
        "LAKEHOUSE_ROOT": str(root / "lake"),
        "LAKEHOUSE_DEMO_ROOT": str(root / "world"),
        "LAKEHOUSE_WEATHER_URL": weather_server.url,
    }
    project = load_project(TEST_CONFIGS, env=env)
    return root, project


def run_zones(defs, start, end, instance):
    # the zones only: monthly ML assets (predictions) need a promoted champion first
    zone_keys = [a.key for a in defs.assets if a.partitions_def is not None and a.key.path[0] != "ml"]
    return dg.materialize(
        defs.assets,
        selection=zone_keys,
        resources=defs.resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
    )


def test_all_zones_then_model_then_rerun(spark, world_and_project):
    root, project = world_and_project
    defs = build_definitions(project)
    lake = Lake(project.lake_root)
    instance = dg.DagsterInstance.ephemeral()

    result = run_zones(defs, MONTHS[0], MONTHS[-1], instance)
    assert result.success
    mats = result.get_asset_materialization_events()
    assert {(m.asset_key.to_user_string(), m.partition) for m in mats} >= {("trusted/meter_readings", m) for m in MONTHS}

    landing_rows = 0
    for month in MONTHS:
        manifest = [e.__dict__ for e in read_manifest(lake.landing_month("meter_readings", month))]
        assert len(manifest) == 3 and all(len(e["sha256"]) == 64 for e in manifest)
        landing_rows += sum(e["rows"] for e in manifest)

    for zone in ("formatted", "trusted"):
        assert lake.months(zone, "meter_readings") == MONTHS
    formatted = lake.read_arrow("formatted", "meter_readings").num_rows
    trusted_rows = lake.read_arrow("trusted", "meter_readings").to_pylist()
    imputed = sum(1 for r in trusted_rows if r["_source_line"] is None)
    quarantine = quarantine_table.current(lake, dataset="meter_readings").to_pylist()
    q_parse = sum(1 for q in quarantine if q["stage"] == "formatted")
    q_trusted = sum(1 for q in quarantine if q["stage"] == "trusted")
    # conservation: every raw row is in trusted or in quarantine (rejected or merged); imputed rows are extra
    assert landing_rows == formatted + q_parse
    assert formatted == len(trusted_rows) - imputed + q_trusted
    assert q_trusted > 0, "the world injected duplicates and negative readings; some must be quarantined"
    assert not any(r["reading_kwh"] < 0 for r in trusted_rows)
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert checks[("trusted/meter_readings", "conservation")] and checks[("trusted/meter_readings", "pandera_schema")]
    assert checks[("formatted/meter_readings", "pandera_schema")]

    daily = lake.read_arrow("exploitation", "daily_consumption").to_pandas()
    assert daily.groupby("month").size().to_dict() == {m: 3 * d for m, d in zip(MONTHS, [31, 29, 31, 30], strict=True)}

    before = {
        t: content_hash(lake, *t)
        for t in [
            ("formatted", "meter_readings"),
            ("trusted", "meter_readings"),
            ("quality", "quarantine"),
            ("quality", "repairs"),
            ("exploitation", "daily_consumption"),
        ]
    }
    versions = {t: lake.version(*t) for t in before}
    # rerun one month: every table keeps its content, and the month was rewritten (new versions)
    again = run_zones(defs, "2012-02", "2012-02", instance)
    assert again.success
    assert {t: content_hash(lake, *t) for t in before} == before
    assert all(lake.version(*t) > versions[t] for t in before)

    ml = dg.materialize(
        defs.assets, selection=[dg.AssetKey(k) for k in FIXTURE_MODEL_KEYS], resources=defs.resources, instance=instance
    )
    assert ml.success
    meta = next(
        e.materialization.metadata for e in ml.get_asset_materialization_events() if e.asset_key.path == ["ml", "daily_gbm"]
    )
    assert meta["rmse"].value > 0 and meta["validation_rows"].value > 0
    model_dir = Path(lake.uri("ml", "daily_gbm", "models", "v0001"))
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert lineage["inputs"]["exploitation/daily_consumption"]["delta_version"] == lake.version(
        "exploitation", "daily_consumption"
    )
    assert (model_dir / "model.skops").stat().st_size > 0 and lineage["files"]["model.skops"]
