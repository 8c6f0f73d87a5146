"""Table maintenance: compaction, vacuum, and the versions models were trained on stay readable."""

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from lakehouse.factories.common import LakeResource
from lakehouse.factories.maintenance import MAINTENANCE_CRON, MAINTENANCE_JOB, build_maintenance
from lakehouse.io.lake import Lake
from lakehouse.io.maintenance import LineageError, delta_tables, maintain_lake, maintain_table, versions_in_use

MONTHS = ["2012-01", "2012-02"]


def small_commits(lake: Lake, zone: str, table: str, rounds: int) -> list[int]:
    """``rounds`` rewrites of both months plus appends of tiny files; the versions after each round."""
    versions = []
    for r in range(rounds):
        for month in MONTHS:
            lake.overwrite_month(zone, table, pa.table({"value": [r, r + 1], "round": [r, r]}), month)
            lake.append(zone, table, pa.table({"value": [100 + r], "round": [r], "month": [month]}))
        versions.append(lake.version(zone, table))
    return versions


def snapshot(lake: Lake, zone: str, table: str, version: int) -> list[dict]:
    return sorted(lake.read_arrow(zone, table, version=version).to_pylist(), key=lambda r: json.dumps(r, sort_keys=True))


def write_lineage(lake: Lake, pipeline: str, model_version: str, inputs: dict[str, int]) -> Path:
    folder = Path(lake.uri("ml", pipeline, "models", model_version))
    folder.mkdir(parents=True)
    lineage = {"inputs": {t: {"delta_version": v, "months": MONTHS} for t, v in inputs.items()}, "run_id": "r"}
    (folder / "lineage.json").write_text(json.dumps(lineage))
    return folder


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


def test_compacts_and_vacuums_but_keeps_the_versions_models_used(lake):
    versions = small_commits(lake, "exploitation", "daily", rounds=4)
    in_use = versions[1]
    write_lineage(lake, "model_a", "v0001", {"exploitation/daily": in_use})
    expected = snapshot(lake, "exploitation", "daily", in_use)
    current = snapshot(lake, "exploitation", "daily", versions[-1])
    files_before = len(lake.delta("exploitation", "daily").file_uris())
    assert files_before == 4, "each month: one rewritten file + one appended file"

    (result,) = [r for r in maintain_lake(lake, retention_hours=0)[0] if r["table"] == "exploitation/daily"]
    assert result["files_before"] == 4 and result["files_after"] == 2, result
    assert result["files_compacted"] == 4 and result["files_written_by_compaction"] == 2
    assert result["files_vacuumed"] > 0 and result["skipped"] == ""
    assert result["versions_kept_for_models"] == [in_use] == result["versions_kept_readable"]
    # same rows now, and the model's version reads back exactly as it was trained on
    assert snapshot(lake, "exploitation", "daily", lake.version("exploitation", "daily")) == current
    assert snapshot(lake, "exploitation", "daily", in_use) == expected
    # a version no model uses really lost its files (vacuum did its job)
    with pytest.raises(Exception):  # noqa: B017 - delta-rs/arrow raise their own not-found errors
        lake.read_arrow("exploitation", "daily", version=versions[0])


def test_without_models_every_old_version_goes_and_dry_run_changes_nothing(lake):
    small_commits(lake, "trusted", "t", rounds=3)
    before = lake.version("trusted", "t")
    dry = maintain_table(lake, "trusted", "t", retention_hours=0, dry_run=True)
    assert dry["files_vacuumable"] > 0 and dry["files_vacuumed"] == 0
    assert lake.version("trusted", "t") == before, "a dry run commits nothing"
    done = maintain_table(lake, "trusted", "t", retention_hours=0)
    # 12 files written by 3 rounds, all replaced by the 2 files compaction wrote
    assert done["files_vacuumed"] == dry["files_vacuumable"] + done["files_compacted"] == 12
    assert done["versions_kept_for_models"] == []
    # a second run has nothing left to do
    again = maintain_table(lake, "trusted", "t", retention_hours=0)
    assert again["files_compacted"] == 0 and again["files_vacuumed"] == 0


def test_default_retention_keeps_recent_files(lake):
    small_commits(lake, "trusted", "t", rounds=2)
    result = maintain_table(lake, "trusted", "t")
    assert result["retention_hours"] == 168
    assert result["files_vacuumed"] == 0, "nothing is a week old yet"
    assert lake.read_arrow("trusted", "t", version=0).num_rows > 0


def test_lineage_versions_are_collected_and_a_broken_lineage_stops_everything(lake):
    small_commits(lake, "exploitation", "daily", rounds=2)
    write_lineage(lake, "model_a", "v0001", {"exploitation/daily": 1, "trusted/t": 3})
    write_lineage(lake, "model_a", "v0002", {"exploitation/daily": 2})
    write_lineage(lake, "model_b", "v0001", {"exploitation/daily": 1})
    assert versions_in_use(lake) == {("exploitation", "daily"): {1, 2}, ("trusted", "t"): {3}}
    assert delta_tables(lake) == [("exploitation", "daily")]

    broken = Path(lake.uri("ml", "model_c", "models", "v0001"))
    broken.mkdir(parents=True)
    (broken / "lineage.json").write_text("{not json")
    version = lake.version("exploitation", "daily")
    with pytest.raises(LineageError, match="model_c"):
        maintain_lake(lake, retention_hours=0)
    assert lake.version("exploitation", "daily") == version, "nothing touched"


def test_maintenance_job_reports_per_table_and_is_scheduled_weekly(lake):
    small_commits(lake, "trusted", "t", rounds=2)
    small_commits(lake, "quality", "quarantine", rounds=2)
    key = dg.AssetKey(["trusted", "t"])
    job, schedule = build_maintenance([key])
    assert job.name == MAINTENANCE_JOB and schedule.cron_schedule == MAINTENANCE_CRON
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            resources={"lake": LakeResource(root=str(lake.root))},
            run_config={"ops": {"maintain_delta_tables": {"config": {"retention_hours": 0}}}},
        )
        assert result.success
        observations = instance.fetch_observations(key, limit=10).records
        assert len(observations) == 1, "an observation on the table's asset (not on non-asset tables)"
        meta = observations[0].asset_observation.metadata
        assert meta["files_before"].value == 4 and meta["files_after"].value == 2
    assert len(lake.delta("quality", "quarantine").file_uris()) == 2, "every Delta table is maintained"


def test_staged_files_no_commit_lists_are_swept_once_old(lake, tmp_path):
    """A run that crashed between staging Parquet and committing it, or mid-write, leaves files no Delta log
    lists: the maintenance job deletes those older than the threshold, keeps young ones (a commit may be in
    flight) and every file a version lists, and counts them in its metadata."""
    import os
    import time
    import uuid

    small_commits(lake, "formatted", "meters", rounds=2)
    table = Path(lake.table_uri("formatted", "meters"))
    listed = sorted(p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts)
    day_ago = time.time() - 48 * 3600

    def planted(path: Path, old: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 staged")
        if old:
            os.utime(path, (day_ago, day_ago))
        return path

    staged = planted(table / "month=2012-01" / f"part-{uuid.uuid4().hex}-c000.snappy.parquet")
    young = planted(table / "month=2012-02" / f"part-{uuid.uuid4().hex}-c000.snappy.parquet", old=False)
    partial_upload = planted(table / "month=2012-01" / "part-x.snappy.parquet#3")
    dot_part = planted(Path(lake.uri("ml", "model_a", "models")) / ".v0002.part" / "model.joblib.part")
    # a table whose first commit never happened: no log, its staged file is swept, other files kept
    never = planted(Path(lake.table_uri("trusted", "new")) / "month=2012-01" / f"part-{uuid.uuid4().hex}-c000.snappy.parquet")
    model = planted(Path(lake.uri("ml", "model_a", "models")) / "v0001" / "model.parquet")
    landing_partial = planted(Path(lake.landing_uri("meters", "2012-01")) / "m.csv#1")
    for p in listed:
        os.utime(p, (day_ago, day_ago))  # listed files are kept however old

    job, _ = build_maintenance([], staged_orphan_age_h=24)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, resources={"lake": LakeResource(root=str(lake.root))})
        assert result.success
        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        swept = output.event_specific_data.metadata["staged_files_swept"].value
    gone = [staged, partial_upload, dot_part, never, landing_partial]
    assert swept == len(gone) and not any(p.exists() for p in gone)
    assert young.exists() and model.exists() and all(p.exists() for p in listed)
    assert lake.read_arrow("formatted", "meters").num_rows > 0  # the table still reads
