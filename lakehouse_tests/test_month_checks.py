"""Checks per month over a backfilled range: a month whose every row is rejected fails the blocking
``rejected_rate`` check of ``formatted/meter_readings`` in that month only, and only that month is held
downstream (``trusted/meter_readings`` commits the other month and fails naming the held one).

Two months of a two-meter world; the second month's files carry no readable reading.
"""

from __future__ import annotations

import dagster as dg

from lakehouse.factories import build_definitions
from lakehouse.factories.common import BLOCKING_FAILED, HELD
from lakehouse.io.lake import Lake
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse.specs import load_project
from lakehouse_tests.test_quality_checks import reduced_configs

MONTHS = ["2012-01", "2012-02"]
GOOD, BAD = MONTHS
RANGE = {"dagster/asset_partition_range_start": MONTHS[0], "dagster/asset_partition_range_end": MONTHS[-1]}
FORMATTED, TRUSTED = dg.AssetKey(["formatted", "meter_readings"]), dg.AssetKey(["trusted", "meter_readings"])


def test_an_all_rejected_month_fails_its_blocking_check_and_holds_only_itself(spark, tmp_path):
    world = tmp_path / "world"
    MeterWorld(WorldConfig(meters=2, fault_rate=0.0, seed=7)).write(world, MONTHS)
    for path in sorted((world / "inbox" / "meter_readings").glob(f"meter_*_{BAD}.csv")):
        header, *lines = path.read_text().splitlines()
        path.write_text("\n".join([header, *(line.rsplit(";", 1)[0] + ";n/a" for line in lines if line)]) + "\n")
    project = load_project(
        reduced_configs(tmp_path / "configs"), env={"LAKEHOUSE_ROOT": str(tmp_path / "lake"), "LAKEHOUSE_DEMO_ROOT": str(world)}
    )
    defs = build_definitions(project)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            defs.assets,
            selection=[dg.AssetKey(["landing", "meter_readings"]), FORMATTED, TRUSTED],
            resources=defs.resources,
            instance=instance,
            tags=RANGE,
            raise_on_error=False,
        )
        assert not result.success
        # formatted: both months committed, the bad one with no row and a failed blocking check of its own
        rejected = {
            e.partition: e
            for e in result.get_asset_check_evaluations()
            if e.asset_key == FORMATTED and e.check_name == "rejected_rate"
        }
        assert sorted(rejected) == MONTHS
        assert rejected[GOOD].passed and rejected[GOOD].metadata["rate"].value == 0.0
        bad = rejected[BAD]
        assert not bad.passed and bad.blocking and bad.severity == dg.AssetCheckSeverity.ERROR
        assert bad.metadata["rate"].value == 1.0 and "none kept" in bad.description
        formatted = {
            m.materialization.partition: m.materialization.metadata
            for m in result.get_asset_materialization_events()
            if m.asset_key == FORMATTED
        }
        assert formatted[BAD]["rows"].value == 0 and formatted[BAD][BLOCKING_FAILED].value == ["rejected_rate"]
        assert formatted[GOOD]["rows"].value == 2 * 31 * 24 and formatted[GOOD][BLOCKING_FAILED].value == []
        # trusted: the good month ran and is materialized; the bad month was held, not run
        trusted = [r.partition_key for r in instance.fetch_materializations(TRUSTED, limit=10).records]
        assert trusted == [GOOD]
        executions = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(TRUSTED, "conservation"), limit=5
        )
        # evaluated in the good month only (the held month's check was planned with the range, never evaluated)
        assert {e.partition for e in executions if e.status.value in ("SUCCEEDED", "FAILED")} == {GOOD}
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert failure.step_key == "trusted__meter_readings"
        assert (
            f"{BAD}: held: formatted/meter_readings {BAD} failed blocking check(s) rejected_rate"
            in failure.step_failure_data.error.message
        )
        (held,) = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=TRUSTED, asset_partitions=[BAD]), limit=5).records
        assert "rejected_rate" in held.asset_observation.metadata[HELD].value
    lake = Lake(project.lake_root)
    assert lake.months("trusted", "meter_readings") == [GOOD]
