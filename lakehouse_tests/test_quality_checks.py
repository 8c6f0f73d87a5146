"""The trusted zone in Dagster: asset checks per rule, metrics across runs, the append-only quarantine,
and blocking checks (conservation, fail rules) that stop the run.

One month of a three-meter world, on a project reduced to meter_readings and the daily view.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse.io.staging import stage_parquet
from lakehouse.quality import cleaning, metrics, quarantine, repairs
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse.specs import load_project
from lakehouse_tests.conftest import TEST_CONFIGS
from lakehouse_tests.declarations import copy_configs, declaration

MONTH = "2012-01"
TRUSTED = dg.AssetKey(["trusted", "meter_readings"])


def reduced_configs(target: Path, extra_rules: str = "") -> Path:
    """The tests' configs with only meter_readings and the daily view; the customer registry stays declared
    (the table of meter_readings' reference rule) but is never materialized here."""
    copy_configs(target, keep={"sources/meter_readings", "sources/customers", "views/daily_consumption"}, base=TEST_CONFIGS)
    if extra_rules:
        source = declaration(target, "sources", "meter_readings")
        text = source.read_text()
        source.write_text(text.replace("    rules:\n", "    rules:\n" + textwrap.indent(extra_rules, "  "), 1))
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality_checks")
    MeterWorld(WorldConfig(meters=3, fault_rate=0.01, seed=3)).write(root / "world", [MONTH])
    return root


def project_for(root: Path, name: str, extra_rules: str = ""):
    configs = reduced_configs(root / name / "configs", extra_rules)
    env = {"LAKEHOUSE_ROOT": str(root / "lake"), "LAKEHOUSE_DEMO_ROOT": str(root / "world")}
    return load_project(configs, env=env)


def materialize(defs, keys, instance, **kw):
    return dg.materialize(defs.assets, selection=keys, resources=defs.resources, instance=instance, partition_key=MONTH, **kw)


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == TRUSTED}


@pytest.fixture(scope="module")
def first_run(spark, world):
    project = project_for(world, "base")
    defs = build_definitions(project)
    instance = dg.DagsterInstance.ephemeral()
    keys = [dg.AssetKey([z, "meter_readings"]) for z in ("landing", "formatted", "trusted")]
    result = materialize(defs, keys, instance)
    return project, defs, instance, result


def test_every_rule_and_step_is_a_check_of_the_partition(first_run):
    project, _, _, result = first_run
    assert result.success
    evals = evaluations(result)
    quality = project.source("meter_readings").quality
    expected = (
        {"exact_duplicate", "conservation", "rejected_rate", "pandera_schema"}
        | {r.name for r in quality.rules}
        | {s.name for s in quality.cleaning if hasattr(s, "name")}
    )
    assert set(evals) == expected
    assert {e.partition for e in evals.values()} == {MONTH}  # a result of the month, not of the run
    # the registry is not part of this reduced project: the reference rule says so instead of guessing
    unknown = evals.pop("known_meter")
    assert not unknown.passed and unknown.severity == dg.AssetCheckSeverity.WARN and "not evaluated" in unknown.description
    # a warn rule passes exactly when it flagged nothing; flagged rows make it a WARN failure
    implausible = evals.pop("implausible_hourly_reading")
    flagged = implausible.metadata["violations"].value
    assert implausible.passed == (flagged == 0)
    assert implausible.passed or implausible.severity == dg.AssetCheckSeverity.WARN
    assert all(e.passed for e in evals.values()), {n: e.description for n, e in evals.items() if not e.passed}
    assert evals["conservation"].blocking and evals["required_fields"].blocking and evals["pandera_schema"].blocking
    assert evals["rejected_rate"].blocking and evals["rejected_rate"].metadata["rows_in"].value > 0
    assert not evals["non_negative_reading"].blocking
    (mat,) = [m for m in result.get_asset_materialization_events() if m.asset_key == TRUSTED]
    # tied to the month's materialization (so the UI shows it for the month and automation counts it)
    assert evals["conservation"].target_materialization_data.run_id == result.run_id
    meta = mat.materialization.metadata
    assert mat.materialization.partition == MONTH
    assert meta["dagster/row_count"].value == meta["rows"].value > 0
    assert meta["blocking_failed"].value == []
    table = {r.data["check"]: r.data for r in meta["checks"].value.records}
    assert table["non_negative_reading"]["action"] == "quarantine" and table["known_meter"]["result"] == "not evaluated"


def test_a_warn_rule_with_violations_fails_with_warn_severity():
    """One severity rule everywhere: a warn rule that flags rows is a WARN failure, without any it passes."""
    from lakehouse.quality.cleaning import Outcome
    from lakehouse.quality.metrics import Conservation, evaluate

    class Result:
        counts = {"rows_in": 100}

        def __init__(self, violations):
            self.outcomes = {"implausible": Outcome("implausible", "rule", "warn", violations=violations)}

    cons = Conservation(100, 100, 0, 0, 0)
    flagged, clean = (evaluate(Result(n), cons)[0] for n in (3, 0))
    assert (flagged.passed, flagged.severity, flagged.blocking) == (False, "WARN", False)
    assert clean.passed


def test_metrics_record_the_assessment_of_the_month(first_run):
    project, _, _, result = first_run
    lake = Lake(project.lake_root)
    m = metrics.read(lake, months=[MONTH]).to_pandas()
    mine = m[(m["dataset"] == "meter_readings") & (m["stage"] == "trusted") & (m["run_id"] == result.run_id)]
    value = {(r.metric, r.rule, r.column): r.value for r in mine.itertuples()}
    assert value[("rows_in", None, None)] == value[("formatted_rows", None, None)] > 0
    assert value[("conserved", None, None)] == 1.0
    assert value[("violations", "exact_duplicate", None)] >= 1  # the world injected duplicates
    assert 0 < value[("violation_rate", "exact_duplicate", None)] < 0.01
    assert value[("completeness_out", None, "reading_kwh")] == 1.0
    assert value[("key_uniqueness_out", None, None)] == 1.0
    assert value[("check_passed", "conservation", None)] == 1.0
    assert value[("check_passed", "pandera_schema", None)] == 1.0


def test_rerun_appends_a_batch_and_current_shows_only_the_newest(first_run):
    project, defs, instance, result = first_run
    lake = Lake(project.lake_root)
    before_all = lake.read_arrow("quality", "quarantine")
    before = quarantine.current(lake, dataset="meter_readings", stage="trusted").drop_columns(list(metrics.BATCH_COLUMNS))
    before_repairs = repairs.current(lake, dataset="meter_readings").num_rows
    again = materialize(defs, [TRUSTED], instance)
    assert again.success
    after_all = lake.read_arrow("quality", "quarantine")
    after = quarantine.current(lake, dataset="meter_readings", stage="trusted")
    # append-only: the first run's rows are still there; current holds only the second run's batch
    assert after_all.num_rows == before_all.num_rows + after.num_rows
    assert set(after["run_id"].to_pylist()) == {again.run_id}
    assert sorted(map(str, after.drop_columns(list(metrics.BATCH_COLUMNS)).to_pylist())) == sorted(map(str, before.to_pylist()))
    assert repairs.current(lake, dataset="meter_readings").num_rows == before_repairs
    runs = metrics.read(lake, months=[MONTH]).filter(pc.equal(pc.field("stage"), "trusted"))["run_id"].unique().to_pylist()
    assert {result.run_id, again.run_id} <= set(runs)


def test_blocking_checks_fail_the_run_when_a_row_goes_missing_or_a_fail_rule_breaks(first_run, world, monkeypatch):
    """A trusted row silently lost breaks conservation; a fail rule with violations fails its check.
    Both are blocking: the step fails and the daily view downstream is not materialized."""
    base_project = first_run[0]
    lake = Lake(base_project.lake_root)
    published_before = metrics.current_batches(lake, months=[MONTH]).to_pylist()
    project = project_for(
        world,
        "broken",
        extra_rules=("    - name: tiny_readings_only\n      range: {reading_kwh: {max: 0.5}}\n      action: fail\n"),
    )
    original = cleaning._stage

    def losing_one_row(df, source, stagings, **kwargs):
        staged, partials, distinct = original(df, source, stagings, **kwargs)
        (month, staging), *_ = stagings.items()
        # a staged trusted file rewritten without one row from the source (an imputed row has no lineage
        # and is not part of the balance)
        first = staged[month]["trusted"][0]
        rows = staging.storage.read_parquet(f"{staging.trusted}/{first['path']}")
        i = pc.index(pc.is_valid(rows["_source_line"]), True).as_py()
        smaller = stage_parquet(
            staging.storage, staging.trusted, first["path"].split("/")[0], pa.concat_tables([rows.slice(0, i), rows.slice(i + 1)])
        )
        staged[month]["trusted"][0] = {k: smaller[k] for k in ("path", "size", "stats", "rows")}
        return staged, partials, distinct

    monkeypatch.setattr(cleaning, "_stage", losing_one_row)
    defs = build_definitions(project)
    view = dg.AssetKey(["exploitation", "daily_consumption"])
    result = materialize(defs, [TRUSTED, view], dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    evals = evaluations(result)
    assert not evals["conservation"].passed and evals["conservation"].blocking
    assert "!=" in evals["conservation"].description
    assert not evals["tiny_readings_only"].passed and evals["tiny_readings_only"].severity == dg.AssetCheckSeverity.ERROR
    assert evals["non_negative_reading"].passed
    # the month is materialized with the checks it failed; its month of the view is held
    (mat,) = [m for m in result.get_asset_materialization_events() if m.asset_key == TRUSTED]
    assert set(mat.materialization.metadata["blocking_failed"].value) == {"conservation", "tiny_readings_only"}
    assert not [m for m in result.get_asset_materialization_events() if m.asset_key == view]
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "exploitation__daily_consumption"
    assert f"{MONTH}: held: trusted/meter_readings {MONTH} failed blocking check(s)" in failure.step_failure_data.error.message
    # the broken batch is recorded as such
    m = metrics.read(lake, months=[MONTH]).to_pandas()
    mine = m[(m["run_id"] == result.run_id) & (m["metric"] == "conserved")]
    assert mine["value"].tolist() == [0.0]
    assert published_before  # the earlier runs' batches were published
