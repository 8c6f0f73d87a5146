"""A transform view computes a batch of months in one Spark plan (a transform taking ``months``,
``months_per_plan``) and writes exactly the rows and figures per month that computing the months one by one
writes; a transform of one ``month`` still runs a month per plan; the staging of a batch routes each row to
its month's folder and refuses a row of any other month (the batch is then computed again month by month).

The differential test runs ``exploitation/consumption_daily`` over the same fixture lake (copied after its
golden customers were merged) as one plan of two months then one of a month, and as three plans of one
month."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.factories import build_definitions
from lakehouse.io.lake import MONTH_KEY, Lake
from lakehouse.io.staging import stage_months
from lakehouse.specs import load_project
from lakehouse.transforms.views import consumption_daily
from lakehouse_tests.conftest import REPO
from lakehouse_tests.declarations import declare
from lakehouse_tests.test_views import write_fixture_lake

MONTHS = ["2012-01", "2012-02", "2012-03"]
RANGE = {ASSET_PARTITION_RANGE_START_TAG: MONTHS[0], ASSET_PARTITION_RANGE_END_TAG: MONTHS[-1]}
DAILY = dg.AssetKey(["exploitation", "consumption_daily"])

#: the months each test transform below was called with, per view
CALLS: dict[str, list] = {}


def _project(configs: Path, lake_dir: Path, per_plan: int):
    project = load_project(configs, env={"LAKEHOUSE_ROOT": str(lake_dir), "LAKEHOUSE_DEMO_ROOT": str(lake_dir.parent / "world")})
    return project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update={"months_per_plan": per_plan})})


def _materialize(project, keys: list[dg.AssetKey]):
    defs = build_definitions(project)
    result = dg.materialize(
        defs.assets, selection=keys, resources=defs.resources, instance=dg.DagsterInstance.ephemeral(), tags=RANGE
    )
    assert result.success
    return result


def _by_month(lake: Lake, table: str) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for row in lake.read_arrow("exploitation", table).to_pylist():
        out.setdefault(row["month"], []).append(tuple(sorted(row.items())))
    return {m: sorted(rows, key=repr) for m, rows in out.items()}


def _figures(result, key: dg.AssetKey) -> dict[str, tuple]:
    """Each month's (rows, input versions) as its materialization shows them."""
    out = {}
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key == key:
            meta = event.materialization.metadata
            out[event.partition] = (meta["rows"].value, meta["input_versions"].value)
    return out


def _daily_range(base: Path, target: Path, per_plan: int, monkeypatch) -> tuple[Lake, list, dict]:
    """consumption_daily over ``MONTHS`` in a copy of the lake at ``base``, ``months_per_plan=per_plan``:
    the lake, the batches the transform was called with, each month's figures."""
    import lakehouse.transforms.views as views

    shutil.copytree(base, target)
    calls: list[list[str]] = []

    def spy(inputs, months, options):
        calls.append(list(months))
        return consumption_daily(inputs, months, options)

    monkeypatch.setattr(views, "consumption_daily", spy)
    result = _materialize(_project(REPO / "configs", target, per_plan), [DAILY])
    return Lake(target), calls, _figures(result, DAILY)


def test_consumption_daily_in_one_plan_writes_what_month_by_month_writes(spark, tmp_path, monkeypatch):
    base = tmp_path / "base"
    write_fixture_lake(Lake(base), MONTHS)
    _materialize(_project(REPO / "configs", base, 1), [dg.AssetKey(["exploitation", "golden_customers"])])

    batched, batches, batch_figures = _daily_range(base, tmp_path / "batched", 2, monkeypatch)
    single, singles, single_figures = _daily_range(base, tmp_path / "single", 1, monkeypatch)

    assert batches == [MONTHS[:2], MONTHS[2:]]  # a plan of two months (the first batch), then the last month
    assert sorted(singles) == [[m] for m in MONTHS]  # a plan per month (the later ones in threads, any order)
    rows = _by_month(batched, "consumption_daily")
    assert sorted(rows) == MONTHS and rows == _by_month(single, "consumption_daily")
    assert {m: len(r) for m, r in rows.items()} == {"2012-01": 3 * 31, "2012-02": 3 * 29, "2012-03": 3 * 31}
    assert batch_figures == single_figures and sorted(batch_figures) == MONTHS
    assert {m: f[0] for m, f in batch_figures.items()} == {m: len(r) for m, r in rows.items()}
    # one commit per month, as before (the table created by the first)
    history = [h.get(MONTH_KEY) for h in batched.history("exploitation", "consumption_daily")]
    assert batched.version("exploitation", "consumption_daily") == single.version("exploitation", "consumption_daily") == 2
    assert sorted(history) == MONTHS, history


OLD_VIEW = """
name: {name}
inputs:
  - table: trusted/meter_readings
    alias: readings
transform: lakehouse_tests.test_views_batch:{function}
key: [meter_id, date]
"""


def _daily(readings):
    from pyspark.sql import functions as F

    return readings.groupBy("meter_id", F.to_date("ts").alias("date")).agg(
        F.round(F.sum("reading_kwh"), 3).alias("kwh"), F.count("*").alias("hours")
    )


def _daily_months(inputs, months):
    from pyspark.sql import functions as F

    daily = _daily(inputs["readings"])
    return daily.withColumn("month", F.date_format("date", "yyyy-MM")).where(F.col("month").isin(list(months)))


def daily_of_month(inputs, month, options):
    """A transform of one month (the signature every view had before batches)."""
    CALLS.setdefault("old_daily", []).append(month)
    return _daily(inputs["readings"])


def daily_of_months(inputs, months, options):
    """The same rows for a batch of months, each row with its month."""
    CALLS.setdefault("new_daily", []).append(list(months))
    return _daily_months(inputs, months)


def daily_with_a_stray_row(inputs, months, options):
    """The same rows, but a batch of several months gives one meter's rows a month outside the batch."""
    from pyspark.sql import functions as F

    CALLS.setdefault("stray_daily", []).append(list(months))
    daily = _daily_months(inputs, months)
    if len(months) > 1:
        daily = daily.withColumn("month", F.when(F.col("meter_id") == "M9", F.lit("2099-01")).otherwise(F.col("month")))
    return daily


def test_a_transform_of_one_month_still_runs_a_month_per_plan(spark, configs_copy, tmp_path):
    views = {"old_daily": "daily_of_month", "new_daily": "daily_of_months", "stray_daily": "daily_with_a_stray_row"}
    for name, function in views.items():
        declare(configs_copy, "views", name, OLD_VIEW.format(name=name, function=function))
    lake_dir = tmp_path / "lake"
    write_fixture_lake(Lake(lake_dir), MONTHS)
    CALLS.clear()
    _materialize(_project(configs_copy, lake_dir, 12), [dg.AssetKey(["exploitation", name]) for name in views])

    assert sorted(CALLS["old_daily"]) == MONTHS  # one month (a str) per call
    assert CALLS["new_daily"] == [MONTHS]  # the range in one plan
    # the batch's staging job refused the stray rows: each month was computed again alone
    assert CALLS["stray_daily"][0] == MONTHS and sorted(CALLS["stray_daily"][1:]) == [[m] for m in MONTHS]
    lake = Lake(lake_dir)
    old = _by_month(lake, "old_daily")
    assert sorted(old) == MONTHS and old == _by_month(lake, "new_daily") == _by_month(lake, "stray_daily")
    assert {m: len(rows) for m, rows in old.items()} == {"2012-01": 3 * 31, "2012-02": 3 * 29, "2012-03": 3 * 31}
    assert [lake.version("exploitation", name) for name in views] == [2, 2, 2]  # a commit per month


SCHEMA = "meter_id string, kwh double, month string"


def test_a_batch_is_staged_under_each_month_and_refuses_a_row_of_another_month(spark, tmp_path):
    lake = Lake(tmp_path)
    uri = lake.table_uri("exploitation", "v")
    data = [(f"M{i % 5}", float(i), MONTHS[i % 3]) for i in range(300)]
    df = spark.createDataFrame(data, SCHEMA).repartition(3)
    staged, schema = stage_months(df, lake.storage, uri, MONTHS)
    assert sorted(staged) == MONTHS
    for month in MONTHS:
        assert all(f["path"].startswith(f"month={month}/") for f in staged[month])
        assert sum(f["rows"] for f in staged[month]) == 100
        lake.commit_month("exploitation", "v", month, staged[month], schema)
    stored = sorted((r["meter_id"], r["kwh"], r["month"]) for r in lake.read_arrow("exploitation", "v").to_pylist())
    assert stored == sorted(data)
    version = lake.version("exploitation", "v")

    # one row of a month outside the batch, or without a month, fails the job: nothing to commit
    stray = df.union(spark.createDataFrame([("M1", 1.0, "2012-04")], SCHEMA))
    with pytest.raises(Exception, match=r"rows for months \['2012-04'\] in a write of months 2012-01, 2012-02, 2012-03"):
        stage_months(stray, lake.storage, uri, MONTHS)
    nulls = df.union(spark.createDataFrame([("M1", 1.0, None)], SCHEMA))
    with pytest.raises(Exception, match=r"rows for months \['null'\] in a write of months"):
        stage_months(nulls, lake.storage, uri, MONTHS)
    # a month's rows without their month column belong to that one month only
    with pytest.raises(ValueError, match="need their 'month' column"):
        stage_months(df.drop("month"), lake.storage, uri, MONTHS)
    assert lake.version("exploitation", "v") == version


def test_a_transform_of_months_must_give_each_row_its_month(spark, tmp_path):
    from lakehouse.factories.exploitation import _ViewMonths, months_together
    from lakehouse.specs.models import ViewSpec

    view = ViewSpec.model_validate(
        {
            "name": "v",
            "inputs": [{"table": "trusted/meter_readings"}],
            "transform": "lakehouse_tests.test_views_batch:daily_of_months",
        }
    )

    def monthless(inputs, months, options):
        return inputs["meter_readings"].drop("month")  # even a batch of one month needs it

    lake = Lake(tmp_path)
    lake.overwrite_month("trusted", "meter_readings", pa.table({"meter_id": ["M1"], "kwh": [1.0]}), MONTHS[0])
    with pytest.raises(ValueError, match="must give each row its 'month' column"):
        _ViewMonths(lake, spark, view, monthless).plan(MONTHS[:1])
    assert not lake.exists("exploitation", "v")
    assert months_together(view, daily_of_months) and not months_together(view, daily_of_month)
    latest = view.model_copy(update={"inputs": [view.inputs[0].model_copy(update={"months": "latest"})]})
    # a latest input's rows are tagged with the month they are read for: the batch says which snapshot each reads
    assert months_together(latest, daily_of_months) and not months_together(latest, daily_of_month)
