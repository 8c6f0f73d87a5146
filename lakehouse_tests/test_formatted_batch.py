"""The formatted zone computes a batch of months in one Spark plan (``months_per_plan``) and writes exactly
the rows, quarantine records and figures per month that formatting the months one by one writes.

A differential test: the same landed files formatted as one plan of three months and as three plans of one
month, in two lakes; one month takes the fast lane only, the others mix a clean file with a malformed one
(the Spark lane, with rejected rows). The plan's months publish their quarantine in one quarantine commit
and one metrics commit, with what the months publish one by one.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.factories import build_definitions
from lakehouse.io import formatting
from lakehouse.io.lake import Lake
from lakehouse.io.storage import Storage
from lakehouse.quality import metrics, quarantine
from lakehouse.specs.models import SourceSpec
from lakehouse_tests.declarations import HEAT_DROP, declare
from lakehouse_tests.test_executors import METER, meter_file

MONTHS = ["2012-01", "2012-02", "2012-03"]
HEADER = b"meter_id,ts,reading_kwh\n"
DROPS = {
    "heat_a_2012-01.csv": HEADER + b"M1,2012-01-01T00:00:00Z,1.0\nM1,2012-01-01T01:00:00Z,2.0\n",
    "heat_a_2012-02.csv": HEADER + b"M1,2012-02-01T00:00:00Z,3.0\nM1,2012-02-01T01:00:00Z,4.0\n",
    # malformed: a value that does not cast, a row of another month, a line with a missing field
    "heat_b_2012-02.csv": HEADER
    + b"M2,2012-02-01T00:00:00Z,oops\nM2,2012-02-02T00:00:00Z,5.0\nM2,2012-03-01T00:00:00Z,6.0\nM2,2012-02-03T00:00:00Z\n",
    "heat_a_2012-03.csv": HEADER + b"M1,2012-03-01T00:00:00Z,7.0\nM3,2012-03-02T00:00:00Z,8.0\n",
    # a file of one line that does not cast: March has rejected rows too
    "heat_b_2012-03.csv": HEADER + b"M4,2012-03-03T00:00:00Z,bad\n",
}
RANGE = {ASSET_PARTITION_RANGE_START_TAG: MONTHS[0], ASSET_PARTITION_RANGE_END_TAG: MONTHS[-1]}


def _formatted_range(configs: Path, make_project, lake_dir: Path, per_plan: int, monkeypatch) -> tuple[Lake, list, dict]:
    """Land and format ``MONTHS`` into a lake of its own with ``months_per_plan=per_plan``: the lake, the
    batches of months the formatting was called with, and each month's formatted figures."""
    import lakehouse.factories.formatted as formatted

    project = make_project(configs, LAKEHOUSE_ROOT=str(lake_dir))
    project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update={"months_per_plan": per_plan})})
    defs = build_definitions(project)
    calls: list[list[str]] = []
    figures: dict[str, tuple[int, int, int]] = {}
    real = formatting.format_months

    def spy(session, files, *args, **kwargs):
        calls.append(list(files))
        out = real(session, files, *args, **kwargs)
        figures.update({m: (o.rows, o.rejected, o.fast) for m, o in out.items()})
        return out

    monkeypatch.setattr(formatted, "format_months", spy)
    for zone in ("landing", "formatted"):
        assert _materialize(defs, zone).success
    return Lake(project.lake_root), calls, figures


def _materialize(defs: dg.Definitions, zone: str, **kwargs) -> dg.ExecuteInProcessResult:
    key = dg.AssetKey([zone, "heat_drop"])
    return dg.materialize(defs.assets, selection=[key], tags=RANGE, resources=defs.resources, **kwargs)


def _commits(lake: Lake, *table: str) -> int:
    """The commits of a quality table (its version + 1; 0 when it does not exist)."""
    version = lake.version(*table)
    return 0 if version is None else version + 1


def _published(lake: Lake) -> list[tuple]:
    """The metric rows of the current batch of every dataset/stage/month (the publish rows included),
    without the ids and times of their batch."""
    current = set(metrics.current_batches(lake)["batch_id"].to_pylist())
    rows = [r for r in metrics.read(lake).to_pylist() if r["batch_id"] in current]
    return sorted(tuple(r[c] for c in ("dataset", "stage", "month", "metric", "rule", "column", "value")) for r in rows)


def _rows(lake: Lake) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in lake.read_arrow("formatted", "heat_drop").to_pylist():
        out.setdefault(r["month"], []).append((r["meter_id"], r["ts"], r["reading_kwh"], r["_source_file"], r["_source_line"]))
    return {m: sorted(rows) for m, rows in out.items()}


def _quarantined(lake: Lake) -> list[tuple]:
    rows = quarantine.current(lake, dataset="heat_drop", stage="formatted").to_pylist()
    return sorted((r["month"], r["source_file"], r["source_line"], r["error"], r["record"]) for r in rows)


def test_a_range_as_one_plan_writes_what_month_by_month_writes(configs_copy, make_project, tmp_path, spark, monkeypatch):
    inbox = tmp_path / "world" / "inbox" / "heat_drop"
    inbox.mkdir(parents=True)
    for name, data in DROPS.items():
        (inbox / name).write_bytes(data)
    declare(configs_copy, "sources", "heat_drop", HEAT_DROP)

    batched, batches, batch_figures = _formatted_range(configs_copy, make_project, tmp_path / "batched", 3, monkeypatch)
    single, singles, single_figures = _formatted_range(configs_copy, make_project, tmp_path / "single", 1, monkeypatch)

    assert batches == [MONTHS]  # one plan for the range
    assert sorted(singles) == [[m] for m in MONTHS]  # a plan per month (the later ones in parallel threads)
    assert _rows(batched) == _rows(single) and sorted(_rows(batched)) == MONTHS
    assert _quarantined(batched) == _quarantined(single)
    # (rows, rejected rows, files on the fast lane) of each month
    assert batch_figures == single_figures == {"2012-01": (2, 0, 1), "2012-02": (3, 3, 1), "2012-03": (2, 1, 1)}
    assert {(m, f, line) for m, f, line, _, _ in _quarantined(batched)} == {
        *(("2012-02", "heat_b_2012-02.csv", line) for line in (2, 4, 5)),
        ("2012-03", "heat_b_2012-03.csv", 2),
    }
    # one data commit per month, as before
    assert batched.version("formatted", "heat_drop") == single.version("formatted", "heat_drop") == len(MONTHS) - 1
    # the plan's quarantine rows in one commit and its months' publish rows in one; month by month, a
    # commit per month with rejected rows and a publish per month
    assert (_commits(batched, *quarantine.TABLE), _commits(batched, *metrics.TABLE)) == (1, 1)
    assert (_commits(single, *quarantine.TABLE), _commits(single, *metrics.TABLE)) == (2, 3)
    assert _published(batched) == _published(single)
    assert {(d, s, m, v) for d, s, m, metric, *_, v in _published(batched) if metric == metrics.PUBLISH_METRIC} == {
        ("heat_drop", "formatted", "2012-01", 0.0),
        ("heat_drop", "formatted", "2012-02", 3.0),
        ("heat_drop", "formatted", "2012-03", 1.0),
    }


def test_a_month_whose_commit_fails_is_not_published_and_a_rerun_publishes_it(
    configs_copy, make_project, tmp_path, spark, monkeypatch
):
    """In a plan of three months, the second month's data commit fails: the other two are committed and
    published (in one commit per quality table), the second is not; a rerun of the range publishes it,
    superseding the first run's months."""
    inbox = tmp_path / "world" / "inbox" / "heat_drop"
    inbox.mkdir(parents=True)
    for name, data in DROPS.items():
        (inbox / name).write_bytes(data)
    declare(configs_copy, "sources", "heat_drop", HEAT_DROP)
    project = make_project(configs_copy, LAKEHOUSE_ROOT=str(tmp_path / "lake"))
    project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update={"months_per_plan": 3})})
    defs, lake = build_definitions(project), Lake(project.lake_root)
    assert _materialize(defs, "landing").success
    real = Lake.commit_month

    def commit_month(self, zone, table, month, *args, **kwargs):
        if (zone, month) == ("formatted", MONTHS[1]):
            raise OSError("disk full")
        return real(self, zone, table, month, *args, **kwargs)

    monkeypatch.setattr(Lake, "commit_month", commit_month)
    assert not _materialize(defs, "formatted", raise_on_error=False).success
    assert lake.months("formatted", "heat_drop") == [MONTHS[0], MONTHS[2]]
    published = metrics.current_batches(lake).to_pylist()
    assert sorted((b["stage"], b["month"]) for b in published) == [("formatted", MONTHS[0]), ("formatted", MONTHS[2])]
    assert {m for m, *_ in _quarantined(lake)} == {MONTHS[2]}
    assert (_commits(lake, *quarantine.TABLE), _commits(lake, *metrics.TABLE)) == (1, 1)

    monkeypatch.setattr(Lake, "commit_month", real)
    assert _materialize(defs, "formatted").success
    again = metrics.current_batches(lake).to_pylist()
    assert sorted(b["month"] for b in again) == MONTHS
    assert not {b["batch_id"] for b in published} & {b["batch_id"] for b in again}  # the rerun supersedes them
    assert {(m, f, line) for m, f, line, _, _ in _quarantined(lake)} == {
        *(("2012-02", "heat_b_2012-02.csv", line) for line in (2, 4, 5)),
        ("2012-03", "heat_b_2012-03.csv", 2),
    }


def test_a_batch_is_one_job_per_lane_and_stages_each_month_under_its_own_partition(spark, tmp_path, collected):
    inbox = tmp_path / "in"
    inbox.mkdir()
    files: dict[str, list[str]] = {}
    for month in MONTHS:
        clean = meter_file(range(0, 24)).replace(b"2012-01-", f"{month}-".encode())
        dirty = clean.replace(b"T05:00:00Z;5.035", b"T05:00:00Z;oops")
        for name, data in ((f"meter_M0001_{month}.csv", clean), (f"meter_X0001_{month}.csv", dirty)):
            (inbox / name).write_bytes(data)
            files.setdefault(month, []).append(str(inbox / name))
    schema = formatting.data_schema(METER)
    collected.clear()
    rejects = {m: formatting.Rejects(str(tmp_path / "quarantine"), lambda rows: rows) for m in MONTHS}
    out = formatting.format_months(spark, files, METER, Storage("/"), str(tmp_path / "table"), schema, rejects=rejects)

    assert len(collected) == 2  # the fast lane's job and the Spark lane's, for the three months
    assert sorted(out) == MONTHS
    for month, got in out.items():
        assert (got.fast, got.rows, got.rejected) == (1, 24 + 23, 1)
        assert all(s["path"].startswith(f"month={month}/") for s in [*got.staged, *got.quarantined])
        [bad] = pq.read_table(tmp_path / "quarantine" / got.quarantined[0]["path"]).to_pylist()
        assert (bad["month"], bad["_source_file"], bad["_source_line"]) == (month, f"meter_X0001_{month}.csv", 7)
        staged = [pq.read_table(tmp_path / "table" / s["path"]) for s in got.staged]
        assert {t.strftime("%Y-%m") for table in staged for t in table.column("ts").to_pylist()} == {month}


def test_a_source_whose_deliveries_span_months_is_not_batched(spark, tmp_path):
    """One file of such a source can hold rows of several months, and a row's month depends on the month
    being formatted: its months are formatted one per plan (the factory asks for no more)."""
    spec = SourceSpec.model_validate({**METER.model_dump(), "spans_months": True})
    schema = formatting.data_schema(spec)
    rejects = {m: formatting.Rejects(str(tmp_path / "quarantine"), lambda rows: rows) for m in MONTHS}
    with pytest.raises(ValueError, match="one at a time"):
        formatting.format_months(spark, {m: [] for m in MONTHS}, spec, Storage("/"), str(tmp_path / "t"), schema, rejects=rejects)
