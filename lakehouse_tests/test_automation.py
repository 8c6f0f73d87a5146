"""The project-wide automation policy: who follows whom, when, and that it never floods the instance.

Evaluated with ``dg.evaluate_automation_conditions`` (the daemon's own evaluator, no runs, no Spark):
materializations are reported as events, ticks are evaluated one after another with the previous cursor.
"""

import datetime as dt

import dagster as dg
import pytest

from lakehouse.factories import build_definitions
from lakehouse.factories.automation import (
    AUTOMATION_SENSOR,
    FRESHNESS_ZONES,
    ML_RETRAIN_CRON,
    ml_condition,
    zone_condition,
)
from lakehouse_tests.conftest import FIXTURE_MODEL_KEYS, REPO

LANDING = dg.AssetKey(["landing", "meter_readings"])
FORMATTED = dg.AssetKey(["formatted", "meter_readings"])
TRUSTED = dg.AssetKey(["trusted", "meter_readings"])
VIEW = dg.AssetKey(["exploitation", "daily_consumption"])
#: the fixture forecast's training chain over VIEW, upstream first (features ... champion)
CHAIN = [dg.AssetKey(k) for k in FIXTURE_MODEL_KEYS]
MODEL = CHAIN[0]
#: a Monday, one hour before the retrain cron (Mondays 04:00 UTC)
MONDAY_3AM = dt.datetime(2024, 1, 1, 3, 0, tzinfo=dt.UTC)


class Ticks:
    """The automation sensor's ticks against one instance, at chosen times, cursor carried over."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None

    def __call__(self, at: dt.datetime) -> dict[str, list[str]]:
        result = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self.cursor, evaluation_time=at)
        self.cursor = result.cursor
        return {
            k.to_user_string(): sorted(p or "-" for p in result.get_requested_partitions(k))
            for k in self.defs.resolve_asset_graph().get_all_asset_keys()
            if result.get_num_requested(k)
        }


@pytest.fixture
def defs(make_project):
    return build_definitions(make_project())


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def landed(instance: dg.DagsterInstance, key: dg.AssetKey, *months: str | None) -> None:
    for month in months:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=month))


def test_policy_is_applied_once_to_every_asset(defs, make_project):
    project = make_project()
    graph = defs.resolve_asset_graph()
    labels = {k.to_user_string(): (graph.get(k).automation_condition or None) for k in graph.get_all_asset_keys()}
    assert labels["landing/meter_readings"] is None, "landing is driven by sensors and schedules"
    for key in ("formatted/meter_readings", "trusted/meter_readings", "exploitation/daily_consumption"):
        assert labels[key].get_label() == zone_condition().get_label()
    for key in CHAIN:
        assert labels[key.to_user_string()].get_label() == ml_condition().get_label()
        assert ML_RETRAIN_CRON in labels[key.to_user_string()].get_label()

    for source in project.sources:
        for zone in FRESHNESS_ZONES:
            policy = graph.get(dg.AssetKey([zone, source.name])).freshness_policy
            assert policy.fail_window.to_timedelta() == dt.timedelta(hours=source.freshness.max_lag_hours)
    assert graph.get(VIEW).freshness_policy is None

    (sensor,) = [s for s in defs.get_repository_def().sensor_defs if s.name == AUTOMATION_SENSOR]
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.asset_selection.resolve(graph) == graph.get_all_asset_keys()


def test_months_per_run_switches_zone_backfills_to_multi_run(make_project):
    defs = build_definitions(make_project(), months_per_run=3)
    for asset in defs.assets:
        if asset.partitions_def is not None:
            assert asset.backfill_policy == dg.BackfillPolicy.multi_run(3)
    single = build_definitions(make_project())
    assert {a.backfill_policy for a in single.assets if a.partitions_def is not None} == {dg.BackfillPolicy.single_run()}
    with pytest.raises(ValueError, match="months_per_run"):
        build_definitions(make_project(), months_per_run=0)


def test_first_tick_on_a_half_filled_lake_requests_nothing(defs, instance):
    # months landed before automation existed: downstream is missing them, but that is a backfill's job
    landed(instance, LANDING, "2012-01", "2012-02", "2012-03")
    landed(instance, FORMATTED, "2012-01")
    tick = Ticks(defs, instance)
    assert tick(MONDAY_3AM) == {}
    assert tick(MONDAY_3AM + dt.timedelta(minutes=1)) == {}


def settle(tick: Ticks, instance: dg.DagsterInstance, start: dt.datetime, max_ticks: int = 6) -> list[dict]:
    """Tick until nothing is requested, reporting each request as done (materialized, blocking checks
    passed) as a run would; every tick's requests, in order."""
    graph = tick.defs.resolve_asset_graph()
    blocking = {}
    for asset in tick.defs.assets:
        for spec in asset.check_specs:
            if spec.blocking:
                blocking.setdefault(spec.asset_key, []).append(spec.name)
    history = []
    for i in range(max_ticks):
        requested = tick(start + dt.timedelta(minutes=i))
        history.append(requested)
        if not requested:
            return history
        for name, months in requested.items():
            key = dg.AssetKey(name.split("/"))
            partitioned = graph.get(key).partitions_def is not None
            for month in months:
                partition = month if partitioned else None
                landed(instance, key, partition)
                for check in blocking.get(key, []):
                    instance.report_runless_asset_event(
                        dg.AssetCheckEvaluation(asset_key=key, check_name=check, passed=True, partition=partition)
                    )
    raise AssertionError(f"still requesting after {max_ticks} ticks: {history}")


def test_a_late_file_refreshes_its_month_downstream_not_only_the_latest(defs, instance):
    landed(instance, LANDING, "2012-01", "2012-02", "2012-03")
    tick = Ticks(defs, instance)
    tick(MONDAY_3AM)
    landed(instance, LANDING, "2012-02")  # a late file for an old month
    history = settle(tick, instance, MONDAY_3AM + dt.timedelta(minutes=1))
    # formatted, trusted and the view in one tick (one backfill): trusted's blocking checks are partitioned
    # and requested with its month, so all_deps_blocking_checks_passed lets the view join the run, where a
    # failed check would hold the view's month (factories.common.held_months)
    assert history[0][FORMATTED.to_user_string()] == history[0][TRUSTED.to_user_string()] == ["2012-02"]
    assert history[0][VIEW.to_user_string()] == ["2012-02"]
    # only that month, each asset once, and nothing else: 2012-01 and 2012-03 stay as they were
    requested = [(name, month) for h in history for name, months in h.items() for month in months]
    assert len(requested) == len(set(requested))
    assert {month for _, month in requested} <= {"2012-02", "-"}
    assert history[-1] == {}


def test_reenabled_sensor_requests_each_update_once(defs, instance):
    tick = Ticks(defs, instance)
    tick(MONDAY_3AM)
    # the sensor is stopped for five weeks (no ticks) while twelve months land
    months = [f"2013-{m:02d}" for m in range(1, 13)]
    landed(instance, LANDING, *months)
    history = settle(tick, instance, MONDAY_3AM + dt.timedelta(days=35))
    # the first tick after re-enabling requests exactly the updated months, as one batch per asset
    assert history[0][FORMATTED.to_user_string()] == history[0][TRUSTED.to_user_string()] == months
    requested = [(name, month) for h in history for name, ms in h.items() for month in ms]
    assert len(requested) == len(set(requested)), "nothing is requested twice"
    # a retrained forecast re-predicts every month (ml/*_predictions); the zones touch only what changed
    zone_months = {month for name, month in requested if not name.startswith("ml/")}
    assert zone_months <= set(months) | {"-"}, "the 36 months that did not change stay untouched"
    assert len(history) <= 4, history


def test_model_retrains_once_per_cron_tick_after_its_input_changed(defs, instance):
    tick = Ticks(defs, instance)
    tick(MONDAY_3AM)
    landed(instance, VIEW, "2012-01")
    assert MODEL.to_user_string() not in tick(MONDAY_3AM + dt.timedelta(minutes=30)), "before the cron tick"
    retrain = {key.to_user_string(): ["-"] for key in CHAIN}
    assert tick(MONDAY_3AM + dt.timedelta(minutes=61)) == retrain, "the whole chain, in one tick"
    assert tick(MONDAY_3AM + dt.timedelta(minutes=62)) == {}
    for key in CHAIN:  # the run materializes the chain, upstream first
        landed(instance, key, None)
    # next Monday, no new data: no retrain
    assert tick(MONDAY_3AM + dt.timedelta(days=7, minutes=61)) == {}
    # five weeks without ticks, data changed several times: one retrain, not five
    for month in ("2012-02", "2012-03", "2012-04"):
        landed(instance, VIEW, month)
    assert tick(MONDAY_3AM + dt.timedelta(days=42, minutes=61)) == retrain
    assert tick(MONDAY_3AM + dt.timedelta(days=42, minutes=62)) == {}


MONTHS = dg.MonthlyPartitionsDefinition(start_date="2012-01", end_date="2012-04", fmt="%Y-%m")


class GateConfig(dg.Config):
    passes: bool = True


@dg.asset(
    key=["trusted", "gated"],
    partitions_def=MONTHS,
    check_specs=[dg.AssetCheckSpec("conservation", asset=dg.AssetKey(["trusted", "gated"]), blocking=True)],
)
def gated(config: GateConfig):
    return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=config.passes)])


@dg.asset(key=["exploitation", "follower"], partitions_def=MONTHS, deps=[gated], automation_condition=zone_condition())
def follower():
    return None


def test_downstream_never_runs_past_a_failed_blocking_check(instance):
    assets = [gated, follower]
    tick = Ticks(dg.Definitions(assets=assets), instance)
    tick(MONDAY_3AM)

    def run(passes: bool) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [gated],
            partition_key="2012-02",
            instance=instance,
            run_config={"ops": {"trusted__gated": {"config": {"passes": passes}}}},
            raise_on_error=False,
        )

    failed = run(passes=False)
    assert not failed.success, "a failed blocking check fails the run"
    assert tick(MONDAY_3AM + dt.timedelta(minutes=1)) == {}
    assert tick(MONDAY_3AM + dt.timedelta(minutes=2)) == {}
    assert run(passes=True).success
    assert tick(MONDAY_3AM + dt.timedelta(minutes=3)) == {"exploitation/follower": ["2012-02"]}


def test_every_run_of_the_project_carries_its_max_runtime(make_project, configs_copy, tmp_path):
    """Jobs, schedules and sensors tag their runs with ``dagster/max_runtime`` from lakehouse.yaml; the run
    monitoring daemon that enforces it is enabled, with a default for runs launched without the tag."""
    import yaml

    from lakehouse.factories.sensors import build_inbox_sensor

    main = configs_copy / "lakehouse.yaml"
    main.write_text(main.read_text().replace("run_max_runtime_s: 21600", "run_max_runtime_s: 1234"))
    project = make_project(configs_copy)
    defs = build_definitions(project)
    tag = dg.MAX_RUNTIME_SECONDS_TAG
    assert tag == "dagster/max_runtime"
    jobs = [j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")]
    assert jobs and {j.name: j.tags.get(tag) for j in jobs} == {j.name: "1234" for j in jobs}
    sensors = {s.name: s for s in defs.sensors}
    assert sensors["lakehouse_automation"].run_tags[tag] == "1234"
    # the requests of the inbox sensors and schedules carry it too
    inbox = project.resolve(project.source("meter_readings").collector.inbox)
    inbox.mkdir(parents=True)
    (inbox / "meter_M1_2012-01.csv").write_text("device_id;timestamp;reading_kwh\nM1;2012-01-01T00:00:00Z;1.0\n")
    job = defs.resolve_job_def("meter_readings_landing")
    sensor = build_inbox_sensor(project, project.source("meter_readings"), job, settle_seconds=0)
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        (request,) = result.run_requests
        assert request.tags[tag] == "1234" and request.tags["lakehouse/trigger"] == "inbox"
        schedule = next(s for s in defs.schedules if s.name == "customers_monthly")
        when = dt.datetime(2013, 2, 1, 6, tzinfo=dt.UTC)
        tick = schedule.evaluate_tick(
            dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
        )
        assert [r.tags[tag] for r in tick.run_requests] == ["1234"]
    for name in ("dagster.yaml", "dagster.postgres.yaml"):
        monitoring = yaml.safe_load((REPO / "dagster_home" / name).read_text())["run_monitoring"]
        assert monitoring["enabled"] is True and monitoring["max_runtime_seconds"] > 0
