"""A merge view's months folded into its table in one Spark plan (``months_per_plan``) leave exactly the
table states that merging the months one by one leaves, one commit per month.

Differential tests: the fold of several months (:func:`lakehouse.io.merging.states`) against the same
function fed one month at a time and against a row-by-row model of the documented merge, on random months
(nulls in keys, ``newer`` and ``keep_first`` columns; older, newer and equal ``newer`` values; keys in some
months only; with and without ``newer``); :meth:`Lake.merge_months` against :meth:`Lake.merge` month by
month, version by version (failing months, a commit that loses a race or fails mid-batch); and the
``golden_customers`` view materialized with ``months_per_plan`` 3 and 1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.io import merging
from lakehouse.io.lake import Lake
from lakehouse.io.spark import arrow_frame
from lakehouse_tests.reliability.helpers import materialize

SCHEMA = pa.schema(
    [("golden_id", pa.string()), ("region", pa.string()), ("name", pa.string()), ("first", pa.string()), ("last", pa.string())]
)
#: (on, newer, keep_first): with and without ``newer``, ``newer`` also a ``keep_first`` column, a composite key
RULES = [
    (["golden_id"], "last", ["first"]),
    (["golden_id"], None, ["first"]),
    (["golden_id"], "last", []),
    (["golden_id"], "last", ["first", "last"]),
    (["golden_id", "region"], "last", ["first"]),
]


def model_merge(
    state: list[dict], new: list[dict], on: Sequence[str], newer: str | None, keep_first: Sequence[str]
) -> list[dict]:
    """One month merged row by row as :mod:`lakehouse.io.merging` documents it (the month repeats no key)."""
    out = [dict(r) for r in state]
    at = {tuple(r[k] for k in on): i for i, r in enumerate(out) if all(r[k] is not None for k in on)}
    for s in new:
        key = tuple(s[k] for k in on)
        if None in key or key not in at:
            out.append(dict(s))
            continue
        t = out[at[key]]
        whole = newer is None or (s[newer] is not None and t[newer] is not None and s[newer] >= t[newer])
        out[at[key]] = {
            c: (s[c] if t[c] is None or (s[c] is not None and s[c] < t[c]) else t[c])
            if c in keep_first
            else (s[c] if whole else t[c])
            for c in t
        }
    return out


def _sorted(rows: list[dict]) -> list[tuple]:
    return sorted((tuple(r[c] for c in SCHEMA.names) for r in rows), key=repr)


def _random_rows(rng: random.Random, tag: str, composite: bool) -> list[dict]:
    """Rows of distinct keys (some keys of the pool, maybe one null key), with random ``newer`` and
    ``keep_first`` values (nulls included, so older, equal and newer ones)."""
    values = [None, "2012-01", "2012-02", "2012-03"]
    keys = rng.sample([f"G{i}" for i in range(4)], rng.randint(0, 4)) + ([None] if rng.random() < 0.4 else [])
    return [
        {
            "golden_id": g,
            "region": rng.choice(["north", None]) if composite and g is not None else "north",
            "name": f"{tag}-{j}",
            "first": rng.choice(values),
            "last": rng.choice(values),
        }
        for j, g in enumerate(keys)
    ]


def _frame(spark, rows: list[dict]):
    return arrow_frame(spark, pa.Table.from_pylist(rows, schema=SCHEMA))


def _states(spark, stored: list[dict] | None, months: list[list[dict]], rule) -> dict[int, tuple[list[tuple], int]]:
    """Each state of :func:`merging.states` (sorted rows, the sum of the new-row marks)."""
    on, newer, keep_first = rule
    frame = merging.states(
        None if stored is None else _frame(spark, stored),
        {i: _frame(spark, rows) for i, rows in enumerate(months, start=1)},
        on=on,
        newer=newer,
        keep_first=keep_first,
    )
    out: dict[int, tuple[list[dict], int]] = {i: ([], 0) for i in range(1, len(months) + 1)}
    for r in frame.toArrow().to_pylist():
        rows, new = out[r[merging.STATE]]
        assert r[merging.REPEATED] == 0
        out[r[merging.STATE]] = (rows + [{c: r[c] for c in SCHEMA.names}], new + r[merging.NEW])
    return {i: (_sorted(rows), new) for i, (rows, new) in out.items()}


@pytest.mark.parametrize("seed", range(2 * len(RULES)))
def test_months_folded_in_one_plan_equal_the_months_merged_one_by_one(spark, seed):
    rng = random.Random(seed)
    rule = RULES[seed % len(RULES)]
    composite = len(rule[0]) > 1
    stored = None if seed % 3 == 0 else _random_rows(rng, "stored", composite)
    months = [_random_rows(rng, f"m{i}", composite) for i in range(1, 7)]
    batch = _states(spark, stored, months, rule)
    state, model = stored, stored or []
    for i, rows in enumerate(months, start=1):
        [(alone, new)] = _states(spark, state, [rows], rule).values()
        model = model_merge(model, rows, *rule)
        assert alone == _sorted(model), f"seed {seed}, month {i}: one month merged differs from the model"
        assert batch[i] == (alone, len(rows)), f"seed {seed}, month {i}: the batch differs from one by one"
        state = [dict(zip(SCHEMA.names, r, strict=True)) for r in alone]


def test_each_state_is_staged_in_files_of_its_own(spark, tmp_path):
    """The staging tasks route every row to its state's files (flushed often here: several files per
    state), count the marks per state and write neither the state nor the marks."""
    import pyarrow.parquet as pq

    rng = random.Random(7)
    rule = RULES[0]
    stored = _random_rows(rng, "stored", False)
    months = [_random_rows(rng, f"m{i}", False) for i in range(1, 4)]
    frame = merging.states(
        _frame(spark, stored),
        {i: _frame(spark, r) for i, r in enumerate(months, 1)},
        on=rule[0],
        newer=rule[1],
        keep_first=rule[2],
    )
    want = _states(spark, stored, months, rule)
    lake = Lake(tmp_path)
    uri = lake.table_uri("exploitation", "t")
    staged, schema, marks = merging.stage_states(frame, lake.storage, uri, rows=2)
    assert schema.names == SCHEMA.names
    assert any(len(files) > 1 for files in staged.values())
    for i, (rows, new) in want.items():
        got = [r for f in staged.get(i, []) for r in pq.read_table(f"{uri}/{f['path']}").to_pylist()]
        assert (_sorted(got), marks[i][merging.NEW], marks[i][merging.REPEATED]) == (rows, new, 0), i


# ------------------------------------------------------------------------------------------ Lake level
KW = {"on": ["golden_id"], "newer": "last", "keep_first": ["first"]}


def _month(spark, month: str, ids: list[str | None], name: str = "n", last: str | None = None):
    rows = [{"golden_id": g, "region": "r", "name": f"{name}{g}", "first": month, "last": last or month} for g in ids]
    return _frame(spark, rows)


def _content(lake: Lake, version: int) -> list[tuple]:
    return _sorted(lake.read_arrow("exploitation", "golden", version=version).to_pylist())


def _one_by_one(spark, lake: Lake, months: list) -> list:
    out = []
    for data in months:
        try:
            out.append(data if isinstance(data, BaseException) else lake.merge(spark, "exploitation", "golden", data, **KW))
        except ValueError as exc:
            out.append(exc)
    return out


def _same_versions(batch_lake: Lake, batch: list, alone_lake: Lake, alone: list) -> None:
    """Month by month: the same failures, the same rows, and the same table content at each month's version."""
    assert [type(g) for g in batch] == [type(g) for g in alone]
    for got, want in zip(batch, alone, strict=True):
        if isinstance(want, BaseException):
            assert str(got) == str(want)
        else:
            assert got[0] == want[0] and _content(batch_lake, got[1]) == _content(alone_lake, want[1])


def test_lake_merges_months_in_one_plan_as_one_by_one(spark, tmp_path):
    """A table created by the batch; a first month and a later one repeating a key and a month whose rows
    could not be computed fail alone; every other month is one commit holding what merging it alone holds."""
    boom = RuntimeError("transform failed")

    def months() -> list:
        return [
            _month(spark, "2012-01", ["G1", "G1"]),
            _month(spark, "2012-02", ["G1", "G2", None]),
            _month(spark, "2012-03", ["G2", "G3", "G3"]),
            boom,
            _month(spark, "2012-05", ["G1", "G3", None], name="new", last="2012-05"),
            _month(spark, "2012-06", ["G2"], name="older", last="2012-01"),
        ]

    batch_lake, alone_lake = Lake(tmp_path / "batch"), Lake(tmp_path / "alone")
    batch = batch_lake.merge_months(spark, "exploitation", "golden", months(), **KW)
    alone = _one_by_one(spark, alone_lake, months())
    assert [isinstance(g, BaseException) for g in batch] == [True, False, True, True, False, False]
    assert "repeat a key" in str(batch[0]) and "repeat a key" in str(batch[2]) and batch[3] is boom
    _same_versions(batch_lake, batch, alone_lake, alone)
    assert [g[1] for g in batch if not isinstance(g, BaseException)] == [0, 1, 2]
    assert [h["operation"] for h in batch_lake.history("exploitation", "golden")][::-1] == ["CREATE TABLE", "WRITE", "WRITE"]


def test_a_table_created_by_a_batch_declares_the_columns_as_the_rows_do(spark, tmp_path):
    """The fold's output loses NOT NULL; the table it creates keeps what the rows to merge declare."""
    from pyspark.sql import functions as F

    lake = Lake(tmp_path)
    months = [
        _month(spark, m, ["G1", "G2"]).withColumn("golden_id", F.coalesce("golden_id", F.lit("?")))
        for m in ("2012-01", "2012-02")
    ]
    assert [f.nullable for f in months[0].schema.fields if f.name == "golden_id"] == [False]
    lake.merge_months(spark, "exploitation", "golden", months, **KW)
    declared = {f.name: f.nullable for f in lake.delta("exploitation", "golden").schema().to_arrow()}
    assert declared == {f.name: f.nullable for f in months[0].schema.fields}


def test_the_driver_collects_no_row_of_a_batch(spark, tmp_path, collected):
    lake = Lake(tmp_path)
    got = lake.merge_months(
        spark, "exploitation", "golden", [_month(spark, m, ["G1", "G2"]) for m in ("2012-01", "2012-02")], **KW
    )
    assert [g[0] for g in got] == [2, 2]  # type: ignore[index]
    assert collected and not any("name" in c or "golden_id" in c for c in collected), collected


@pytest.mark.parametrize("failure", ["lost race", "error"])
def test_a_commit_failing_mid_batch_never_commits_a_state_built_on_it(spark, tmp_path, monkeypatch, failure):
    """Another writer replaces the table (or the commit fails) before the batch's second commit: no later
    state of the batch is committed; the months after it are merged alone from the table as it then is."""
    months = [_month(spark, f"2012-0{i}", ["G1", f"G{i + 1}"], name=f"m{i}") for i in range(1, 5)]
    foreign = pa.Table.from_pylist(
        [{"golden_id": "F", "region": "r", "name": "foreign", "first": "2011-01", "last": "2011-01"}], schema=SCHEMA
    )
    lake, alone_lake = Lake(tmp_path / "batch"), Lake(tmp_path / "alone")
    lake.merge(spark, "exploitation", "golden", months[0], **KW)
    real = Lake._commit_state
    calls: list[int | None] = []

    def interfered(self, zone, table, base, staged, schema):
        calls.append(base)
        if len(calls) == 2:
            if failure == "error":
                raise OSError("disk full")
            write_deltalake(self._uri(zone, table), foreign, mode="overwrite")
        return real(self, zone, table, base, staged, schema)

    monkeypatch.setattr(Lake, "_commit_state", interfered)
    got = lake.merge_months(spark, "exploitation", "golden", months[1:], **KW)
    monkeypatch.setattr(Lake, "_commit_state", real)
    # the reference: the same commits one by one, with the other writer's replace (or the failed month) in between
    alone_lake.merge(spark, "exploitation", "golden", months[0], **KW)
    first = alone_lake.merge(spark, "exploitation", "golden", months[1], **KW)
    if failure == "error":
        assert isinstance(got[1], OSError)
        want = [first, got[1], *_one_by_one(spark, alone_lake, months[3:])]
    else:
        write_deltalake(alone_lake._uri("exploitation", "golden"), foreign, mode="overwrite")
        want = [first, *_one_by_one(spark, alone_lake, months[2:])]
        assert ("F",) in {r[:1] for r in _content(lake, got[2][1])}  # type: ignore[index]
    _same_versions(lake, got, alone_lake, want)


# ---------------------------------------------------------------------------------------- factory level
MONTHS = ["2012-01", "2012-02", "2012-03", "2012-04"]
REGISTRY = ["customer_id", "meter_id", "name", "street", "house_number", "postcode", "city"]
REGISTRY += ["building_type", "heated_area_m2", "construction_year", "heating_system"]
BILLING = ["account_no", "holder_name", "address_line", "zip", "town", "tariff", "opened_on"]


def _write_inputs(lake: Lake) -> None:
    """Four months of registry and billing: a customer renamed in March, one absent in March, one new in
    March, an account opened in February; February's billing has an account numbered as a registry customer
    but elsewhere (billing-only): its golden rows repeat the key ``G-C2``, so February fails alone."""
    import datetime as dt

    for n, month in enumerate(MONTHS, start=1):
        registry = [("C1", "M1", "Anna Miller" if n < 3 else "Anna Miller-Smith", "Pine Street", 12, "98123", "Seattle")]
        if n != 3:
            registry.append(("C2", "M2", "Ben Schmidt", "Maple Avenue", 7, "98402", "Tacoma"))
        if n >= 3:
            registry.append(("C3", "M3", "Cleo Park", "Oak Road", 3, "98101", "Seattle"))
        rows = [(*r, "office" if r[0] == "C2" else "detached", 100.0 * n, 1965, "heat_pump") for r in registry]
        lake.overwrite_month(
            "trusted", "customers", pa.Table.from_pylist([dict(zip(REGISTRY, r, strict=True)) for r in rows]), month
        )
        billing = [("A1", "MILLER, ANNA", "12 Pine St.", "98123-0412", "SEATTLE", f"tariff-{n}", dt.date(2010, 1, 1))]
        if n >= 2:
            billing.append(("A7", "Olga Wolf", "17 Elm Avenue", "98111", "Tacoma", "residential", dt.date(2012, 2, 3)))
        if n == 2:
            billing.append(("C2", "Zoe Quinn", "5 Harbor Way", "98160", "Redmond", "residential", dt.date(2012, 2, 9)))
        lake.overwrite_month(
            "trusted", "billing_customers", pa.Table.from_pylist([dict(zip(BILLING, r, strict=True)) for r in billing]), month
        )


def _materialize(make_project, root, per_plan: int, monkeypatch) -> tuple[Lake, dict[str, dict], list[int]]:
    """``golden_customers`` over ``MONTHS`` with ``months_per_plan=per_plan`` in a lake of its own: the lake,
    each committed month's figures, and the number of months of each fold."""
    from lakehouse.factories import build_definitions

    project = make_project(LAKEHOUSE_ROOT=str(root))
    project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update={"months_per_plan": per_plan})})
    lake = Lake(project.lake_root)
    _write_inputs(lake)
    folds: list[int] = []
    real = Lake.merge_months

    def spy(self, spark, zone, table, months, **kw):
        folds.append(len(months))
        return real(self, spark, zone, table, months, **kw)

    monkeypatch.setattr(Lake, "merge_months", spy)
    defs = build_definitions(project)
    key = dg.AssetKey(["exploitation", "golden_customers"])
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, [key], MONTHS[0], MONTHS[-1], instance=instance, raise_on_error=False)
    monkeypatch.setattr(Lake, "merge_months", real)
    assert not result.success  # February fails
    figures = {}
    for record in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records:
        mat = record.asset_materialization
        assert mat is not None and mat.partition is not None
        figures[mat.partition] = {k: v.value for k, v in mat.metadata.items() if k in ("rows", "delta_version", "input_versions")}
    return lake, figures, folds


def _golden(lake: Lake, version: int) -> list[tuple]:
    rows = lake.read_arrow("exploitation", "golden_customers", version=version).to_pylist()
    return sorted((tuple(r.items()) for r in rows), key=repr)


def test_golden_customers_in_one_plan_commit_what_month_by_month_commits(make_project, tmp_path, spark, monkeypatch):
    batch_lake, batch, batch_folds = _materialize(make_project, tmp_path / "batch", 3, monkeypatch)
    alone_lake, alone, alone_folds = _materialize(make_project, tmp_path / "alone", 1, monkeypatch)
    assert (batch_folds, alone_folds) == ([3, 1], [1, 1, 1, 1])
    assert sorted(batch) == sorted(alone) == ["2012-01", "2012-03", "2012-04"]
    for month in sorted(alone):
        b, a = batch[month], alone[month]
        assert (b["rows"], b["input_versions"]) == (a["rows"], a["input_versions"]), month
        assert _golden(batch_lake, b["delta_version"]) == _golden(alone_lake, a["delta_version"]), month
    assert [batch[m]["delta_version"] for m in sorted(batch)] == [0, 1, 2]
    names = {r["golden_id"]: r for r in batch_lake.read_arrow("exploitation", "golden_customers").to_pylist()}
    assert names["G-C1"]["name"] == "Anna Miller-Smith" and names["G-C1"]["first_seen_month"] == "2012-01"
    assert names["G-C2"]["last_seen_month"] == "2012-04" and names["G-C3"]["first_seen_month"] == "2012-03"
