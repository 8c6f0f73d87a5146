"""Cleaning, per action, on a crafted month whose faults are known row by row.

Three meters, three days of hourly readings in January 2012. Meter M1 carries one fault of each kind,
M2 sent its whole file in Wh, M3 is clean. The repository's meter_readings quality section is applied.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest

from lakehouse.io.lake import Lake
from lakehouse.quality import metrics, quarantine, repairs
from lakehouse.quality.cleaning import IMPUTED, CleanResult, Staging, clean_month, summary_rows
from lakehouse.specs import load_project
from lakehouse.specs.models import SourceSpec
from lakehouse_tests.conftest import REPO

MONTH = "2012-01"
T0 = dt.datetime(2012, 1, 1, tzinfo=dt.UTC)
HOURS = 72
SCHEMA = "meter_id string, ts timestamp, reading_kwh double, _source_file string, _source_line bigint"


def level(h: int) -> float:
    return round(1.0 + 0.3 * math.sin(2 * math.pi * h / 24) + 0.0001 * h, 4)


def meter_source(**quality) -> SourceSpec:
    base = load_project(REPO / "configs", env={}).source("meter_readings")
    if not quality:
        return base
    data = base.model_dump()
    data["quality"] = {**data["quality"], **quality}
    return SourceSpec.model_validate(data)


def crafted_rows() -> list[tuple]:
    rows = []

    def add(meter, h, value, minute=0):
        rows.append((meter, T0 + dt.timedelta(hours=h, minutes=minute), value, f"meter_{meter}_{MONTH}.csv"))

    for h in range(HOURS):
        v = level(h)
        if h in (50, 51, 52):
            continue  # missing hours
        if h == 20:
            v = -0.4  # negative
        if h == 30:
            v = v * 30 + 50  # spike
        if 40 <= h <= 45:
            v = level(40)  # stuck
        add("M1", h, v, minute=30 if h == 60 else 0)  # h60: clock running 30 min late
        if h == 5:
            add("M1", h, v)  # exact duplicate
        if h == 10:
            add("M1", h, v * 2)  # conflicting second reading
    for h in range(HOURS):
        add("M2", h, level(h) * 1.3 * 1000)  # the whole file in Wh
        add("M3", h, level(h) * 0.8)
    lines: dict[str, int] = {}
    out = []
    for meter, ts, value, file in rows:
        lines[file] = lines.get(file, 1) + 1
        out.append((meter, ts, value, file, lines[file]))
    return out


def _utc(v):
    # Spark hands timestamps back as naive datetimes in the session time zone (UTC here)
    # (Arrow's: aware, in UTC); both are made aware with the same tzinfo
    if not isinstance(v, dt.datetime):
        return v
    return v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v.astimezone(dt.UTC)


def as_rows(df) -> list[dict]:
    """Rows of a Spark DataFrame or an Arrow table as dicts (timestamps in UTC either way)."""
    rows = df.to_pylist() if isinstance(df, pa.Table) else [r.asDict() for r in df.collect()]
    return [{k: _utc(v) for k, v in r.items()} for r in rows]


def clean_and_commit(
    formatted, source: SourceSpec, root, *, month: str = MONTH, **kwargs
) -> tuple[CleanResult, dict[str, list[dict]]]:
    """``clean_month`` as the trusted asset runs it: Spark's tasks stage the month, it is committed to a lake
    at ``root``, and the trusted rows, the batch's quarantine rows and changed cells are read back (lineage
    columns named as in trusted)."""
    lake = Lake(root)
    batch = metrics.Batch.new(dataset=source.name, stage="trusted", month=month, run_id="test")
    staging = Staging(
        lake.storage,
        lake.table_uri("trusted", source.name),
        lake.table_uri(*quarantine.TABLE),
        lake.table_uri(*repairs.TABLE),
        batch,
    )
    result = clean_month(formatted, source, month=month, staging=staging, **kwargs)
    quarantine.commit(lake, {batch: result.staged["quarantine"]})
    repairs.commit(lake, {batch: result.staged["repairs"]})
    lake.commit_month("trusted", source.name, month, result.staged["trusted"], result.trusted_schema)
    lineage = {"source_file": "_source_file", "source_line": "_source_line"}

    def batch_rows(table: tuple[str, str], columns: list[str]) -> list[dict]:
        if not lake.exists(*table):
            return []
        t = lake.read_arrow(*table, months=[month])
        t = t.filter(pa.compute.equal(t["batch_id"], batch.batch_id))
        return as_rows(t.rename_columns([lineage.get(c, c) for c in t.column_names]).select(columns))

    rows = {
        "trusted": as_rows(lake.read_arrow("trusted", source.name, months=[month])),
        "rejected": batch_rows(
            quarantine.TABLE, ["rule", "disposition", "error", "_source_file", "_source_line", "key", "record"]
        ),
        "repairs": batch_rows(
            repairs.TABLE, ["key", "column", "old_value", "new_value", "rule", "row_status", "_source_file", "_source_line"]
        ),
    }
    return result, rows


@pytest.fixture(scope="module")
def cleaned(spark, tmp_path_factory):
    """The crafted month as the trusted zone takes it: staged by Spark's tasks, committed, read back."""
    formatted = spark.createDataFrame(crafted_rows(), SCHEMA)
    result, rows = clean_and_commit(formatted, meter_source(), tmp_path_factory.mktemp("lake"))
    out = {
        "result": result,
        **rows,
        "summary": {r["name"]: r for r in summary_rows(result)},
        "formatted_rows": formatted.count(),
    }
    return out


def test_many_tasks_and_small_shares_give_the_rows_and_figures_of_one(spark, cleaned, tmp_path, monkeypatch):
    """The month split over more tasks, each counting its rows in shares of a few rows, gives the same
    trusted, quarantine and repairs rows and the same figures: the tasks' sums add up, and keys repeated
    across shares and tasks are counted once."""
    from lakehouse.quality import cleaning

    monkeypatch.setattr(cleaning, "CHUNK_ROWS", 7)
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        formatted = spark.createDataFrame(crafted_rows(), SCHEMA).repartition(5)
        result, rows = clean_and_commit(formatted, meter_source(), tmp_path)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    collected = cleaned["result"]
    assert len(result.staged["trusted"]) > 1  # more than one task wrote the month
    assert result.counts == collected.counts and result.cells_repaired == collected.cells_repaired
    assert summary_rows(result) == summary_rows(collected)
    assert (result.key_uniqueness_in, result.key_uniqueness_out) == (collected.key_uniqueness_in, collected.key_uniqueness_out)
    assert result.completeness_in == collected.completeness_in and result.completeness_out == collected.completeness_out
    for name in ("trusted", "rejected", "repairs"):
        assert sorted(map(repr, rows[name])) == sorted(map(repr, cleaned[name])), name
    assert len(cleaned["repairs"]) > HOURS and len(cleaned["rejected"]) == 10  # the comparison saw rows


def test_keys_counted_by_spark_match_the_keys_counted_in_the_tasks(spark, cleaned, tmp_path, monkeypatch):
    """The meter month is partitioned by meter, a key column no step changes: each task counts its own
    keys. Counted by Spark's distinct over the keys the tasks emit instead, the figures are the same."""
    from lakehouse.quality import cleaning

    assert cleaning._keys_together(meter_source(), ["meter_id"])
    monkeypatch.setattr(cleaning, "_keys_together", lambda source, partitioned_by: False)
    monkeypatch.setattr(cleaning, "CHUNK_ROWS", 11)
    result, _ = clean_and_commit(spark.createDataFrame(crafted_rows(), SCHEMA).repartition(3), meter_source(), tmp_path)
    collected = cleaned["result"]
    assert (result.key_uniqueness_in, result.key_uniqueness_out) == (collected.key_uniqueness_in, collected.key_uniqueness_out)
    assert result.key_uniqueness_in < 1.0  # the month repeats keys: the counts were compared on something


def staged_plan(spark, tmp_path, monkeypatch) -> tuple[str, dict]:
    """The physical plan of the crafted month's staging job (what the tasks run), and the month's rows."""
    from lakehouse.quality import cleaning

    plans = []
    stage = cleaning._stage

    def recorded(df, *args, **kwargs):
        plans.append(df._jdf.queryExecution().executedPlan().toString())
        return stage(df, *args, **kwargs)

    monkeypatch.setattr(cleaning, "_stage", recorded)
    _, rows = clean_and_commit(spark.createDataFrame(crafted_rows(), SCHEMA), meter_source(), tmp_path)
    (plan,) = plans
    return plan, rows


def test_the_rules_blocks_and_keep_repairs_share_one_sort(spark, tmp_path, monkeypatch):
    """The meter month is sorted twice: for the exact duplicates (before the hour alignment) and once for
    the rules' blocks and both keep-first repairs on (meter_id, ts) (one window each: the rank and the
    kept row together), whose windows partition and order the rows alike (a rule's scope filters a
    block's members instead of splitting the block)."""
    plan, _ = staged_plan(spark, tmp_path, monkeypatch)
    operators = re.findall(r"^[\s+:-]*(?:\*\(\d+\) )?(\w+)", plan, flags=re.M)
    assert (operators.count("Window"), operators.count("Sort")) == (4, 2), plan


def test_the_month_s_shuffle_moves_the_formatted_rows_only(spark, tmp_path, monkeypatch):
    """The one shuffle of the month (by meter) carries the formatted columns; the original record, the id
    and the empty annotation lists are added after it, on each task's own rows."""
    plan, _ = staged_plan(spark, tmp_path, monkeypatch)
    lines = plan.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "Exchange hashpartitioning" in line]
    below = "\n".join(lines[at:])
    for column in ("__orig", "__rid", "__flags", "__status"):
        assert f"{column}#" not in below, (column, below)
    assert "__orig#" in "\n".join(lines[:at])


def test_keys_are_counted_in_the_tasks_only_when_a_key_s_rows_share_a_task():
    from lakehouse.quality import cleaning

    source = meter_source()
    assert cleaning._keys_together(source, ["meter_id", cleaning.MONTH])  # several months in one plan
    assert not cleaning._keys_together(source, [])  # the formatted rows as they come: no partitioning
    assert not cleaning._keys_together(source, ["ts"])  # aligned to the hour: a key's rows may part ways
    assert not cleaning._keys_together(meter_source(key=["ts"]), ["meter_id"])  # not a key column
    # pyarrow would count -0.0 and 0.0 (and NaNs of different bits) as different keys, Spark as one
    assert not cleaning._keys_together(meter_source(key=["meter_id", "reading_kwh"]), ["meter_id"])
    standardized = [{"step": "standardize", "name": "upper", "column": "meter_id", "case": "upper"}]
    assert not cleaning._keys_together(meter_source(cleaning=standardized), ["meter_id"])


def test_the_next_month_reuses_the_generated_code(spark, cleaned, tmp_path):
    """Spark caches generated classes by their code: a month's plans are the same code as the last
    month's, so nothing compiles again (a Python lambda in a higher-order function names its variable
    afresh on every call, and that name is written into the generated code: each month compiled dozens
    of classes anew and ran them interpreted)."""
    metric = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    assert cleaned["formatted_rows"] > 0  # the fixture cleaned the month once in this session
    before = metric.getCount()
    again, _ = clean_and_commit(spark.createDataFrame(crafted_rows(), SCHEMA), meter_source(), tmp_path)
    assert again.counts == cleaned["result"].counts
    assert metric.getCount() - before == 0


def at(h: int, minute: int = 0) -> dt.datetime:
    return T0 + dt.timedelta(hours=h, minutes=minute)


def rejected_by(cleaned, rule: str) -> list[dict]:
    return [r for r in cleaned["rejected"] if rule in r["rule"].split(",")]


def key_ts(row: dict) -> str:
    return json.loads(row["key"])["ts"]


def test_exact_duplicate_is_merged_and_names_the_kept_row(cleaned):
    (dup,) = rejected_by(cleaned, "exact_duplicate")
    assert dup["disposition"] == "merged"
    assert key_ts(dup) == "2012-01-01T05:00:00Z"
    assert dup["error"] == f"identical to meter_M1_{MONTH}.csv:7"  # line 7 is hour 5's first copy
    assert dup["_source_line"] == 8


def test_conflicting_reading_keeps_the_first(cleaned):
    (conflict,) = rejected_by(cleaned, "conflicting_readings")
    assert conflict["disposition"] == "merged"
    assert json.loads(conflict["record"])["reading_kwh"] == pytest.approx(level(10) * 2)
    kept = [r for r in cleaned["trusted"] if r["meter_id"] == "M1" and r["ts"] == at(10)]
    assert [r["reading_kwh"] for r in kept] == [pytest.approx(level(10))]
    # the unique rule saw the same pair (same snapshot) but had nothing left to merge
    assert cleaned["summary"]["one_reading_per_hour"]["violations"] == 2
    assert cleaned["summary"]["one_reading_per_hour"]["merged"] == 0


def test_negative_reading_quarantined_with_its_original_content(cleaned):
    (neg,) = rejected_by(cleaned, "non_negative_reading")
    assert neg["disposition"] == "rejected"
    assert json.loads(neg["record"]) == {"meter_id": "M1", "ts": "2012-01-01T20:00:00Z", "reading_kwh": -0.4}
    assert neg["_source_file"] == f"meter_M1_{MONTH}.csv" and neg["_source_line"] > 1
    assert "reading_kwh < 0" in neg["error"]


def test_wh_file_is_converted_and_every_cell_logged(cleaned):
    wh = [r for r in cleaned["repairs"] if r["rule"] == "wh_to_kwh"]
    assert len(wh) == HOURS
    assert {json.loads(r["key"])["meter_id"] for r in wh} == {"M2"}
    sample = next(r for r in wh if json.loads(r["key"])["ts"] == "2012-01-01T03:00:00Z")
    assert float(sample["old_value"]) == pytest.approx(level(3) * 1.3 * 1000)
    assert float(sample["new_value"]) == pytest.approx(level(3) * 1.3)
    m2 = [r["reading_kwh"] for r in cleaned["trusted"] if r["meter_id"] == "M2"]
    assert max(m2) < 2


def test_clock_shift_is_aligned_to_the_hour(cleaned):
    (shift,) = [r for r in cleaned["repairs"] if r["rule"] == "align_to_hour"]
    assert shift["column"] == "ts"
    assert shift["old_value"] == "2012-01-03T12:30:00Z" and shift["new_value"] == "2012-01-03T12:00:00Z"
    assert any(r["meter_id"] == "M1" and r["ts"] == at(60) for r in cleaned["trusted"])


def test_stuck_run_is_quarantined(cleaned):
    stuck = rejected_by(cleaned, "stuck_meter")
    assert sorted(key_ts(r) for r in stuck) == [f"2012-01-02T{h - 24:02d}:00:00Z" for h in range(40, 46)]


def test_spike_is_an_outlier(cleaned):
    (spike,) = rejected_by(cleaned, "outlier_reading")
    assert key_ts(spike) == "2012-01-02T06:00:00Z"  # hour 30
    # its 24 h window (hours 18-42) as the step sees it: the negative reading (20) and the stuck run
    # (40-45) are already out; median and MAD as numpy computes them
    step = next(s for s in meter_source().quality.cleaning if getattr(s, "name", "") == "outlier_reading")
    window = [level(h) for h in range(18, 43) if h not in (20, 30, 40, 41, 42)] + [level(30) * 30 + 50]
    med = float(np.median(window))
    scale = max(1.4826 * float(np.median(np.abs(np.array(window) - med))), step.min_relative_scale * abs(med))
    found = re.search(r"is ([\d.]+) robust deviations from the 24h median ([\d.]+) ", spike["error"])
    assert found, spike["error"]
    assert float(found[2]) == pytest.approx(round(med, 4))
    assert float(found[1]) == pytest.approx(abs(level(30) * 30 + 50 - med) / scale, abs=0.05)


def test_short_gaps_are_imputed_between_neighbours(cleaned):
    imputed = {r["ts"]: r for r in cleaned["trusted"] if r["meter_id"] == "M1" and r["_source_line"] is None}
    # missing 50-52, plus the holes left by the negative (20), the spike (30) and the stuck run (40-45)
    assert sorted(imputed) == sorted(at(h) for h in [20, 30, 40, 41, 42, 43, 44, 45, 50, 51, 52])
    expected = level(49) + (level(53) - level(49)) * 2 / 4
    assert imputed[at(51)]["reading_kwh"] == pytest.approx(expected, abs=1e-3)
    logged = [r for r in cleaned["repairs"] if r["rule"] == "fill_short_gaps"]
    assert len(logged) == 11 and all(r["old_value"] is None and r["row_status"] == IMPUTED for r in logged)


def test_trusted_is_complete_unique_and_clean(cleaned):
    trusted = cleaned["trusted"]
    assert len(trusted) == 3 * HOURS
    assert len({(r["meter_id"], r["ts"]) for r in trusted}) == len(trusted)
    assert min(r["reading_kwh"] for r in trusted) >= 0
    result = cleaned["result"]
    # 215 source rows; the exact duplicate and the conflicting reading repeat a key (the late reading at
    # h60 has its own key before alignment)
    assert result.key_uniqueness_out == 1.0 and result.key_uniqueness_in == pytest.approx(213 / 215)
    assert result.completeness_out == {"meter_id": 1.0, "ts": 1.0, "reading_kwh": 1.0}
    assert result.completeness_in == {"meter_id": 1.0, "ts": 1.0, "reading_kwh": 1.0}


def test_every_rule_and_step_is_counted(cleaned):
    """The tally per outcome: rows flagged, rejected, merged and cells changed, from the crafted faults."""
    figures = {
        r["name"]: (r["violations"], r["rejected"], r["merged"], r["repaired_cells"]) for r in summary_rows(cleaned["result"])
    }
    assert figures["exact_duplicate"] == (1, 0, 1, 0)
    assert figures["align_to_hour"] == (1, 0, 0, 1)
    assert figures["wh_to_kwh"] == (HOURS, 0, 0, HOURS)  # M2's whole file
    assert figures["non_negative_reading"] == (1, 1, 0, 0)
    assert figures["conflicting_readings"][2] == 1 and figures["conflicting_readings"][1] == 0
    assert figures["stuck_meter"][1] == 6
    assert figures["outlier_reading"][1] == 1
    assert figures["fill_short_gaps"] == (11, 0, 0, 11)
    assert cleaned["result"].cells_repaired == len(cleaned["repairs"]) == 1 + HOURS + 11


def test_every_formatted_row_is_accounted_for(cleaned):
    c = cleaned["result"].counts
    assert c["rows_in"] == cleaned["formatted_rows"] == 3 * HOURS - 3 + 2
    assert c["rows_in"] == c["rows_out"] - c["rows_imputed"] + c["rows_rejected"] + c["rows_merged"]
    assert (c["rows_rejected"], c["rows_merged"], c["rows_imputed"]) == (8, 2, 11)
    assert len(cleaned["rejected"]) == c["rows_rejected"] + c["rows_merged"]
    assert cleaned["result"].failed_rules == []


def test_fail_warn_set_repair_iqr_and_keep_policies(spark, tmp_path):
    """Other actions on a tiny table: a fail rule, warn rules (one a reference to a registry), a set
    repair, iqr outliers repaired, conflicts resolved by keeping the max."""
    rows = [("M1", at(h), level(h), "f.csv", h + 2) for h in range(24)]
    rows[3] = ("M1", at(3), -1.5, "f.csv", 5)  # repaired by abs()
    rows[12] = ("M1", at(12), 80.0, "f.csv", 14)  # iqr outlier, repaired to the median
    rows.append(("M1", at(7), 1.6, "f.csv", 40))  # conflict with hour 7: keep max
    rows.append(("M1", at(8), 3000.0, "f.csv", 41))  # conflict with hour 8 and > 2000
    quality = {
        "rules": [
            {"name": "too_big", "deny": "t.reading_kwh > 2000", "action": "warn"},
            {"name": "never_above_100", "range": {"reading_kwh": {"max": 100}}, "action": "fail"},
            {
                "name": "negative_flipped",
                "deny": "t.reading_kwh < 0",
                "action": "repair",
                "repair": {"set": {"reading_kwh": "abs(reading_kwh)"}},
            },
            {
                "name": "one_per_hour",
                "unique": ["meter_id", "ts"],
                "action": "repair",
                "repair": {"keep": "max", "by": "reading_kwh"},
            },
            {
                "name": "registered",
                "reference": {"column": "meter_id", "table": "trusted/customers", "to": "meter_id"},
                "action": "warn",
            },
        ],
        "cleaning": [
            {"step": "rules"},
            {
                "step": "outliers",
                "name": "iqr_outlier",
                "column": "reading_kwh",
                "group_by": ["meter_id"],
                "time": "ts",
                "method": "iqr",
                "threshold": 3,
                "window": "12h",
                "action": "repair",
            },
        ],
    }
    df = spark.createDataFrame(rows, SCHEMA)
    registry = spark.createDataFrame([("M7",), ("M8",)], "meter_id string")  # M1 is not registered
    result, written = clean_and_commit(df, meter_source(**quality), tmp_path, references={"registered": registry})
    trusted = {r["ts"]: r["reading_kwh"] for r in written["trusted"]}
    repairs, merged = written["repairs"], written["rejected"]
    summary = {r["name"]: r for r in summary_rows(result)}
    assert result.failed_rules == ["never_above_100"] and summary["never_above_100"]["violations"] == 1
    assert summary["too_big"]["violations"] == 1  # warn: counted, kept
    assert summary["registered"]["violations"] == len(rows) and summary["registered"]["rejected"] == 0
    # keep max: at hour 7 and 8 the larger reading stays, the other is merged
    assert trusted[at(7)] == 1.6
    assert sorted(json.loads(r["record"])["reading_kwh"] for r in merged) == sorted([level(7), level(8)])
    assert {r["disposition"] for r in merged} == {"merged"}
    # ... and the 3000 kept at hour 8 is then an iqr outlier, repaired to its window's median
    assert any(r["rule"] == "iqr_outlier" and r["old_value"] == "3000.0" for r in repairs) and trusted[at(8)] < 2
    assert trusted[at(3)] == 1.5
    assert [(r["old_value"], r["new_value"]) for r in repairs if r["rule"] == "negative_flipped"] == [("-1.5", "1.5")]
    (fixed,) = [r for r in repairs if r["rule"] == "iqr_outlier" and r["old_value"] == "80.0"]
    assert 0.5 < float(fixed["new_value"]) < 1.5 and 0.5 < trusted[at(12)] < 1.5
    assert len(trusted) == 24


@pytest.mark.parametrize("case", ["history", "history_arrow", "absolute"])
def test_unit_harmonization_without_a_fleet(spark, case, tmp_path):
    """One meter alone: its own history decides, else the absolute bound; a normal file is left alone.

    The history is given as a Spark DataFrame, or as the trusted asset gives it: a function returning
    an Arrow table (read with delta-rs once the earlier months are written)."""
    wh = [("M9", at(h), level(h) * 1000, "wh.csv", h + 2) for h in range(48)]
    ok = [("M8", at(h), level(h) * 50, "ok.csv", h + 2) for h in range(48)]  # large, plausible in kWh
    history = None
    if case.startswith("history"):
        history = spark.createDataFrame(
            [("M9", at(h) - dt.timedelta(days=31), level(h), None, None) for h in range(200)]
            + [("M8", at(h) - dt.timedelta(days=31), level(h) * 50, None, None) for h in range(200)],
            SCHEMA,
        )
    if case == "history_arrow":
        table = history.select("meter_id", "reading_kwh").toArrow()
        history = lambda: table  # noqa: E731
    step = {
        "step": "unit_harmonization",
        "name": "wh",
        "column": "reading_kwh",
        "group_by": ["meter_id"],
        "min_history": 168,
        "min_fleet": 3,
        "max_typical": 100,
    }
    df = spark.createDataFrame(wh + ok, SCHEMA)
    result, rows = clean_and_commit(df, meter_source(rules=[], cleaning=[step]), tmp_path, history=history)
    trusted, notes = rows["trusted"], list(result.notes)
    assert max(r["reading_kwh"] for r in trusted if r["meter_id"] == "M9") < 2
    assert min(r["reading_kwh"] for r in trusted if r["meter_id"] == "M8") > 30
    assert len(notes) == 1 and ("own history" in notes[0] if case != "absolute" else "max_typical" in notes[0])


def test_group_medians_match_spark_median(spark):
    """The unit step's per-series medians (a Spark aggregation, a row per group to the driver): nulls
    ignored, even counts averaged, null keys a group of their own, as Spark's ``median`` over a ``groupBy``
    gives them."""
    import pyarrow as pa

    from lakehouse.io.spark import arrow_frame
    from lakehouse.quality.units import group_medians as in_spark

    def _group_medians(t, keys, value):
        return in_spark(arrow_frame(spark, t), keys, value)

    t = pa.table(
        {"m": ["a", "a", "a", "a", "b", "b", None, "c"], "f": ["x"] * 8, "v": [1.0, 4.0, 2.0, 10.0, 3.0, None, 7.0, None]}
    )
    assert _group_medians(t, ["m", "f"], "v") == {("a", "x"): (3.0, 4), ("b", "x"): (3.0, 1), (None, "x"): (7.0, 1)}
    assert _group_medians(t.slice(0, 0), ["m"], "v") == {}
    # integer keys stay integers next to a null key (the conversion marker compares them as text)
    ints = pa.table({"k": pa.array([1, None, 1, 2], pa.int64()), "v": [1.0, 2.0, 3.0, 4.0]})
    assert _group_medians(ints, ["k"], "v") == {(1,): (2.0, 2), (None,): (2.0, 1), (2,): (4.0, 1)}


def test_parse_failures_get_the_same_quarantine_rows_on_the_driver_as_in_spark(spark):
    """The formatted zone's rejected lines (month, file, line, raw record, error) become quarantine rows with
    pyarrow; the Spark function they mirror gives the same rows (rule ``parse``, disposition ``rejected``)."""
    bad = pa.table(
        {
            "month": [MONTH, MONTH],
            "_source_file": [f"meter_M1_{MONTH}.csv", f"meter_M2_{MONTH}.csv"],
            "_source_line": pa.array([4, 17], pa.int64()),
            "record": ["M1;2012-01-01T03:00:00Z;abc", "M2;;1.5"],
            "error": ["reading_kwh: 'abc' is not a double", "ts: empty"],
        }
    )
    args = {"dataset": "meter_readings", "stage": "formatted", "run_id": "r1", "month": MONTH}
    from_arrow = quarantine.quarantine_table(bad, **args)
    from_spark = quarantine._conform(
        quarantine.quarantine_rows(spark.createDataFrame(bad), record_columns=None, **args).toArrow()
    )
    assert from_arrow.schema == quarantine.SCHEMA
    assert from_arrow.to_pylist() == from_spark.to_pylist()
    assert {(r["rule"], r["disposition"], r["month"]) for r in from_arrow.to_pylist()} == {("parse", "rejected", MONTH)}


def test_the_driver_jvm_collects_with_the_throughput_collector(spark):
    """``DEFAULT_CONF`` launches the driver JVM with the parallel collector (a launch option: it only holds
    if the session that PySpark starts is given it)."""
    beans = spark._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert sorted(b.getName() for b in beans) == ["PS MarkSweep", "PS Scavenge"]


@pytest.mark.parametrize(
    ("received", "kept"),
    [
        ({"a.csv": "2012-02-01T08:00:00+00:00", "b.csv": "2012-02-01T07:00:00+00:00"}, 9.0),  # b came first
        ({"a.csv": "2012-02-01T07:00:00+00:00", "b.csv": "2012-02-01T08:00:00+00:00"}, 1.0),
        (None, 1.0),  # without receipt times: file and line order
    ],
)
def test_keep_first_keeps_the_row_received_first(spark, received, kept, tmp_path):
    rows = [("M1", at(h), level(h) + 1, "a.csv", h + 2) for h in range(6)]
    rows[2] = ("M1", at(2), 1.0, "a.csv", 4)
    rows.append(("M1", at(2), 9.0, "b.csv", 2))  # the same hour from a second delivery
    rows.append(("M1", at(4), level(4) + 1, "b.csv", 3))  # an exact duplicate of a.csv's hour 4
    quality = {
        "rules": [{"name": "one_per_hour", "unique": ["meter_id", "ts"], "action": "repair", "repair": {"keep": "first"}}],
        "cleaning": [{"step": "rules"}],
    }
    _, written = clean_and_commit(spark.createDataFrame(rows, SCHEMA), meter_source(**quality), tmp_path, received=received)
    trusted = {r["ts"]: (r["reading_kwh"], r["_source_file"]) for r in written["trusted"]}
    assert trusted[at(2)][0] == kept
    first_file = min(received, key=received.get) if received else "a.csv"
    assert trusted[at(4)] == (level(4) + 1, first_file)  # the exact duplicate keeps the first received copy


def test_keep_skips_the_block_s_rows_already_quarantined(spark, tmp_path):
    """A block's first row in keep order that a quarantine rule took out is no candidate: the next row of
    the block is kept, and the later one is merged naming it. A second keep repair on the same block
    sees only the rows the first left."""
    rows = [("M1", at(h), level(h), "a.csv", h + 2) for h in range(4)]
    rows += [("M1", at(1), -1.0, "e.csv", 2), ("M1", at(1), 7.0, "c.csv", 2), ("M1", at(1), 8.0, "d.csv", 2)]
    quality = {
        "rules": [
            {"name": "non_negative", "range": {"reading_kwh": {"min": 0}}, "action": "quarantine"},
            {
                "name": "conflict",
                "deny": "t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh",
                "action": "repair",
                "repair": {"keep": "last"},
            },
            {"name": "one_per_hour", "unique": ["meter_id", "ts"], "action": "repair", "repair": {"keep": "first"}},
        ],
        "cleaning": [{"step": "rules"}],
    }
    _, written = clean_and_commit(spark.createDataFrame(rows, SCHEMA), meter_source(**quality), tmp_path)
    hour1 = [(r["reading_kwh"], r["_source_file"]) for r in written["trusted"] if r["ts"] == at(1)]
    assert hour1 == [(8.0, "d.csv")]  # keep last: d.csv, the quarantined e.csv (last in that order) takes no part
    merged = sorted((r["_source_file"], r["rule"], r["error"]) for r in written["rejected"] if r["disposition"] == "merged")
    assert merged == [
        ("a.csv", "conflict", "conflicts on meter_id, ts; kept d.csv:2 (keep last)"),
        ("c.csv", "conflict", "conflicts on meter_id, ts; kept d.csv:2 (keep last)"),
    ]
    assert [r["_source_file"] for r in written["rejected"] if r["rule"] == "non_negative"] == ["e.csv"]


def test_series_steps_on_a_single_daily_series_without_group_by(spark, tmp_path):
    """One meter's daily export: no entity column, a date as the time. A stuck run, a spike and two
    missing days are handled by the same steps the hourly meters use, with ``every: 1d``."""
    source = SourceSpec.model_validate(
        {
            "name": "gas_daily",
            "collector": {"type": "file_drop", "inbox": "/nowhere"},
            "columns": [{"name": "day", "type": "date", "nullable": False}, {"name": "energy_kwh", "type": "double"}],
            "partitioning": {"kind": "time_column", "column": "day"},
            "quality": {
                "key": ["day"],
                "cleaning": [
                    {"step": "stuck", "name": "stuck_register", "column": "energy_kwh", "time": "day", "min_run": 4},
                    {"step": "outliers", "name": "spike", "column": "energy_kwh", "time": "day", "window": "9d", "min_points": 5},
                    {
                        "step": "impute_gaps",
                        "name": "fill_days",
                        "column": "energy_kwh",
                        "time": "day",
                        "every": "1d",
                        "max_gap": 2,
                    },
                ],
            },
        }
    )
    d0 = dt.date(2012, 1, 1)
    values = {d: round(50 + 5 * math.sin(d / 3), 2) for d in range(31)}
    values.update({8: 700.0, 20: 42.0, 21: 42.0, 22: 42.0, 23: 42.0})  # a spike, a stuck run
    del values[14], values[15]  # two days never sent
    rows = [(d0 + dt.timedelta(days=d), v, "gas.json", d + 2) for d, v in sorted(values.items())]
    df = spark.createDataFrame(rows, "day date, energy_kwh double, _source_file string, _source_line bigint")
    _, rows = clean_and_commit(df, source, tmp_path)
    trusted = {r["day"]: r for r in rows["trusted"]}
    rejected = {(r["rule"], json.loads(r["key"])["day"]) for r in rows["rejected"]}
    assert rejected == {("spike", "2012-01-09"), *(("stuck_register", f"2012-01-{d}") for d in (21, 22, 23, 24))}
    for day in (15, 16):  # filled between its neighbours, one day at a time
        got = trusted[dt.date(2012, 1, day)]["energy_kwh"]
        lo, hi = sorted((values[13], values[16]))
        assert lo <= got <= hi
    # the spike's day is a one-day gap once it is quarantined: refilled; the stuck run's four days are not
    assert trusted[dt.date(2012, 1, 9)]["energy_kwh"] < 100 and trusted[dt.date(2012, 1, 9)]["_source_file"] is None
    assert not any(dt.date(2012, 1, d) in trusted for d in (21, 22, 23, 24))
    assert len(trusted) == 31 - 5 + 1


def _index_source(**quality) -> SourceSpec:
    return SourceSpec.model_validate(
        {
            "name": "gas_index",
            "collector": {"type": "file_drop", "inbox": "/nowhere"},
            "columns": [
                {"name": "meter_id", "type": "string"},
                {"name": "day", "type": "date", "nullable": False},
                {"name": "index_kwh", "type": "double"},
            ],
            "partitioning": {"kind": "time_column", "column": "day"},
            "quality": {"key": ["meter_id", "day"], **quality},
        }
    )


INDEX_SCHEMA = "meter_id string, day date, index_kwh double, _source_file string, _source_line bigint"


def _index_month(spark, month: str, values: dict[str, list[float]]):
    first = dt.date.fromisoformat(f"{month}-01")
    rows = [
        (meter, first + dt.timedelta(days=d), v, f"{meter}.csv", d + 2) for meter, vs in values.items() for d, v in enumerate(vs)
    ]
    return spark.createDataFrame(rows, INDEX_SCHEMA)


def test_prev_rule_continues_the_series_from_the_month_before(spark, tmp_path):
    """Meter-index continuity across months: each meter's first day of February is compared with its last
    trusted day of January (the trusted zone's history), per meter; a meter without history starts fresh.
    The rule is evaluated on the kept rows: a row after a quarantined one is compared with it (same
    snapshot for all rules), and a later month runs the same generated code."""
    quality = {
        "rules": [
            {"name": "index_continuity", "deny": "index_kwh < prev.index_kwh", "action": "quarantine"},
            # the series' own key on the previous row (carried from January too): never differs
            {"name": "same_meter", "deny": "meter_id != prev.meter_id", "action": "warn"},
        ]
    }
    source = _index_source(**quality)
    january = pa.table(
        {
            "meter_id": ["M1", "M1", "M2", "M2"],
            "day": [dt.date(2012, 1, 30), dt.date(2012, 1, 31), dt.date(2012, 1, 31), dt.date(2012, 1, 30)],
            "index_kwh": [98.0, 100.0, 10.0, 9.0],
        }
    )
    feb = {"M1": [95.0, 101.0, 99.0, 102.0], "M2": [12.0, 11.0, 13.0], "M3": [5.0, 6.0]}

    def rejected(rows) -> set[tuple[str, str]]:
        return {(json.loads(r["key"])["meter_id"], json.loads(r["key"])["day"]) for r in rows["rejected"]}

    _, alone = clean_and_commit(_index_month(spark, "2012-02", feb), source, tmp_path / "alone", month="2012-02")
    with_history, written = clean_and_commit(
        _index_month(spark, "2012-02", feb), source, tmp_path / "history", month="2012-02", history=lambda: january
    )
    # without history the first day of a series has no previous row
    assert rejected(alone) == {("M1", "2012-02-03"), ("M2", "2012-02-02")}
    # with it, M1's Feb 1 (95) falls below its Jan 31 (100); M2's Feb 1 (12) is above its Jan 31 (10)
    assert rejected(written) == {("M1", "2012-02-01"), ("M1", "2012-02-03"), ("M2", "2012-02-02")}
    assert with_history.outcomes["index_continuity"].rejected == 3
    assert with_history.outcomes["same_meter"].violations == 0
    assert "prev.index_kwh" in with_history.outcomes["index_continuity"].description
    metric = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    before = metric.getCount()
    march_history = pa.table({"meter_id": ["M1", "M3"], "day": [dt.date(2012, 2, 29)] * 2, "index_kwh": [200.0, 1.0]})
    _, march = clean_and_commit(
        _index_month(spark, "2012-03", {"M1": [150.0, 160.0], "M3": [2.0, 1.5]}),
        source,
        tmp_path / "march",
        month="2012-03",
        history=march_history,
    )
    assert rejected(march) == {("M1", "2012-03-01"), ("M3", "2012-03-02")}
    assert metric.getCount() - before == 0


def test_prev_rule_on_a_single_series_uses_the_rule_s_own_order(spark, tmp_path):
    """No group_by: the whole source is one series; the rule names its time column."""
    source = _index_source(rules=[{"name": "index_continuity", "deny": "index_kwh - prev.index_kwh < -0.5", "time": "day"}])
    history = pa.table({"meter_id": ["A"], "day": [dt.date(2012, 1, 31)], "index_kwh": [50.0]})
    _, rows = clean_and_commit(
        _index_month(spark, "2012-02", {"A": [49.0, 49.8, 49.6]}), source, tmp_path, month="2012-02", history=history
    )
    days = {json.loads(r["key"])["day"] for r in rows["rejected"]}
    assert days == {"2012-02-01"}  # -1.0 from January; -0.2 within the month is tolerated


def test_prev_rule_s_previous_row_ties_nulls_and_nothing_collected(spark, tmp_path, collected):
    """The carried row of a series is its latest by time; among rows of the same time the last in the
    history's order; a row without time is not a candidate; a null value is carried as null (not the last
    non-null one). History as a Spark frame: the last rows are picked and joined in Spark, never collected."""
    source = _index_source(rules=[{"name": "index_continuity", "deny": "index_kwh < prev.index_kwh", "action": "quarantine"}])
    jan = [dt.date(2012, 1, d) for d in (29, 30, 31)]
    history = [
        ("T", jan[2], 100.0),  # tie on the 31st: the later row (90) is the previous one
        ("T", jan[2], 90.0),
        ("T", jan[0], 200.0),  # older, later in the history's order: not the last row
        ("N", jan[1], 10.0),
        ("N", jan[2], None),  # the last row's value is null: carried as null
        ("U", jan[2], 1.0),
        ("U", None, 1000.0),  # no time: never the last row
        (None, jan[2], 50.0),  # the series without meter is a series too
    ]
    frame = spark.createDataFrame(history, "meter_id string, day date, index_kwh double").coalesce(1)
    feb = {"T": [95.0, 96.0], "N": [5.0, 6.0], "U": [5.0, 6.0], "L": [1.0, 2.0]}
    month = _index_month(spark, "2012-02", feb).union(
        spark.createDataFrame([(None, dt.date(2012, 2, 1), 40.0, "x.csv", 2)], INDEX_SCHEMA)
    )
    result, rows = clean_and_commit(month, source, tmp_path, month="2012-02", history=lambda: frame)
    rejected = {(json.loads(r["key"]).get("meter_id"), json.loads(r["key"])["day"]) for r in rows["rejected"]}
    assert rejected == {(None, "2012-02-01")}  # 40 after the meterless series' 50; T: 95 >= 90, N: null, U: 5 >= 1
    assert result.outcomes["index_continuity"].rejected == 1
    assert collected and not any("index_kwh" in c for c in collected), collected


def _temperature_month(spark):
    """Meter A: temp_c = 10 + day of January, missing on days 1, 5-7, 12, 15, 20 and 25, and a 999 on day
    8 that the range rule quarantines. Meter B: 30 on day 1, then missing on days 2 and 3."""
    nulls = {1, 5, 6, 7, 12, 15, 20, 25}
    rows = [("A", dt.date(2012, 1, d), None if d in nulls else (999.0 if d == 8 else 10.0 + d)) for d in range(1, 26)]
    rows += [("B", dt.date(2012, 1, 1), 30.0), ("B", dt.date(2012, 1, 2), None), ("B", dt.date(2012, 1, 3), None)]
    rows = [(m, d, v, f"{m}.csv", i + 2) for i, (m, d, v) in enumerate(rows)]
    return spark.createDataFrame(rows, "meter_id string, day date, temp_c double, _source_file string, _source_line bigint")


@pytest.mark.parametrize(
    ("fill", "expected"),
    [
        (
            {"method": "linear"},
            {("A", 5): 15.0, ("A", 6): 16.0, ("A", 7): 17.0, ("A", 12): 22.0, ("A", 15): 25.0, ("A", 20): 30.0},
        ),
        ({"method": "linear", "max_distance": "3d"}, {("A", 12): 22.0, ("A", 15): 25.0, ("A", 20): 30.0}),
        (
            {"method": "previous", "max_distance": "2d"},
            {
                ("A", 5): 14.0,
                ("A", 6): 14.0,
                ("A", 12): 21.0,
                ("A", 15): 24.0,
                ("A", 20): 29.0,
                ("A", 25): 34.0,
                ("B", 2): 30.0,
                ("B", 3): 30.0,
            },
        ),
        ({"method": "seasonal", "season": "7d"}, {("A", 20): 23.0, ("A", 25): 28.0}),
    ],
)
def test_fill_nulls_fills_cells_from_the_series_and_logs_each(spark, fill, expected, tmp_path):
    """Linear by time between the neighbouring values, the last value within max_distance, or the value
    one season earlier — never from another meter nor from the quarantined 999 of day 8; what cannot be
    filled stays null, and every filled cell is one repair (old value null)."""
    source = SourceSpec.model_validate(
        {
            "name": "temps",
            "collector": {"type": "file_drop", "inbox": "/nowhere"},
            "columns": [
                {"name": "meter_id", "type": "string"},
                {"name": "day", "type": "date"},
                {"name": "temp_c", "type": "double"},
            ],
            "partitioning": {"kind": "time_column", "column": "day"},
            "quality": {
                "key": ["meter_id", "day"],
                "rules": [{"name": "plausible_temp", "range": {"temp_c": {"max": 60}}}],
                "cleaning": [
                    {"step": "rules"},
                    {
                        "step": "fill_nulls",
                        "name": "fill_temp",
                        "columns": ["temp_c"],
                        "group_by": ["meter_id"],
                        "time": "day",
                        **fill,
                    },
                ],
            },
        }
    )
    result, rows = clean_and_commit(_temperature_month(spark), source, tmp_path)
    trusted = {(r["meter_id"], r["day"].day): r["temp_c"] for r in rows["trusted"]}
    repairs = rows["repairs"]
    summary = {r["name"]: r for r in summary_rows(result)}
    missing = {("A", d) for d in (1, 5, 6, 7, 12, 15, 20, 25)} | {("B", 2), ("B", 3)}
    assert {k: v for k, v in trusted.items() if k in missing and v is not None} == pytest.approx(expected)
    assert ("A", 8) not in trusted and len(trusted) == 24 + 3  # the 999 is quarantined, nothing else moves
    assert sorted(
        (json.loads(r["key"])["meter_id"], int(json.loads(r["key"])["day"][-2:]), float(r["new_value"])) for r in repairs
    ) == sorted((m, d, v) for (m, d), v in expected.items())
    assert {(r["column"], r["old_value"], r["rule"], r["row_status"]) for r in repairs} == {("temp_c", None, "fill_temp", "kept")}
    assert summary["fill_temp"]["repaired_cells"] == len(expected)


def test_fill_nulls_rejects_what_it_cannot_do():
    base = {"name": "f", "columns": ["temp_c"], "time": "day"}
    with pytest.raises(ValueError, match="'season' goes with method 'seasonal'"):
        SourceSpec.model_validate(
            {
                "name": "s",
                "collector": {"type": "file_drop", "inbox": "/x"},
                "columns": [{"name": "day", "type": "date"}, {"name": "temp_c", "type": "double"}],
                "partitioning": {"kind": "time_column", "column": "day"},
                "quality": {"cleaning": [{"step": "fill_nulls", "method": "seasonal", **base}]},
            }
        )
    from lakehouse.quality.cleaning import CleaningError, validate_quality

    source = SourceSpec.model_validate(
        {
            "name": "s",
            "collector": {"type": "file_drop", "inbox": "/x"},
            "columns": [{"name": "day", "type": "date"}, {"name": "temp_c", "type": "string"}],
            "partitioning": {"kind": "time_column", "column": "day"},
            "quality": {"cleaning": [{"step": "fill_nulls", **base}]},
        }
    )
    with pytest.raises(CleaningError, match="linear fills numbers, 'temp_c' is string"):
        validate_quality(source)


def test_derived_columns_follow_the_cleaned_inputs(spark, tmp_path):
    """A derived column is in the trusted table, recomputed from the cells as the cleaning left them: a
    filled temperature gives its heating degrees, and a rule after the fill reads them."""
    source = SourceSpec.model_validate(
        {
            "name": "temps",
            "collector": {"type": "file_drop", "inbox": "/nowhere"},
            "columns": [{"name": "day", "type": "date"}, {"name": "temp_c", "type": "double"}],
            "derive": {
                "hdd": {"expr": "greatest(0, 16.5 - temp_c)", "type": "double"},
                "heating": {"expr": "hdd > 0", "type": "boolean"},
            },
            "partitioning": {"kind": "time_column", "column": "day"},
            "quality": {
                "key": ["day"],
                "rules": [{"name": "cold_day", "deny": "hdd > 9", "action": "warn"}],
                "cleaning": [
                    {"step": "fill_nulls", "name": "fill_temp", "columns": ["temp_c"], "time": "day"},
                    {"step": "rules"},
                ],
            },
        }
    )
    temps = [5.0, None, 9.0, 20.0, None, 12.0]
    rows = [(dt.date(2012, 1, d + 1), t, "t.csv", d + 2) for d, t in enumerate(temps)]
    result, written = clean_and_commit(
        spark.createDataFrame(rows, "day date, temp_c double, _source_file string, _source_line bigint"), source, tmp_path
    )
    trusted = sorted(written["trusted"], key=lambda r: r["day"])
    assert list(trusted[0])[:4] == ["day", "temp_c", "hdd", "heating"]
    summary = {r["name"]: r for r in summary_rows(result)}
    assert [r["temp_c"] for r in trusted] == pytest.approx([5.0, 7.0, 9.0, 20.0, 16.0, 12.0])
    assert [r["hdd"] for r in trusted] == pytest.approx([11.5, 9.5, 7.5, 0.0, 0.5, 4.5])
    assert [r["heating"] for r in trusted] == [True, True, True, False, True, True]
    assert summary["cold_day"]["violations"] == 2  # day 2 only once its temperature is filled


def test_nothing_may_change_a_derived_column():
    from lakehouse.quality.cleaning import CleaningError, validate_quality

    base = {
        "name": "temps",
        "collector": {"type": "file_drop", "inbox": "/nowhere"},
        "columns": [{"name": "day", "type": "date"}, {"name": "temp_c", "type": "double"}],
        "derive": {"hdd": {"expr": "greatest(0, 16.5 - temp_c)"}},
        "partitioning": {"kind": "time_column", "column": "day"},
    }
    step = {"quality": {"cleaning": [{"step": "fill_nulls", "name": "f", "columns": ["hdd"], "time": "day"}]}}
    with pytest.raises(CleaningError, match=r"changes derived column\(s\) \['hdd'\]"):
        validate_quality(SourceSpec.model_validate({**base, **step}))
    rule = {"quality": {"rules": [{"name": "r", "deny": "hdd > 50", "action": "repair", "repair": {"set": {"hdd": "50"}}}]}}
    with pytest.raises(CleaningError, match=r"repairs derived column\(s\) \['hdd'\]"):
        validate_quality(SourceSpec.model_validate({**base, **rule}))


def test_months_cleaned_in_one_plan_are_cleaned_as_each_alone(spark, tmp_path):
    """``clean_months``: two months in one Spark plan give each month the rows, quarantine, repairs and
    figures it gets alone. The second month repeats the first one's rows (same meter, hour, value, file
    names): nothing may be merged, blocked or ordered across months; the same file names were received
    in the opposite order in each month."""
    from lakehouse.quality.cleaning import clean_months, one_plan

    quality = {
        "rules": [
            {"name": "non_negative", "range": {"reading_kwh": {"min": 0}}, "action": "quarantine"},
            {"name": "one_per_hour", "unique": ["meter_id", "ts"], "action": "repair", "repair": {"keep": "first"}},
            {"name": "too_big", "deny": "t.reading_kwh > 50", "action": "warn"},
            {
                "name": "jump",
                "deny": "t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh > t2.reading_kwh + 5",
                "action": "warn",
            },
            {
                "name": "known",
                "reference": {"column": "meter_id", "table": "trusted/customers", "to": "meter_id", "months": "latest"},
                "action": "warn",
            },
        ],
        "cleaning": [
            {"step": "standardize", "name": "align", "column": "ts", "truncate": "hour"},
            {"step": "rules"},
        ],
    }
    source = meter_source(**quality)
    assert one_plan(source)
    # the registry has no month for January; February's lists M1 and M2, not M3 (kept, flagged)
    registry = {"2012-02": spark.createDataFrame([("M1",), ("M2",)], "meter_id string")}
    one = [("M1", at(h, 30 if h == 3 else 0), level(h), "a.csv", h + 2) for h in range(8)]
    one += [("M1", at(2), 9.0, "b.csv", 2), ("M1", at(4), level(4), "b.csv", 3), ("M2", at(1), -2.0, "b.csv", 4)]
    one += [("M2", at(5), 60.0, "b.csv", 5), ("M1", at(6), level(6), "a.csv", 8)]  # an exact duplicate, a big one
    rows = {"2012-01": one, "2012-02": [*one, ("M3", at(1), 1.0, "a.csv", 20)]}
    received = {
        "2012-01": {"a.csv": "2012-02-01T07:00:00+00:00", "b.csv": "2012-02-01T08:00:00+00:00"},
        "2012-02": {"a.csv": "2012-03-01T08:00:00+00:00", "b.csv": "2012-03-01T07:00:00+00:00"},
    }
    months = sorted(rows)

    def frame(month_rows):
        return spark.createDataFrame(month_rows, SCHEMA)

    alone = {
        m: clean_and_commit(
            frame(rows[m]),
            source,
            tmp_path / f"alone-{m}",
            month=m,
            received=received[m],
            references={"known": registry[m]} if m in registry else None,
        )
        for m in months
    }

    lake = Lake(tmp_path / "together")
    batches = {m: metrics.Batch.new(dataset=source.name, stage="trusted", month=m, run_id="test") for m in months}
    stagings = {
        m: Staging(
            lake.storage,
            lake.table_uri("trusted", source.name),
            lake.table_uri(*quarantine.TABLE),
            lake.table_uri(*repairs.TABLE),
            batches[m],
        )
        for m in months
    }
    from pyspark.sql import functions as F

    both = frame(rows["2012-01"]).withColumn("month", F.lit("2012-01"))
    both = both.unionByName(frame(rows["2012-02"]).withColumn("month", F.lit("2012-02")))
    together = clean_months(both, source, stagings=stagings, received=received, references={"known": registry})
    assert sorted(together) == months
    quarantine.commit(lake, {batches[m]: together[m].staged["quarantine"] for m in months})
    repairs.commit(lake, {batches[m]: together[m].staged["repairs"] for m in months})
    for m in months:
        lake.commit_month("trusted", source.name, m, together[m].staged["trusted"], together[m].trusted_schema)
    lineage = {"source_file": "_source_file", "source_line": "_source_line"}

    def batch_rows(table, month, columns):
        t = lake.read_arrow(*table, months=[month])
        t = t.filter(pa.compute.equal(t["batch_id"], batches[month].batch_id))
        return sorted(as_rows(t.rename_columns([lineage.get(c, c) for c in t.column_names]).select(columns)), key=repr)

    for m in months:
        result, written = alone[m]
        assert sorted(as_rows(lake.read_arrow("trusted", source.name, months=[m])), key=repr) == sorted(
            written["trusted"], key=repr
        ), m
        q_cols = ["rule", "disposition", "error", "_source_file", "_source_line", "key", "record"]
        assert batch_rows(quarantine.TABLE, m, q_cols) == sorted(written["rejected"], key=repr), m
        r_cols = ["key", "column", "old_value", "new_value", "rule", "row_status", "_source_file", "_source_line"]
        assert batch_rows(repairs.TABLE, m, r_cols) == sorted(written["repairs"], key=repr), m
        assert summary_rows(together[m]) == summary_rows(result), m
        assert together[m].counts == result.counts and together[m].key_uniqueness_in == result.key_uniqueness_in, m
    # what the case exercises: a merge by receipt order, an exact duplicate, a quarantined and a warned row
    first = {r["rule"] for r in alone["2012-01"][1]["rejected"]}
    assert {"one_per_hour", "exact_duplicate", "non_negative"} <= first
    assert alone["2012-02"][0].counts["rows_in"] == alone["2012-01"][0].counts["rows_in"] + 1
    assert not together["2012-01"].outcomes["known"].evaluated and together["2012-02"].outcomes["known"].violations == 1
    with pytest.raises(ValueError, match="a unit step needs the months each reads"):
        clean_months(both, meter_source(), stagings=stagings)
    previous = meter_source(rules=[{"name": "rise", "deny": "reading_kwh > prev.reading_kwh + 50", "action": "warn"}])
    with pytest.raises(ValueError, match="cannot be cleaned in one plan"):
        clean_months(both, previous, stagings=stagings)


@pytest.mark.parametrize("history_months", [0, 3])
def test_a_batch_with_a_unit_step_converts_the_files_each_month_alone_converts(spark, tmp_path, history_months):
    """A unit step over two months in one plan: each month's Wh file is found and converted as when the
    month is cleaned alone after the one before; with ``history_months: 0`` nothing is estimated (the fleet
    decides), with 3 February's estimate is settled on January's staged rows. Both months are kept."""
    from pyspark.sql import functions as F

    from lakehouse.quality.cleaning import clean_months

    step = {
        "step": "unit_harmonization", "name": "wh", "column": "reading_kwh", "group_by": ["meter_id"],
        "factor": 1000, "history_months": history_months, "min_history": 5, "min_fleet": 3, "max_typical": 100,
    }  # fmt: skip
    source = meter_source(rules=[], cleaning=[step])
    feb = dt.datetime(2012, 2, 1, tzinfo=dt.UTC)

    def rows(start: dt.datetime, wh: str) -> list[tuple]:
        out = []
        for meter, scale in (("A", 1.0), ("B", 2.0), ("C", 3.0)):
            factor = 1000 if meter == wh else 1
            for h in range(12):
                out.append((meter, start + dt.timedelta(hours=h), round(scale * level(h) * factor, 3), f"{meter}.csv", h + 2))
        return out

    months = {"2012-01": rows(T0, "B"), "2012-02": rows(feb, "C")}
    alone_root = tmp_path / "alone"
    alone = {}
    for m in sorted(months):
        lake = Lake(alone_root)
        history = lake.read_spark(spark, "trusted", source.name) if lake.exists("trusted", source.name) else None
        alone[m] = clean_and_commit(spark.createDataFrame(months[m], SCHEMA), source, alone_root, month=m, history=history)
    lake = Lake(tmp_path / "together")
    batches = {m: metrics.Batch.new(dataset=source.name, stage="trusted", month=m, run_id="t") for m in months}
    stagings = {
        m: Staging(lake.storage, lake.table_uri("trusted", source.name), lake.table_uri(*quarantine.TABLE), lake.table_uri(*repairs.TABLE), batches[m])
        for m in months
    }  # fmt: skip
    both = None
    for m, r in months.items():
        frame = spark.createDataFrame(r, SCHEMA).withColumn("month", F.lit(m))
        both = frame if both is None else both.unionByName(frame)
    together = clean_months(both, source, stagings=stagings, reads={"2012-01": [], "2012-02": ["2012-01"]})
    assert sorted(together) == sorted(months)  # nothing left to clean again
    for m in sorted(months):
        lake.commit_month("trusted", source.name, m, together[m].staged["trusted"], together[m].trusted_schema)
        got = sorted(as_rows(lake.read_arrow("trusted", source.name, months=[m])), key=repr)
        assert got == sorted(alone[m][1]["trusted"], key=repr), m
        assert together[m].notes == alone[m][0].notes and len(together[m].notes) == 1, (m, together[m].notes)
