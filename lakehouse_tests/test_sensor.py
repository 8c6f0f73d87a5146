"""The inbox sensor (exactly once across ticks, late files, cursor) and the monthly schedules."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import dagster as dg
import pytest

from lakehouse.collectors.inbox import InboxCursor, plan_tick
from lakehouse.factories import build_definitions
from lakehouse.factories.common import resources
from lakehouse.factories.landing import build_landing_asset
from lakehouse.factories.sensors import build_inbox_sensor, landing_job, previous_month
from lakehouse.io.lake import Lake

HEADER = "device_id;timestamp;reading_kwh\n"


def meter_file(inbox, device: str, month: str, value: float = 1.0) -> str:
    name = f"meter_{device}_{month}.csv"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_text(HEADER + f"{device};{month}-01T00:00:00Z;{value:.3f}\n")
    return name


def inbox_sensor(project, **options):
    """The meter inbox sensor inside a minimal Definitions (partitioned requests are resolved against it)."""
    source = project.source("meter_readings")
    job = landing_job(project, source)
    sensor = build_inbox_sensor(project, source, job, **options)
    asset = build_landing_asset(project, source)
    defs = dg.Definitions(assets=[asset], jobs=[job], sensors=[sensor], resources=resources(project))
    return sensor, defs, asset


@pytest.fixture
def setup(make_project):
    project = make_project()
    source = project.source("meter_readings")
    inbox = project.resolve(source.collector.inbox)
    sensor, defs, asset = inbox_sensor(project, settle_seconds=0)
    instance = dg.DagsterInstance.ephemeral()
    state = {"cursor": None}

    def tick():
        """One evaluation with the cursor of the previous one: the run requests by month."""
        context = dg.build_sensor_context(instance=instance, cursor=state["cursor"], definitions=defs)
        result = sensor.evaluate_tick(context)
        state["cursor"] = result.cursor
        return {r.partition_key: r for r in result.run_requests}

    def land(month: str) -> None:
        """Execute the landing run the sensor asked for."""
        res = dg.materialize([asset], partition_key=month, resources=resources(project), instance=instance)
        assert res.success

    return project, inbox, tick, land, state


def test_each_file_triggers_its_month_exactly_once(setup):
    project, inbox, tick, land, state = setup
    meter_file(inbox, "M0001", "2012-01")
    meter_file(inbox, "M0002", "2012-01")
    meter_file(inbox, "M0001", "2012-02")

    first = tick()
    assert sorted(first) == ["2012-01", "2012-02"]
    assert first["2012-01"].tags["lakehouse/files"] == "2"
    assert first["2012-01"].run_key.startswith("meter_readings:2012-01:")
    assert first["2012-01"].run_key != first["2012-02"].run_key

    # nothing new: no request; touching a file without new bytes is no new file either
    assert tick() == {}
    os.utime(inbox / "meter_M0001_2012-01.csv")
    assert tick() == {}

    # the runs land the files; a sensor whose cursor was lost finds everything already landed
    land("2012-01")
    land("2012-02")
    assert tick() == {}
    assert json.loads(state["cursor"])["pending"] == {}, "landed files leave the pending cache"
    state["cursor"] = None
    assert tick() == {}


def test_late_file_retriggers_only_its_month(setup):
    project, inbox, tick, land, state = setup
    for month in ("2012-01", "2012-02", "2012-03"):
        meter_file(inbox, "M0001", month)
    assert sorted(tick()) == ["2012-01", "2012-02", "2012-03"]
    for month in ("2012-01", "2012-02", "2012-03"):
        land(month)

    meter_file(inbox, "M0002", "2012-01")  # a device that reports late
    late = tick()
    assert list(late) == ["2012-01"] and late["2012-01"].tags["lakehouse/files"] == "1"

    # a file that comes back with new bytes triggers its month again; the same bytes never do
    meter_file(inbox, "M0001", "2012-03", value=2.5)
    assert list(tick()) == ["2012-03"]
    assert tick() == {}


def test_cursor_advances_and_a_backlog_drains_in_bounded_ticks(make_project):
    project = make_project()
    source = project.source("meter_readings")
    inbox = project.resolve(source.collector.inbox)
    sensor, defs, _ = inbox_sensor(project, settle_seconds=0, limit=2)
    instance = dg.DagsterInstance.ephemeral()
    months = ["2012-01", "2012-02", "2012-03", "2012-04", "2012-05"]
    for i, month in enumerate(months):
        meter_file(inbox, "M0001", month)
        os.utime(inbox / f"meter_M0001_{month}.csv", ns=(10**18 + i, 10**18 + i))
    cursor, seen, marks = None, [], []
    for _ in range(4):
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        cursor = result.cursor
        marks.append(InboxCursor.parse(cursor).changed_ns)
        seen.append(sorted(r.partition_key for r in result.run_requests))
    assert [len(s) for s in seen] == [2, 2, 1, 0]
    assert sorted(m for s in seen for m in s) == months  # each month once, none lost
    assert marks[0] < marks[1] < marks[2] == marks[3]


def test_files_outside_the_partitions_or_without_a_month_are_skipped(setup):
    project, inbox, tick, land, state = setup
    meter_file(inbox, "M0001", "2011-12")  # before months.start
    (inbox / "meter_M0001_latest.csv").write_text(HEADER)
    (inbox / "meter_M0003_2012-06.csv.part").write_text(HEADER)  # still uploading
    (inbox / "notes.txt").write_text("not a meter file")
    assert tick() == {}
    meter_file(inbox, "M0001", "2012-06")
    assert list(tick()) == ["2012-06"]


def test_unsettled_files_wait_for_the_next_tick(make_project):
    project = make_project()
    source = project.source("meter_readings")
    inbox = project.resolve(source.collector.inbox)
    sensor, defs, _ = inbox_sensor(project, settle_seconds=30)
    meter_file(inbox, "M0001", "2012-01")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), definitions=defs))
    assert result.run_requests == [] and InboxCursor.parse(result.cursor).changed_ns == -1


def test_definitions_register_sensors_schedules_and_jobs(make_project):
    defs = build_definitions(make_project())
    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    schedules = {s.name: s for s in repo.schedule_defs}
    assert {"meter_readings_inbox", "billing_customers_inbox"} <= set(sensors)
    assert {"weather_monthly", "customers_monthly", "calendar_monthly"} <= set(schedules)
    inbox = sensors["meter_readings_inbox"]
    assert inbox.default_status == dg.DefaultSensorStatus.RUNNING
    assert inbox.job_name == "meter_readings_landing"
    job = repo.get_job("meter_readings_landing")
    assert job.asset_layer.executable_asset_keys == {dg.AssetKey(["landing", "meter_readings"])}
    assert schedules["weather_monthly"].cron_schedule == "0 6 2 * *"
    assert schedules["weather_monthly"].job_name == "weather_landing"


@pytest.mark.parametrize(
    ("schedule", "when", "month"),
    [
        ("weather_monthly", datetime(2013, 3, 2, 6, tzinfo=UTC), "2013-02"),  # the month that ended last
        ("weather_monthly", datetime(2013, 1, 2, 6, tzinfo=UTC), "2012-12"),
        ("customers_monthly", datetime(2013, 3, 1, 5, tzinfo=UTC), "2013-02"),  # registry as of Feb's end
        ("calendar_monthly", datetime(2016, 1, 1, 4, tzinfo=UTC), "2015-12"),  # the range's last month
    ],
)
def test_schedules_request_the_month_that_ended_last(make_project, schedule, when, month):
    defs = build_definitions(make_project())
    sched = defs.get_repository_def().get_schedule_def(schedule)
    data = sched.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def()))
    (request,) = data.run_requests
    assert request.partition_key == month and request.tags["lakehouse/trigger"] == "schedule"


@pytest.mark.parametrize("when", [datetime(2026, 5, 2, 6, tzinfo=UTC), datetime(2012, 1, 2, 6, tzinfo=UTC)])
def test_schedule_outside_the_partition_range_skips_with_a_reason(make_project, when):
    defs = build_definitions(make_project())
    sched = defs.get_repository_def().get_schedule_def("weather_monthly")
    data = sched.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def()))
    assert not data.run_requests
    assert f"no partition for {previous_month(when)}" in data.skip_message and "2012-01..2016-01" in data.skip_message


def test_a_tick_over_unchanged_files_hashes_nothing(setup):
    """The cursor spares unchanged files: no read, no hash (the 50k figure is in benchmarks/sensor_tick.py)."""
    project, inbox, tick, land, state = setup
    source = project.source("meter_readings")
    for i in range(300):
        meter_file(inbox, f"M{i:04d}", "2012-01")
    assert list(tick()) == ["2012-01"]
    has_month = lambda m: True  # noqa: E731
    plan = plan_tick(
        source, inbox, Lake(project.lake_root), InboxCursor.parse(state["cursor"]), has_month=has_month, settle_seconds=0
    )
    assert (plan.listed, plan.changed, plan.hashed, plan.requests) == (300, 0, 0, {})
    meter_file(inbox, "M9999", "2012-02")
    plan = plan_tick(
        source, inbox, Lake(project.lake_root), InboxCursor.parse(state["cursor"]), has_month=has_month, settle_seconds=0
    )
    assert (plan.listed, plan.changed, plan.hashed, list(plan.requests)) == (301, 1, 1, ["2012-02"])


def test_a_file_for_a_running_month_is_requested_once_the_month_is_over(make_project, tmp_path):
    project = make_project()
    source = project.source("meter_readings")
    inbox = project.resolve(source.collector.inbox)
    lake = Lake(project.lake_root)
    meter_file(inbox, "M0001", "2015-11")
    meter_file(inbox, "M0001", "2015-12")  # December is still running: no partition yet
    open_months = {"2015-11"}
    in_range = lambda m: "2012-01" <= m < "2016-01"  # noqa: E731

    plan = plan_tick(
        source, inbox, lake, InboxCursor(), has_month=open_months.__contains__, may_become_month=in_range, settle_seconds=0
    )
    assert list(plan.requests) == ["2015-11"] and plan.cursor.deferred == {"meter_M0001_2015-12.csv": "2015-12"}
    again = plan_tick(
        source, inbox, lake, plan.cursor, has_month=open_months.__contains__, may_become_month=in_range, settle_seconds=0
    )
    assert again.requests == {} and again.cursor.deferred == plan.cursor.deferred and again.hashed == 0

    open_months.add("2015-12")  # the month is over
    due = plan_tick(
        source, inbox, lake, again.cursor, has_month=open_months.__contains__, may_become_month=in_range, settle_seconds=0
    )
    assert list(due.requests) == ["2015-12"] and due.cursor.deferred == {}
    # a month past the range's end never becomes a partition: skipped, not remembered
    meter_file(inbox, "M0001", "2016-01")
    past = plan_tick(
        source, inbox, lake, due.cursor, has_month=open_months.__contains__, may_become_month=in_range, settle_seconds=0
    )
    assert past.requests == {} and past.cursor.deferred == {} and past.skipped["month outside the partitions"] == 1
