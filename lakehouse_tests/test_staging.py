"""Executors write, the driver commits: a month staged by Spark's tasks (``stage_frame``) and committed by
``Lake.commit_month`` / ``Lake.commit_append`` holds the rows the DataFrame holds, in the schema Spark gives
them; a job that fails half-way leaves the table as it was."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from lakehouse.io.lake import MONTH_KEY, Lake
from lakehouse.io.staging import stage_frame

MONTH = "2012-03"
SCHEMA = "meter_id string, ts timestamp, kwh double, n bigint, day date"


def rows(n: int, offset: float = 0.0) -> list[tuple]:
    t0 = dt.datetime(2012, 3, 1, tzinfo=dt.UTC)
    return [
        (f"M{i % 7}", t0 + dt.timedelta(hours=i), i / 3 + offset, None if i % 5 == 0 else i, (t0 + dt.timedelta(hours=i)).date())
        for i in range(n)
    ]


def by_key(table: pa.Table) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def test_a_staged_month_is_the_frame_and_replaces_only_its_month(spark, tmp_path):
    from pyspark.sql import functions as F

    lake = Lake(tmp_path)
    uri = lake.table_uri("exploitation", "v")
    df = spark.createDataFrame(rows(500), SCHEMA).repartition(3)
    staged, schema = stage_frame(df, lake.storage, uri, MONTH)
    assert len(staged) == 3 and sum(f["rows"] for f in staged) == 500  # one file per task; counts, not rows
    version = lake.commit_month("exploitation", "v", MONTH, staged, schema)
    expected = df.withColumn("month", F.lit(MONTH)).toArrow()  # what the driver-side write took
    stored = lake.read_arrow("exploitation", "v")
    assert [(f.name, f.type) for f in stored.schema] == [(f.name, f.type) for f in expected.schema]
    assert by_key(stored) == by_key(expected)
    assert lake.month_rows("exploitation", "v", [MONTH]) == {MONTH: 500}  # the files' statistics are in the log
    # another month added, then this month rewritten with fewer rows: the other month is untouched
    other, _ = stage_frame(spark.createDataFrame(rows(10), SCHEMA), lake.storage, uri, "2012-04")
    lake.commit_month("exploitation", "v", "2012-04", other, schema)
    again, _ = stage_frame(spark.createDataFrame(rows(20, 1.0), SCHEMA), lake.storage, uri, MONTH)
    assert lake.commit_month("exploitation", "v", MONTH, again, schema) == version + 2
    assert lake.month_rows("exploitation", "v", [MONTH, "2012-04"]) == {MONTH: 20, "2012-04": 10}
    # each commit names the month it wrote in the table's own history
    assert [(h["version"], h.get(MONTH_KEY)) for h in lake.history("exploitation", "v")][:3] == [
        (version + 2, MONTH),
        (version + 1, "2012-04"),
        (version, MONTH),
    ]
    assert lake.count_rows("exploitation", "v", MONTH, null="n") == 4  # rows 0, 5, 10, 15


def test_a_job_that_fails_half_way_leaves_the_table_as_it_was(spark, tmp_path):
    """A task fails after other tasks wrote their files: nothing is committed, and the files it left are
    not part of the table."""
    from pyspark.sql import functions as F

    lake = Lake(tmp_path)
    uri = lake.table_uri("exploitation", "v")
    staged, schema = stage_frame(spark.createDataFrame(rows(50), SCHEMA), lake.storage, uri, MONTH)
    version = lake.commit_month("exploitation", "v", MONTH, staged, schema)
    before = by_key(lake.read_arrow("exploitation", "v"))
    # the last of four tasks holds a row of another month: its task raises once the others have written
    bad = (
        spark.createDataFrame(rows(400, 2.0), SCHEMA)
        .repartition(4)
        .withColumn("month", F.when(F.col("kwh") == F.lit(399 / 3 + 2.0), F.lit("2012-04")).otherwise(F.lit(MONTH)))
    )
    with pytest.raises(Exception, match="rows for months \\['2012-04'\\] in a write of month 2012-03"):
        stage_frame(bad, lake.storage, uri, MONTH)
    assert lake.version("exploitation", "v") == version
    assert by_key(lake.read_arrow("exploitation", "v")) == before
    folder = tmp_path / "exploitation" / "v" / f"month={MONTH}"
    assert len(list(folder.glob("*.parquet"))) > len(staged)  # staged files of the failed job are on disk, outside the log
    # the maintenance job's vacuum removes them (here without a retention period); the rows stay
    from lakehouse.io.maintenance import maintain_table

    maintain_table(lake, "exploitation", "v", retention_hours=0)
    listed = {p.rsplit("/", 1)[-1] for p in lake.delta("exploitation", "v").file_uris()}
    assert {p.name for p in folder.glob("*.parquet")} == listed
    assert by_key(lake.read_arrow("exploitation", "v")) == before


def test_appended_files_add_to_an_append_only_table(spark, tmp_path):
    lake = Lake(tmp_path)
    uri = lake.table_uri("quality", "log")
    assert lake.commit_append("quality", "log", {MONTH: []}, pa.schema([])) is None  # nothing to add: no commit
    first, schema = stage_frame(spark.createDataFrame(rows(30), SCHEMA), lake.storage, uri, MONTH)
    lake.commit_append("quality", "log", {MONTH: first}, schema)
    second, _ = stage_frame(spark.createDataFrame(rows(5, 9.0), SCHEMA), lake.storage, uri, MONTH)
    lake.commit_append("quality", "log", {MONTH: second}, schema)
    assert lake.read_arrow("quality", "log").num_rows == 35
    assert lake.count_rows("quality", "log", MONTH, where={"meter_id": "M1"}) == sum(
        1 for r in rows(30) + rows(5) if r[0] == "M1"
    )
    # files of several months (a batch of months' quality rows) go in one commit, which names its months
    april, _ = stage_frame(spark.createDataFrame(rows(4), SCHEMA), lake.storage, uri, "2012-04")
    third, _ = stage_frame(spark.createDataFrame(rows(2), SCHEMA), lake.storage, uri, MONTH)
    before = lake.version("quality", "log")
    assert lake.commit_append("quality", "log", {MONTH: third, "2012-04": april, "2012-05": []}, schema) == before + 1
    assert lake.month_rows("quality", "log", [MONTH, "2012-04"]) == {MONTH: 37, "2012-04": 4}
    assert lake.history("quality", "log")[0].get(MONTH_KEY) == f"{MONTH},2012-04"
