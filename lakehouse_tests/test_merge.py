"""``Lake.merge``: an upsert computed by Spark, staged by its tasks and committed by the driver as one
replace of the table (the merge views, e.g. the golden customers: one row per entity)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lakehouse.io.lake import Lake
from lakehouse.io.spark import arrow_frame

KW = {"on": ["golden_id"], "newer": "last_seen_month", "keep_first": ["first_seen_month"]}


def _rows(spark, month: str, rows: list[tuple[str | None, str]], last: str | None = None):
    return arrow_frame(
        spark,
        pa.table(
            {
                "golden_id": pa.array([g for g, _ in rows], pa.string()),
                "name": [n for _, n in rows],
                "first_seen_month": [month] * len(rows),
                "last_seen_month": pa.array([last or month] * len(rows) if last != "null" else [None] * len(rows), pa.string()),
            }
        ),
    )


def _state(lake: Lake, version: int | None = None) -> dict:
    return {r["golden_id"]: r for r in lake.read_arrow("exploitation", "golden", version=version).to_pylist()}


def test_lake_merge_updates_golden_records_as_months_arrive(spark, tmp_path, collected):
    lake = Lake(tmp_path)
    rows0, v0 = lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-01", [("G1", "Anna"), ("G2", "Ben")]), **KW)
    rows1, v1 = lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-02", [("G1", "Anna M."), ("G3", "Carla")]), **KW)
    assert (rows0, rows1, v1) == (2, 2, v0 + 1)
    # a rerun of an older month does not undo the newer state, and first_seen stays the earliest
    lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-01", [("G1", "Anna"), ("G3", "Carla (old)")]), **KW)
    got = _state(lake)
    assert set(got) == {"G1", "G2", "G3"}
    assert got["G1"]["name"] == "Anna M." and got["G1"]["first_seen_month"] == "2012-01"
    assert got["G1"]["last_seen_month"] == "2012-02"
    assert got["G3"]["name"] == "Carla" and got["G3"]["first_seen_month"] == "2012-01"
    assert got["G2"] == {"golden_id": "G2", "name": "Ben", "first_seen_month": "2012-01", "last_seen_month": "2012-01"}
    assert not lake.partitioned("exploitation", "golden")
    # time travel: the first version still has the first month's state
    assert {g: r["name"] for g, r in _state(lake, v0).items()} == {"G1": "Anna", "G2": "Ben"}
    # the driver collected file lists and counts, never a row of the table or of the new rows
    assert collected and not any("name" in c or "golden_id" in c for c in collected), collected
    before = lake.version("exploitation", "golden")
    with pytest.raises(ValueError, match="repeat a key"):
        lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-03", [("G1", "x"), ("G1", "y")]), **KW)
    assert lake.version("exploitation", "golden") == before  # nothing committed


def test_merge_without_newer_a_null_newer_and_null_keys(spark, tmp_path):
    """Without ``newer`` every matched row takes the new values (``keep_first`` still the smaller); a null
    ``newer`` is never newer (only ``keep_first`` moves); a null key never matches, so it is inserted."""
    lake = Lake(tmp_path)
    plain = {"on": ["golden_id"], "keep_first": ["first_seen_month"]}
    lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-02", [("G1", "Anna"), (None, "nobody")]), **plain)
    lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-03", [("G1", "Anna M."), (None, "nobody 2")]), **plain)
    got = lake.read_arrow("exploitation", "golden").to_pylist()
    assert sorted(r["name"] for r in got if r["golden_id"] is None) == ["nobody", "nobody 2"]
    [g1] = [r for r in got if r["golden_id"] == "G1"]
    assert (g1["name"], g1["first_seen_month"], g1["last_seen_month"]) == ("Anna M.", "2012-02", "2012-03")
    lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-01", [("G1", "older")], last="null"), **KW)
    [g1] = [r for r in lake.read_arrow("exploitation", "golden").to_pylist() if r["golden_id"] == "G1"]
    assert (g1["name"], g1["first_seen_month"], g1["last_seen_month"]) == ("Anna M.", "2012-01", "2012-03")


def test_merge_refuses_other_columns(spark, tmp_path):
    lake = Lake(tmp_path)
    lake.merge(spark, "exploitation", "golden", _rows(spark, "2012-01", [("G1", "Anna")]), **KW)
    with pytest.raises(ValueError, match="merge columns .*newer_col"):
        lake.merge(
            spark, "exploitation", "golden", _rows(spark, "2012-01", [("G1", "Anna")]), on=["golden_id"], newer="newer_col"
        )
    wider = _rows(spark, "2012-01", [("G2", "Ben")]).withColumnRenamed("name", "full_name")
    with pytest.raises(ValueError, match="columns"):
        lake.merge(spark, "exploitation", "golden", wider, **KW)
    assert set(_state(lake)) == {"G1"}
