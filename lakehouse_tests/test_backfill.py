"""Monthly backfills: a range of months is one run per asset range, one Delta commit per month, and one
bad month does not spoil the others (their commits stand and are reported; the bad month keeps its
previous data).

The bad-month test drives ``run_months`` (the loop every zone factory runs) with a step that commits
through ``Lake.overwrite_month`` like the factories do, so it needs no Spark and does not depend on which
quality rule a real month would break; the real zone assets over a range are covered end to end by
``lakehouse_tests/e2e`` (GraphQL backfill) and ``test_pipeline``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.collectors.landing import read_manifest
from lakehouse.factories.common import LakeResource, report, run_months
from lakehouse.io.lake import Lake
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse_tests.conftest import REPO

MONTHS = ["2012-01", "2012-02", "2012-03"]
TOY_MONTHS = dg.MonthlyPartitionsDefinition(start_date="2012-01", end_date="2012-04", fmt="%Y-%m")
RANGE = {ASSET_PARTITION_RANGE_START_TAG: MONTHS[0], ASSET_PARTITION_RANGE_END_TAG: MONTHS[-1]}


class ToyConfig(dg.Config):
    bad_months: list[str] = []
    value: int = 1
    workers: int = 1
    #: > 1: the months go through ``run_months(plan=...)`` in batches of this many
    per_plan: int = 1
    #: a batch holding one of these months fails as a whole (each month is then computed alone)
    bad_plans: list[str] = []
    #: this month's inputs change while a batch holding it is computed (a concurrent run committed them)
    stale_month: str = ""
    #: each month builds on the one before (``run_months(ordered=True)``, as a merge view)
    ordered: bool = False


@dg.asset(key=["formatted", "toy"], partitions_def=TOY_MONTHS, backfill_policy=dg.BackfillPolicy.single_run())
def toy(context: dg.AssetExecutionContext, config: ToyConfig, lake: LakeResource):
    """The zone factories' shape: ``run_months`` over a step that commits one month."""

    def step(month: str) -> dict:
        if month in config.bad_months:
            raise ValueError(f"unreadable data in {month}")
        data = pa.table({"value": [config.value] * 3, "run_id": [context.run.run_id] * 3})
        return {"rows": data.num_rows, "delta_version": lake.lake.overwrite_month("formatted", "toy", data, month)}

    def plan(months: list[str]) -> dict:
        PLANS.append(list(months))
        if len(months) > 1 and set(months) & set(config.bad_plans):
            raise RuntimeError("the batch's Spark job failed")
        if len(months) > 1 and config.stale_month in months:
            INPUTS[config.stale_month] = INPUTS.get(config.stale_month, 0) + 1
        out: dict = {}
        for month in months:
            try:
                out[month] = step(month)
            except ValueError as exc:
                out[month] = exc
        return out

    if config.per_plan > 1:
        done = run_months(
            context,
            None,
            "formatted/toy",
            workers=config.workers,
            plan=plan,
            months_per_plan=config.per_plan,
            inputs=lambda month: INPUTS.get(month, 0),
            ordered=config.ordered,
        )
    else:
        done = run_months(context, step, "formatted/toy", workers=config.workers)
    yield from report(context, done)


#: the batches of months ``toy``'s plan was called with
PLANS: list[list[str]] = []
#: a version of each month's inputs (``toy``'s ``inputs``), bumped when they change
INPUTS: dict[str, int] = {}


def by_month(lake: Lake, zone: str, table: str) -> dict[str, list]:
    rows: dict[str, list] = {}
    for r in lake.read_arrow(zone, table).to_pylist():
        rows.setdefault(r["month"], []).append(r)
    return rows


def materialized(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> list[str]:
    """The months of ``key`` the run reported materialized (as stored by the instance)."""
    records = instance.fetch_materializations(key, limit=1000).records
    return sorted(r.partition_key for r in records if r.run_id == result.run_id)


@pytest.mark.parametrize(("workers", "per_plan"), [(1, 1), (3, 1), (1, 2), (3, 3)])
def test_one_bad_month_keeps_the_others_and_its_previous_data(tmp_path, workers, per_plan):
    lake = Lake(tmp_path / "lake")
    resources = {"lake": LakeResource(root=str(lake.root))}
    key = dg.AssetKey(["formatted", "toy"])
    with dg.instance_for_test() as instance:

        def run(**config) -> dg.ExecuteInProcessResult:
            return dg.materialize(
                [toy],
                resources=resources,
                instance=instance,
                tags=RANGE,
                run_config={"ops": {"formatted__toy": {"config": {**config, "workers": workers, "per_plan": per_plan}}}},
                raise_on_error=False,
            )

        first = run(value=1)
        assert first.success
        assert materialized(instance, first, key) == MONTHS
        # each month carries its own figures, not the range's totals
        for record in instance.fetch_materializations(key, limit=10).records:
            meta = record.asset_materialization.metadata
            assert meta["dagster/row_count"].value == meta["rows"].value == 3
            assert "total_rows" not in meta
        versions = {
            r.partition_key: r.asset_materialization.metadata["delta_version"].value
            for r in instance.fetch_materializations(key, limit=10).records
        }
        assert sorted(versions.values()) == list(range(len(MONTHS)))  # one commit, one version per month
        assert {m: {r["value"] for r in rows} for m, rows in by_month(lake, "formatted", "toy").items()} == {
            m: {1} for m in MONTHS
        }
        version = lake.version("formatted", "toy")

        second = run(value=2, bad_months=["2012-02"])
        assert not second.success
        (failure,) = [e for e in second.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "1 of 3 month(s) failed" in failure.step_failure_data.error.message
        assert "2012-02" in failure.step_failure_data.error.message
        assert failure.step_failure_data.user_failure_data.metadata["failed_months"].value == ["2012-02"]
        # the good months committed (one transaction each) and are reported as materialized
        assert materialized(instance, second, key) == ["2012-01", "2012-03"]
        assert lake.version("formatted", "toy") == version + 2
        rows = by_month(lake, "formatted", "toy")
        assert {r["value"] for r in rows["2012-01"]} == {r["value"] for r in rows["2012-03"]} == {2}
        # the bad month still holds what the first run wrote, untouched
        assert {(r["value"], r["run_id"]) for r in rows["2012-02"]} == {(1, first.run_id)}
        latest = instance.get_latest_materialization_event(key)
        assert latest.run_id == second.run_id and latest.asset_materialization.partition in {"2012-01", "2012-03"}


def test_a_plan_of_months_that_fails_is_computed_again_month_by_month(tmp_path):
    """``run_months(plan=...)``: months go in batches of ``months_per_plan`` (the first batch alone); when a
    batch's plan fails as a whole, each of its months is computed again alone, so only a bad month fails."""
    lake = Lake(tmp_path / "lake")
    key = dg.AssetKey(["formatted", "toy"])
    with dg.instance_for_test() as instance:

        def run(**config) -> dg.ExecuteInProcessResult:
            PLANS.clear()
            return dg.materialize(
                [toy],
                resources={"lake": LakeResource(root=str(lake.root))},
                instance=instance,
                tags=RANGE,
                run_config={"ops": {"formatted__toy": {"config": {**config, "per_plan": 2}}}},
                raise_on_error=False,
            )

        assert run(value=1).success
        assert PLANS == [MONTHS[:2], MONTHS[2:]]
        assert lake.version("formatted", "toy") == len(MONTHS) - 1  # still one commit per month

        second = run(value=2, bad_plans=["2012-02"], bad_months=["2012-02"])
        assert not second.success
        # the failed batch, then each of its months alone; the other batch as one plan
        assert PLANS == [MONTHS[:2], ["2012-01"], ["2012-02"], MONTHS[2:]]
        assert materialized(instance, second, key) == ["2012-01", "2012-03"]
        rows = by_month(lake, "formatted", "toy")
        assert {r["value"] for r in rows["2012-01"]} == {r["value"] for r in rows["2012-03"]} == {2}
        assert {r["value"] for r in rows["2012-02"]} == {1}


def test_cli_partition_range_is_one_run(tmp_path, monkeypatch):
    """``dg launch --assets ... --partition-range`` with the project's instance yaml: one run, a
    materialization per month, and no Dagster warning printed."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    world = tmp_path / "world"
    MeterWorld(WorldConfig(meters=2, fault_rate=0.0, seed=5)).write(world, MONTHS[:2])
    venv = Path(sys.executable).parent
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LAKEHOUSE_ROOT": str(tmp_path / "lake"),
        "LAKEHOUSE_DEMO_ROOT": str(world),
        "VIRTUAL_ENV": str(venv.parent),
        "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        str(venv / "dg"),
        "launch",
        "--assets",
        "landing/meter_readings",
        "--partition-range",
        f"{MONTHS[0]}...{MONTHS[1]}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # as for the CLI: the instance's event log lives under it
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.tags[ASSET_PARTITION_RANGE_START_TAG] == MONTHS[0]
        assert record.dagster_run.tags[ASSET_PARTITION_RANGE_END_TAG] == MONTHS[1]
        key = dg.AssetKey(["landing", "meter_readings"])
        assert instance.get_materialized_partitions(key) == set(MONTHS[:2])
    assert read_manifest(Lake(tmp_path / "lake").landing_month("meter_readings", MONTHS[1]))


def test_parallel_months_run_the_first_alone_then_overlap(tmp_path):
    """``workers``: the first month creates the table alone, the others run at the same time in threads."""
    import threading
    import time

    spans: dict[str, tuple[float, float, str]] = {}

    @dg.asset(key=["formatted", "toy2"], partitions_def=TOY_MONTHS, backfill_policy=dg.BackfillPolicy.single_run())
    def toy2(context: dg.AssetExecutionContext, lake: LakeResource):
        def step(month: str) -> dict:
            t0 = time.monotonic()
            time.sleep(0.3)  # a month's Spark jobs and commit: the thread waits, like on py4j
            version = lake.lake.overwrite_month("formatted", "toy2", pa.table({"value": [month]}), month)
            spans[month] = (t0, time.monotonic(), threading.current_thread().name)
            return {"rows": 1, "delta_version": version}

        yield from report(context, run_months(context, step, "formatted/toy2", workers=3))

    lake = Lake(tmp_path / "lake")
    result = dg.materialize([toy2], resources={"lake": LakeResource(root=str(lake.root))}, tags=RANGE)
    assert result.success
    first, *rest = MONTHS
    assert all(spans[first][1] <= spans[m][0] for m in rest), spans  # the first month ran alone
    (a0, a1, ta), (b0, b1, tb) = (spans[m] for m in rest)
    assert a0 < b1 and b0 < a1 and ta != tb, spans  # the others overlapped, in two threads
    assert {r["value"] for r in lake.read_arrow("formatted", "toy2").to_pylist()} == set(MONTHS)
    assert lake.version("formatted", "toy2") == len(MONTHS) - 1  # one commit per month, none lost


def test_parallel_months_write_what_one_month_at_a_time_writes(spark, tmp_path, monkeypatch):
    """The real zone factories one month at a time, with ``month_workers: 3``, with months in one plan, and
    with months in one plan whose unit-step estimates are wrong: the same rows in every table.

    ``trusted/meter_readings`` reads the trusted months before each month (its unit step's history): with
    workers its months overlap, yet each month must read its history only after every earlier month of
    the run wrote its trusted rows, exactly what a one-by-one run shows it. In one plan, a month's history
    holds months of the plan: the decisions rest on estimates, settled on the staged rows; a month decided
    otherwise, and every month after it, is cleaned again alone.
    """
    from lakehouse.factories import trusted
    from lakehouse.quality import units
    from lakehouse_tests.reliability.helpers import content_hash, materialize, project_at, zone_definitions

    world = tmp_path / "world"
    MeterWorld(WorldConfig(meters=2, fault_rate=0.02, seed=11)).write(world, MONTHS)
    real_history, real_estimate = trusted._history, units._estimate
    hashes, seen, events, cleanings = {}, {}, [], {}
    run = ""

    def history(root, source, month):
        seen[run][month] = root.months("trusted", source.name)
        events.append(("history", month))
        return real_history(root, source, month)

    def formatted_read(read):
        def read_spark(self, session, zone, table, *args, **kwargs):
            if (zone, table) == ("formatted", "meter_readings"):
                events.append(("cleaning", *kwargs["months"]))
            return read(self, session, zone, table, *args, **kwargs)

        return read_spark

    real_clean_months = trusted.clean_months
    plans: dict[str, list[tuple[str, list[str]]]] = {}

    def clean_months(formatted, source, **kwargs):
        plans[run].append((source.name, sorted(kwargs["stagings"])))
        return real_clean_months(formatted, source, **kwargs)

    def wrong_estimate(months):  # every series' history far below any reading: every file looks 1000x off
        return {key: (1e-9, 10**6) for key in real_estimate(months)} if run == "wrong" else real_estimate(months)

    monkeypatch.setattr(trusted, "_history", history)
    monkeypatch.setattr(trusted, "clean_months", clean_months)
    monkeypatch.setattr(units, "_estimate", wrong_estimate)
    monkeypatch.setattr(Lake, "read_spark", formatted_read(Lake.read_spark))
    for run, workers, per_plan in (("one", 1, 1), ("overlap", 3, 1), ("plan", 3, 2), ("wrong", 1, 3)):
        seen[run], plans[run] = {}, []
        events.clear()
        project = project_at(tmp_path / f"lake-{run}", world)
        settings_ = {"month_workers": workers, "months_per_plan": per_plan}
        project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update=settings_)})
        defs = zone_definitions(project, sources=("meter_readings", "calendar"))
        assert materialize(defs, [a.key for a in defs.assets], MONTHS[0], MONTHS[-1]).success
        lake = Lake(project.lake_root)
        tables = [
            ("formatted", "meter_readings"),
            ("formatted", "calendar"),
            ("trusted", "calendar"),
            ("trusted", "meter_readings"),
            ("quality", "quarantine"),
            ("quality", "repairs"),
        ]
        hashes[run] = {f"{z}/{t}": content_hash(lake, z, t) for z, t in tables}
        assert lake.months("trusted", "calendar") == MONTHS and lake.months("formatted", "meter_readings") == MONTHS
        assert lake.months("trusted", "meter_readings") == MONTHS
        if per_plan == 1:
            # every month's history was read with all the earlier months written, none of the later ones
            assert seen[run] == {m: MONTHS[:i] for i, m in enumerate(MONTHS)}, seen[run]
        if run == "overlap":
            # the months did overlap: the third began cleaning before the second read its history
            assert events.index(("cleaning", MONTHS[2])) < events.index(("history", MONTHS[1])), events
        cleanings[run] = [e for e in events if e[0] == "cleaning"]
    # January reads no month; February's estimate was wrong: February and March cleaned again, alone
    assert cleanings["wrong"] == [("cleaning", *MONTHS), ("cleaning", MONTHS[1]), ("cleaning", MONTHS[2])]
    assert hashes["overlap"] == hashes["one"] and hashes["plan"] == hashes["one"] and hashes["wrong"] == hashes["one"]
    assert plans["one"] == [] and plans["overlap"] == []
    # in plans of two months then one: the calendar's and the meter readings' first two months
    assert sorted(plans["plan"]) == [("calendar", MONTHS[:2]), ("meter_readings", MONTHS[:2])]
    assert sorted(plans["wrong"]) == [("calendar", MONTHS), ("meter_readings", MONTHS)]
    # nothing was cleaned again where the estimates held
    assert cleanings["plan"] == [("cleaning", *MONTHS[:2]), ("cleaning", MONTHS[2])]


@pytest.mark.parametrize("ordered", [False, True])
def test_a_month_whose_inputs_changed_during_its_plan_is_computed_again_and_so_are_the_months_built_on_it(tmp_path, ordered):
    """A month of a batch whose inputs changed while the plan ran is computed again alone; when each month
    builds on the one before (a merge view), every later month of the batch is computed again after it."""
    lake = Lake(tmp_path / "lake")
    PLANS.clear()
    INPUTS.clear()
    with dg.instance_for_test() as instance:
        run = dg.materialize(
            [toy],
            resources={"lake": LakeResource(root=str(lake.root))},
            instance=instance,
            tags=RANGE,
            run_config={"ops": {"formatted__toy": {"config": {"per_plan": 3, "stale_month": "2012-02", "ordered": ordered}}}},
        )
        assert run.success
        again = [["2012-02"], ["2012-03"]] if ordered else [["2012-02"]]
        assert PLANS == [MONTHS, *again]
        assert materialized(instance, run, dg.AssetKey(["formatted", "toy"])) == MONTHS


def test_large_months_of_a_trusted_table_go_one_per_plan():
    """``rows_per_plan`` bounds the formatted rows a trusted plan holds: the months per plan shrink as the
    run's months grow, down to one; a source with a ``prev.`` rule is always one per plan."""
    from lakehouse.factories.trusted import _months_per_plan
    from lakehouse.specs import load_project
    from lakehouse.specs.models import SourceSpec
    from lakehouse_tests.test_cleaning import meter_source

    class Rows:
        def __init__(self, per_month: int) -> None:
            self.per_month = per_month

        def exists(self, zone, table):
            return True

        def month_rows(self, zone, table, months):
            return dict.fromkeys(months, self.per_month)

    project = load_project(REPO / "configs", env={})
    settings_ = {"months_per_plan": 12, "rows_per_plan": 1_000_000}
    project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update=settings_)})
    source = meter_source()
    assert [_months_per_plan(project, Rows(n), source, MONTHS) for n in (30_000, 200_000, 600_000, 1_050_000)] == [12, 5, 1, 1]
    previous = meter_source(rules=[{"name": "rise", "deny": "reading_kwh > prev.reading_kwh + 50", "action": "warn"}])
    assert isinstance(previous, SourceSpec) and _months_per_plan(project, Rows(10), previous, MONTHS) == 1
