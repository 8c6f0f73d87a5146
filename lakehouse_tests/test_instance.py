"""The project's Dagster instance: the SQLite event log with pooled connections (lakehouse.instance)."""

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from lakehouse.instance import OPEN_DATABASES, PooledSqliteEventLogStorage

REPO = Path(__file__).resolve().parents[1]
MONTHS = dg.MonthlyPartitionsDefinition(start_date="2012-01", end_date="2012-04", fmt="%Y-%m")


def _pooled(base_dir: Path) -> dict:
    return {
        "event_log_storage": {
            "module": "lakehouse.instance",
            "class": "PooledSqliteEventLogStorage",
            "config": {"base_dir": str(base_dir)},
        }
    }


@dg.asset(partitions_def=MONTHS, check_specs=[dg.AssetCheckSpec(f"check_{i}", asset="monthly") for i in range(4)])
def monthly(context: dg.AssetExecutionContext):
    yield dg.MaterializeResult(metadata={"month": context.partition_key})
    for i in range(4):
        yield dg.AssetCheckResult(check_name=f"check_{i}", passed=i != 3, metadata={"i": i})


@dg.asset(deps=[monthly])
def observer(context: dg.AssetExecutionContext) -> None:
    """Events logged from several threads at once, as the lakehouse's month workers do."""

    def log(i: int) -> None:
        context.log_event(dg.AssetObservation(asset_key=dg.AssetKey("monthly"), metadata={"i": i}))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(log, range(24)))


def _history(instance: dg.DagsterInstance) -> dict:
    """What the UI reads back: per run its event types, per month its materialization and check results."""
    runs = {}
    for run in instance.get_runs():
        records = instance.get_records_for_run(run.run_id).records
        runs[run.tags.get("dagster/partition", "observer")] = sorted(r.event_log_entry.dagster_event_type.value for r in records)
    materialized = {
        r.partition_key: r.asset_materialization.metadata["month"].value  # type: ignore[union-attr]
        for r in instance.fetch_materializations(dg.AssetKey("monthly"), limit=100).records
    }
    checks = sorted(
        (key.name, r.partition or "", r.status.value)
        for key in [dg.AssetCheckKey(dg.AssetKey("monthly"), f"check_{i}") for i in range(4)]
        for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    )
    observed = len(instance.fetch_observations(dg.AssetKey("monthly"), limit=100).records)
    return {"runs": runs, "materialized": materialized, "checks": checks, "observed": observed}


def _materialize_all(instance: dg.DagsterInstance) -> None:
    for month in MONTHS.get_partition_keys():
        assert dg.materialize([monthly], instance=instance, partition_key=month).success  # a failed check is a warning
    assert dg.materialize([monthly, observer], instance=instance, selection=[observer]).success


def test_the_pooled_event_log_records_what_dagsters_own_records(tmp_path: Path) -> None:
    (tmp_path / "stock").mkdir()
    (tmp_path / "pooled").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "stock")) as stock:
        _materialize_all(stock)
        expected = _history(stock)
    with dg.instance_for_test(temp_dir=str(tmp_path / "pooled"), overrides=_pooled(tmp_path / "pooled_events")) as pooled:
        assert isinstance(pooled.event_log_storage, PooledSqliteEventLogStorage)
        _materialize_all(pooled)
        assert _history(pooled) == expected
    assert expected["observed"] == 24 and len(expected["materialized"]) == 3
    assert expected["checks"].count(("check_3", "", "FAILED")) == 3
    assert ("check_0", "2012-02", "PLANNED") in expected["checks"]


def test_connections_stay_open_for_the_most_recent_databases_only(tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=_pooled(tmp_path / "events")) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        for _ in range(OPEN_DATABASES + 3):
            dg.materialize([monthly], instance=instance, partition_key="2012-01")
        assert len(storage._engines) == OPEN_DATABASES
        assert "index" in storage._engines  # the asset index is used by every run
        storage.wipe()
        assert set(storage._engines) <= {"index"}  # no connection left on a deleted run database
        dg.materialize([monthly], instance=instance, partition_key="2012-03")
        assert [r.partition_key for r in instance.fetch_materializations(dg.AssetKey("monthly"), limit=10).records] == ["2012-03"]


def test_the_projects_instance_file_selects_the_pooled_event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        assert Path(storage._base_dir) == tmp_path / "history" / "runs"


def test_a_watcher_of_a_run_sees_each_event_as_it_is_written(tmp_path: Path) -> None:
    """The UI's live run view watches the run's database file: events written through a kept-open
    connection (another process's storage, e.g. a run worker) must still reach it one by one."""
    import threading
    import time

    from dagster._core.events.log import EventLogEntry

    writer, watcher = PooledSqliteEventLogStorage(str(tmp_path)), PooledSqliteEventLogStorage(str(tmp_path))
    run_id = "0" * 8 + "-live"

    def entry(i: int) -> EventLogEntry:
        return EventLogEntry(
            error_info=None, level="INFO", user_message=f"event {i}", run_id=run_id, timestamp=time.time(), dagster_event=None
        )

    writer.store_event(entry(0))  # the run's database exists before anyone watches it
    seen: list[str] = []
    arrived = threading.Event()

    def callback(event: EventLogEntry, _cursor) -> None:
        seen.append(event.user_message)
        if len(seen) == 4:
            arrived.set()

    watcher.watch(run_id, None, callback)
    try:
        for i in range(1, 4):
            writer.store_event(entry(i))
            time.sleep(0.3)
        assert arrived.wait(20), f"the watcher saw {seen}"
        assert seen == [f"event {i}" for i in range(4)]
    finally:
        watcher.end_watch(run_id, callback)
        watcher.dispose()
        writer.dispose()
