"""The series steps' kernels against an independent oracle, on randomized months.

The oracle below is plain Python written from the steps' specs (row by row, no numpy, no Spark): each step
looks at the kept/imputed rows of a series, in time then row-id order (nulls first), and the outcome is
compared with what ``clean_month`` stages and commits: trusted rows, quarantine rows with their error
text, repairs (imputed rows included) and the per-step counts. The months mix ties, duplicated timestamps,
nulls, gaps, short series, flat series (MAD 0: the relative floor decides) and every action.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import statistics
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakehouse.quality.series import _aux_fields, _figures_type, _kernel, _read_columns, _written_columns, plan_steps, spark_round
from lakehouse.specs.models import FillNullsStep, OutlierStep, StuckStep
from lakehouse_tests.test_cleaning import SCHEMA, clean_and_commit, meter_source, staged_plan

MONTH = "2012-01"
T0 = dt.datetime(2012, 1, 3, tzinfo=dt.UTC)
ACTIVE = ("kept", "imputed")


# ------------------------------------------------------------------------------------- the oracle
def jtext(x: float | None) -> str | None:
    """A double as Spark prints it, for the magnitudes these months hold."""
    if x is None:
        return None
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        return repr(float(x))
    _, digits, exp = Decimal(repr(abs(x))).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    return f"{'-' if x < 0 else ''}{mantissa[0]}.{mantissa[1:] or '0'}E{len(digits) - 1 + int(exp)}"


def half_up(x: float, digits: int) -> float:
    return float(Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def secs(ts: dt.datetime) -> int:
    return math.floor(ts.timestamp())


def series_of(rows: list[dict], group_by: list[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[g] for g in group_by), []).append(r)
    return out


def in_order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["ts"] is not None, r["ts"] or T0, r["rid"]))


def flag(r: dict, name: str) -> None:
    if name not in r["flags"]:
        r["flags"].append(name)


def reject(r: dict, name: str, error: str) -> None:
    r["status"] = "rejected"
    r["reasons"].append(name)
    r["errors"].append(error)
    flag(r, name)


def oracle_outliers(rows: list[dict], s: dict) -> None:
    half = {"6h": 3 * 3600, "12h": 6 * 3600}[s["window"]]
    decided = []
    for series in series_of(rows, s["group_by"]).values():
        active = [r for r in series if r["status"] in ACTIVE and r["reading_kwh"] is not None]
        for r in active:
            if r["ts"] is None:
                window = [q["reading_kwh"] for q in active if q["ts"] is None]
            else:
                window = [q["reading_kwh"] for q in active if q["ts"] is not None and abs(secs(q["ts"]) - secs(r["ts"])) <= half]
            window.sort()
            n, v = len(window), r["reading_kwh"]
            med = statistics.median(window)
            floor = s["min_relative_scale"] * abs(med)
            if s["method"] == "mad":
                scale = max(1.4826 * statistics.median([abs(w - med) for w in window]), floor)
                out = abs(v - med) > s["threshold"] * scale
                text = (
                    f"reading_kwh {jtext(v)} is {Decimal(repr(abs(v - med) / scale)).quantize(Decimal('0.1'), ROUND_HALF_UP)}"
                    f" robust deviations from the {s['window']} median {jtext(half_up(med, 4))} (mad, threshold {s['threshold']:g})"
                )
            else:
                q1, q3 = window[max(1, math.ceil(n * 0.25)) - 1], window[max(1, math.ceil(n * 0.75)) - 1]
                scale = max(q3 - q1, floor)
                lo, hi = q1 - s["threshold"] * scale, q3 + s["threshold"] * scale
                out = v < lo or v > hi
                text = (
                    f"reading_kwh {jtext(v)} outside [{jtext(half_up(lo, 4))}, {jtext(half_up(hi, 4))}]"
                    f" (iqr over {s['window']}, threshold {s['threshold']:g})"
                )
            if n >= s["min_points"] and out:
                decided.append((r, med, text))
    for r, med, text in decided:
        if s["action"] == "quarantine":
            reject(r, s["name"], text)
        elif s["action"] == "repair" and r["reading_kwh"] != med:
            r["repairs"].append(("reading_kwh", jtext(r["reading_kwh"]), jtext(med), s["name"]))
            r["reading_kwh"] = med
            flag(r, s["name"])
        elif s["action"] == "warn":
            flag(r, s["name"])


def oracle_stuck(rows: list[dict], s: dict) -> None:
    for series in series_of(rows, s["group_by"]).values():
        active = in_order([r for r in series if r["status"] in ACTIVE and r["reading_kwh"] is not None])
        runs: list[list[dict]] = []
        for r in active:
            if runs and runs[-1][-1]["reading_kwh"] == r["reading_kwh"]:
                runs[-1].append(r)
            else:
                runs.append([r])
        for run in runs:
            if len(run) < s["min_run"] or run[0]["reading_kwh"] in s["ignore_values"]:
                continue
            for r in run:
                if s["action"] == "quarantine":
                    reject(r, s["name"], f"reading_kwh {jtext(r['reading_kwh'])} repeated in {len(run)} consecutive readings")
                else:
                    flag(r, s["name"])


def oracle_impute(rows: list[dict], s: dict) -> None:
    every = 3600
    for key, series in series_of(rows, s["group_by"]).items():
        active = in_order([r for r in series if r["status"] in ACTIVE and r["reading_kwh"] is not None and r["ts"] is not None])
        for a, b in zip(active, active[1:], strict=False):
            span = secs(b["ts"]) - secs(a["ts"])
            if span % every or not 2 <= span / every <= s["max_gap"] + 1:
                continue
            steps = span // every
            for k in range(1, steps):
                v = (
                    a["reading_kwh"] + (b["reading_kwh"] - a["reading_kwh"]) * k / steps
                    if s["method"] == "linear"
                    else a["reading_kwh"]
                )
                if s["round"] is not None:
                    v = half_up(v, s["round"])
                ts = dt.datetime.fromtimestamp(secs(a["ts"]) + k * every, dt.UTC)
                rows.append(
                    {
                        **dict(zip(s["group_by"], key, strict=True)),
                        "ts": ts,
                        "reading_kwh": v,
                        "_source_file": None,
                        "_source_line": None,
                        "rid": "imputed:",
                        "status": "imputed",
                        "flags": [s["name"]],
                        "reasons": [],
                        "errors": [],
                        "repairs": [("reading_kwh", None, jtext(v), s["name"])],
                    }
                )


def oracle_fill_nulls(rows: list[dict], s: dict) -> None:
    limit = {None: None, "3h": 3 * 3600}[s.get("max_distance")]
    filled = []
    for series in series_of(rows, s["group_by"]).values():
        active = in_order([r for r in series if r["status"] in ACTIVE and r["ts"] is not None])
        for i, r in enumerate(active):
            if r["reading_kwh"] is not None:
                continue
            t = secs(r["ts"])
            before = [q for q in active[:i] if q["reading_kwh"] is not None]
            after = [q for q in active[i + 1 :] if q["reading_kwh"] is not None]
            new = None
            if s["method"] == "previous" and before:
                p = before[-1]
                if limit is None or t - secs(p["ts"]) <= limit:
                    new = p["reading_kwh"]
            elif s["method"] == "linear" and before and after:
                p, q = before[-1], after[0]
                span = secs(q["ts"]) - secs(p["ts"])
                if span and (limit is None or span <= limit):
                    new = p["reading_kwh"] + (q["reading_kwh"] - p["reading_kwh"]) * ((t - secs(p["ts"])) / span)
            elif s["method"] == "seasonal":
                same = [q for q in active if q["reading_kwh"] is not None and secs(q["ts"]) == t - 24 * 3600]
                new = same[0]["reading_kwh"] if same else None
            if new is not None:
                filled.append((r, half_up(new, s["round"]) if s.get("round") is not None else new))
    for r, new in filled:
        r["reading_kwh"] = new
        r["repairs"].append(("reading_kwh", None, jtext(new), s["name"]))
        flag(r, s["name"])


ORACLE = {"outliers": oracle_outliers, "stuck": oracle_stuck, "impute_gaps": oracle_impute, "fill_nulls": oracle_fill_nulls}


def oracle(formatted: list[tuple], steps: list[dict]) -> list[dict]:
    rows = [
        {
            "meter_id": m,
            "ts": ts,
            "reading_kwh": v,
            "_source_file": f,
            "_source_line": line,
            "rid": f"{f}:{line}",
            "status": "kept",
            "flags": [],
            "reasons": [],
            "errors": [],
            "repairs": [],
        }
        for m, ts, v, f, line in formatted
    ]
    for s in steps:
        ORACLE[s["step"]](rows, s)
    return rows


# ------------------------------------------------------------------------------------ the months
def random_month(seed: int) -> list[tuple]:
    """Hourly series with gaps, misaligned stamps, duplicated stamps, nulls, spikes, stuck runs, a flat
    series, a short one and a row without a time; values with few decimals (printed alike everywhere)."""
    rng = random.Random(seed)
    rows: list[tuple] = []

    def add(meter: str, ts: dt.datetime | None, value: float | None) -> None:
        rows.append((meter, ts, value, f"m_{meter}.csv", len([r for r in rows if r[0] == meter]) + 2))

    for m in range(4):
        meter = f"M{m}"
        h = 0
        while h < 60:
            ts = T0 + dt.timedelta(hours=h, minutes=30 if rng.random() < 0.03 else 0)
            value: float | None = round(2 + math.sin(h / 4) + rng.uniform(0, 0.5), 2)
            r = rng.random()
            if r < 0.06:
                value = None
            elif r < 0.10:
                value = round(value * rng.choice([8, 15, 0.05]), 2)
            if rng.random() < 0.04:
                for _ in range(rng.randint(3, 6)):  # a stuck run
                    add(meter, T0 + dt.timedelta(hours=h), 2.25)
                    h += 1
                continue
            add(meter, ts, value)
            if rng.random() < 0.05:
                add(meter, ts, round(rng.uniform(1, 4), 2))  # the same hour twice, another value
            h += rng.choice([1, 1, 1, 1, 1, 2, 3, 4, 6])
    for h in range(30):
        add("FLAT", T0 + dt.timedelta(hours=h), 1.5 if h not in (11, 20) else (1.9 if h == 11 else None))
    add("SHORT", T0, 3.0)
    add("SHORT", T0 + dt.timedelta(hours=3), 30.0)
    add("M0", None, 2.5)
    add("M0", None, 2.75)
    return rows


def step(kind: str, **fields) -> dict:
    base = {"group_by": ["meter_id"], "time": "ts"}
    if kind != "fill_nulls":
        base["column"] = "reading_kwh"
    else:
        base["columns"] = ["reading_kwh"]
    return {"step": kind, **base, **fields}


CASES = {
    "quarantine": [
        step("fill_nulls", name="fill", method="previous", max_distance="3h"),
        step("stuck", name="stuck", min_run=3, ignore_values=[1.5], action="quarantine"),
        step("outliers", name="spike", method="mad", window="12h", threshold=3, min_points=3, min_relative_scale=0.05),
        step("impute_gaps", name="gaps", every="1h", max_gap=3, method="linear", round=3),
    ],
    "repair_and_warn": [
        step("outliers", name="spike", method="iqr", window="6h", threshold=1.0, min_points=3, action="repair"),
        step("stuck", name="stuck", min_run=4, ignore_values=[], action="warn"),
        step("impute_gaps", name="gaps", every="1h", max_gap=4, method="previous", round=None),
        step("fill_nulls", name="fill", method="linear", round=2),
    ],
    "seasonal_and_flags": [
        step("impute_gaps", name="gaps", every="1h", max_gap=2, method="linear", round=1),
        step("fill_nulls", name="fill", method="seasonal", season="24h"),
        step(
            "outliers", name="spike", method="mad", window="6h", threshold=2, min_points=4, min_relative_scale=0.2, action="warn"
        ),
        step("stuck", name="stuck", min_run=2, ignore_values=[1.5], action="quarantine"),
    ],
}


def key_text(r: dict) -> str:
    """The row's key as the repairs log writes it (a null field is left out)."""
    key = {"meter_id": r["meter_id"]} | ({"ts": r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")} if r["ts"] else {})
    return json.dumps(key, separators=(",", ":"))


@pytest.mark.parametrize(("case", "seed"), [("quarantine", 1), ("repair_and_warn", 2), ("seasonal_and_flags", 3)])
def test_series_steps_match_the_oracle(spark, case, seed, tmp_path):
    formatted = random_month(seed)
    steps = CASES[case]
    source = meter_source(rules=[], cleaning=steps, drop_exact_duplicates=False)
    assert [len(p) for p in plan_steps(source.quality.steps) if isinstance(p, list)] == [4], "the four steps share one pass"
    assert_matches_oracle(spark, formatted, source, steps, tmp_path)


@pytest.mark.parametrize("seed", [4])
def test_passes_grouped_otherwise_than_the_month_match_the_oracle(spark, seed, tmp_path):
    """Passes whose series are not the month's partitions (the whole month as one series between two
    per-meter passes): each is shuffled to its series and still matches the oracle."""
    formatted = random_month(seed)
    steps = [
        step("stuck", name="stuck", min_run=3, ignore_values=[1.5], action="quarantine"),
        step("outliers", name="spike", group_by=[], method="mad", window="12h", threshold=3, min_points=3),
        step("impute_gaps", name="gaps", every="1h", max_gap=3, method="linear", round=3),
    ]
    source = meter_source(rules=[], cleaning=steps, drop_exact_duplicates=False)
    assert [len(p) for p in plan_steps(source.quality.steps) if isinstance(p, list)] == [1, 1, 1]
    assert_matches_oracle(spark, formatted, source, steps, tmp_path)


def assert_matches_oracle(spark, formatted: list[tuple], source, steps: list[dict], tmp_path) -> None:
    """What ``clean_month`` commits (trusted rows, rejected rows with their errors, changed cells, counts)
    is what the oracle gives."""
    result, got = clean_and_commit(spark.createDataFrame(formatted, SCHEMA), source, tmp_path)
    want = oracle(formatted, [s.model_dump() for s in source.quality.cleaning])

    def trusted_row(r: dict) -> tuple:
        return (r["meter_id"], str(r["ts"]), r["reading_kwh"], r["_source_file"], r["_source_line"])

    assert sorted(map(trusted_row, (r for r in want if r["status"] in ACTIVE)), key=repr) == sorted(
        map(trusted_row, got["trusted"]), key=repr
    )
    want_rejected = [
        (r["_source_file"], r["_source_line"], ",".join(r["reasons"]), "; ".join(r["errors"]))
        for r in want
        if r["status"] == "rejected"
    ]
    got_rejected = [(r["_source_file"], r["_source_line"], r["rule"], r["error"]) for r in got["rejected"]]
    assert sorted(want_rejected, key=repr) == sorted(got_rejected, key=repr)
    want_cells = [
        (str(r["_source_file"]), r["_source_line"] or 0, key_text(r), *cell, r["status"]) for r in want for cell in r["repairs"]
    ]
    got_cells = [
        (
            str(c["_source_file"]),
            c["_source_line"] or 0,
            c["key"],
            c["column"],
            c["old_value"],
            c["new_value"],
            c["rule"],
            c["row_status"],
        )
        for c in got["repairs"]
    ]
    assert sorted(want_cells, key=repr) == sorted(got_cells, key=repr)
    for s in steps:
        assert result.outcomes[s["name"]].violations == sum(s["name"] in r["flags"] for r in want), s["name"]
    # the month exercises what it is meant to
    assert any(r["status"] == "imputed" for r in want) and any(r["repairs"] for r in want)
    assert sum(bool(r["flags"]) for r in want) >= 5


def test_the_oracle_months_reach_every_edge():
    """The randomized months hold what the comparison is meant to cover (else the test proves little)."""
    rows = random_month(1)
    by_meter = series_of([{"meter_id": m, "ts": ts, "v": v} for m, ts, v, _, _ in rows], ["meter_id"])
    stamps = [(m, ts) for m, ts, *_ in rows if ts is not None]
    assert len(stamps) > len(set(stamps)), "duplicated timestamps"
    assert any(v is None for *_, v, _, _ in [(r[0], r[1], r[2], r[3], r[4]) for r in rows]), "null values"
    assert any(ts is None for _, ts, *_ in rows), "rows without a time"
    assert len(by_meter[("SHORT",)]) < 3, "a series shorter than min_points"
    assert {r["v"] for r in by_meter[("FLAT",)] if r["v"] is not None} == {1.5, 1.9}, "a flat series"
    assert any(ts is not None and ts.minute == 30 for _, ts, *_ in rows), "a stamp off the hour"


def test_one_pass_per_run_of_steps_grouped_alike():
    stuck = StuckStep(step="stuck", name="a", column="v", group_by=["k"], time="t")
    other = OutlierStep(step="outliers", name="b", column="v", group_by=[], time="t")
    fill = FillNullsStep(step="fill_nulls", name="c", columns=["v"], group_by=["k"], time="t")
    assert plan_steps([stuck, fill]) == [[stuck, fill]]
    assert plan_steps([stuck, other, fill]) == [[stuck], [other], [fill]]


def test_spark_round_is_half_up_on_the_decimal_text():
    values = np.array([0.125, 1.005, -2.5, 2.675, 7.0])
    assert spark_round(values, 2, integral=False).tolist() == [0.13, 1.01, -2.5, 2.68, 7.0]
    assert spark_round(values, 0, integral=False).tolist() == [0.0, 1.0, -3.0, 3.0, 7.0]
    assert spark_round(np.array([15, 14, -15]), -1, integral=True).tolist() == [20, 10, -20]


# ------------------------------------------------------------------------------- the kernel's input
def kernel_of(steps: list):
    """The kernel of a pass over the random months' columns, and the struct type of the rows it reads."""
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import DoubleType, StringType, TimestampType

    types = {"meter_id": StringType(), "ts": TimestampType(), "reading_kwh": DoubleType()}
    types |= {"__status": StringType(), "__rid": StringType()}
    keys = steps[0].group_by
    read = _read_columns(steps, keys)
    figures = _figures_type(keys, types, read, _written_columns(steps), _aux_fields(steps, types))
    fields = pa.struct([(c, to_arrow_type(types[c], timezone="UTC")) for c in read])
    return _kernel(steps, keys, to_arrow_type(figures, timezone="UTC")), fields


def kernel_input(formatted: list[tuple], fields: pa.StructType) -> pa.StructArray:
    rows = sorted(formatted, key=lambda r: r[0])  # each series' rows next to each other, as Spark sorts them
    columns = {
        "meter_id": [r[0] for r in rows],
        "ts": [r[1] for r in rows],
        "reading_kwh": [r[2] for r in rows],
        "__status": ["kept"] * len(rows),
        "__rid": [f"{r[3]}:{r[4]}" for r in rows],
    }
    return pa.StructArray.from_arrays([pa.array(columns[f.name], f.type) for f in fields], fields=list(fields))


def test_the_kernel_gives_the_same_figures_however_the_batches_cut_the_series():
    """Spark hands the kernel a partition in batches that cut series anywhere: the figures do not depend on
    where (a series is run once all its rows arrived)."""
    source = meter_source(rules=[], cleaning=CASES["quarantine"], drop_exact_duplicates=False)
    (steps,) = [p for p in plan_steps(source.quality.steps) if isinstance(p, list)]
    kernel, fields = kernel_of(steps)
    rows = kernel_input(random_month(5), fields)
    whole = pa.concat_arrays(list(kernel(iter([rows]))))
    assert len(whole) == len(rows)
    assert pc.sum(pc.list_value_length(whole.field("__new_rows"))).as_py() > 0, "the month imputes rows"
    assert whole.field("__status").null_count < len(rows), "the month rejects rows"
    for cuts in ([1, 2, 3], [37, 38, 200], list(range(0, len(rows), 61))):
        bounds = [0, *cuts, len(rows)]
        batches = [rows.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        pieces = list(kernel(iter(batches)))
        assert pa.concat_arrays(pieces).equals(whole), cuts


def test_a_series_in_two_pieces_fails_loudly():
    """Rows of one series that are not next to each other would be judged as two series: the kernel stops."""
    source = meter_source(rules=[], cleaning=CASES["quarantine"], drop_exact_duplicates=False)
    (steps,) = [p for p in plan_steps(source.quality.steps) if isinstance(p, list)]
    kernel, fields = kernel_of(steps)
    rows = kernel_input(random_month(5), fields)
    m0 = pc.equal(rows.field("meter_id"), "M0")
    first = np.flatnonzero(m0.to_numpy(zero_copy_only=False))
    split = pa.concat_arrays([rows.slice(0, int(first[-1])), rows.slice(int(first[-1]) + 1), rows.slice(int(first[-1]), 1)])
    with pytest.raises(RuntimeError, match=r"series \('M0',\) of \['meter_id'\] arrived in two pieces"):
        list(kernel(iter([split])))


def test_the_kernel_reads_only_the_series_columns_and_adds_no_shuffle(spark, tmp_path, monkeypatch):
    """The meter chain's pass ships the series' keys, time, value, status and row id to Python (not the
    original record nor the annotations), on the month's own partitions: no shuffle besides the month's."""
    plan, got = staged_plan(spark, tmp_path, monkeypatch)
    assert got["trusted"] and any(c["rule"] == "fill_short_gaps" for c in got["repairs"]), "the pass ran"
    (python,) = [line for line in plan.splitlines() if "ArrowEvalPython" in line]
    for column in ("meter_id", "ts", "reading_kwh", "__status", "__rid"):
        assert f"{column}#" in python, column
    for column in ("__orig", "__flags", "__reasons", "__errors", "__repairs", "_source_file", "__received"):
        assert f"{column}#" not in python, column
    assert plan.count("Exchange") == 1, plan
