"""``golden_customers`` reconciles a batch of months in one Spark plan and gives each month exactly the rows
that month reconciled alone gives.

Differential tests on small registry and billing snapshots that change from month to month (customers and
accounts added, removed, renamed, an id renamed, months without a new snapshot): the transform over a batch
of months against the same transform month by month and against a pandas route through the pure steps
(``lakehouse_tests/test_reconcile.py``); the view materialized with ``months_per_plan`` 3 and 1, every
committed Delta version compared; a month whose ids repeat fails naming that month, alone.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from lakehouse.io import merging
from lakehouse.io.lake import Lake
from lakehouse.transforms import reconcile as rc
from lakehouse_tests.reliability.helpers import materialize
from lakehouse_tests.test_merge_batch import BILLING, REGISTRY
from lakehouse_tests.test_reconcile import reference_golden

MONTHS = ["2012-01", "2012-02", "2012-03", "2012-04", "2012-05"]
#: the months each input has a snapshot of (the others read their latest earlier one)
REGISTRY_MONTHS = ["2012-01", "2012-02", "2012-04", "2012-05"]
BILLING_MONTHS = ["2012-01", "2012-02", "2012-03", "2012-05"]
OPTIONS = {
    "registry": {"id": "customer_id", **{f: f for f in ("name", "street", "house_number", "postcode", "city")}},
    "billing": {"id": "account_no", "name": "holder_name", "street": "address_line", "postcode": "zip", "city": "town"},
    "registry_columns": ["meter_id", "heated_area_m2"],
    "billing_columns": ["tariff"],
}
KEY = dg.AssetKey(["exploitation", "golden_customers"])


def registry_snapshot(month: str, *, repeat: str | None = None) -> pd.DataFrame:
    """The registry as of ``month``: Anna renamed out of recognition in April (her account no longer
    matches), Ben gone from April, Cleo new in February, David's id renamed C4 → C40 in April, a namesake
    of Anna elsewhere; ``repeat``: that month repeats Anna's id."""
    n = MONTHS.index(month) + 1
    rows = [("C1", "M1", "Anna Miller" if n < 4 else "Zed Xu", "Pine Street", 12, "98123", "Seattle")]
    if n < 4:
        rows.append(("C2", "M2", "Ben Schmidt", "Maple Avenue", 7, "98402", "Tacoma"))
    if n >= 2:
        rows.append(("C3", "M3", "Cleo Park", "Oak Road", 3, "98101", "Seattle"))
    rows.append(("C4" if n < 4 else "C40", "M4", "David Johnson", "Cedar Lane", 33, "98150", "Tacoma"))
    rows.append(("C5", "M5", "Anna Miller", "Harbor Way", 250, "98160", "Redmond"))
    if month == repeat:
        rows.append(rows[0])
    full = [(*r, "detached", 100.0 + n, 1965, "heat_pump") for r in rows]
    return pd.DataFrame(full, columns=REGISTRY)


def billing_snapshot(month: str) -> pd.DataFrame:
    """Billing as of ``month``: Anna's and David's accounts, Ben's until March, Cleo's from March, Olga
    (billing only) from February, David's account renumbered A4 → A44 in May, a tariff that changes."""
    n = MONTHS.index(month) + 1
    opened = dt.date(2010, 1, 1)
    rows = [("A1", "MILLER, ANNA", "12 Pine St.", "98123-0412", "SEATTLE", f"tariff-{n}", opened)]
    if n <= 3:
        rows.append(("A2", "B. Schmidt", "Maple Ave 7", "98402", "Tacoma WA", "residential", opened))
    if n >= 3:
        rows.append(("A3", "PARK, CLEO", "Oak Rd 3", "98101", "Seattle", "residential", opened))
    if n >= 2:
        rows.append(("A7", "Olga Wolf", "17 Elm Avenue", "98111", "Tacoma", "residential", dt.date(2012, 2, 3)))
    rows.append(("A4" if n < 5 else "A44", "JOHNSON, DAVID", "33 Cedar Ln", "98150", "TACOMA", "commercial", opened))
    return pd.DataFrame(rows, columns=BILLING)


def _latest(month: str, available: list[str]) -> str:
    return [m for m in available if m <= month][-1]


def _read_for(spark, snapshots: dict[str, pd.DataFrame], months: list[str]):
    """One input as a transform of ``months`` is given it: each month's snapshot, tagged with that month."""
    return spark.createDataFrame(pd.concat([snapshots[m].assign(month=m) for m in months], ignore_index=True))


def _inputs(spark, months: list[str], repeat: str | None = None) -> dict:
    registry = {m: registry_snapshot(_latest(m, REGISTRY_MONTHS), repeat=repeat) for m in months}
    billing = {m: billing_snapshot(_latest(m, BILLING_MONTHS)) for m in months}
    return {"registry": _read_for(spark, registry, months), "billing": _read_for(spark, billing, months)}


def _rows_by_month(frame) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in frame.collect():
        out.setdefault(row["month"], []).append(row.asDict())
    return {m: sorted(rows, key=lambda r: r["golden_id"]) for m, rows in out.items()}


def test_a_batch_of_months_gives_each_month_the_rows_it_gives_alone(spark):
    batch = _rows_by_month(rc.golden_customers(_inputs(spark, MONTHS), MONTHS, OPTIONS))
    assert sorted(batch) == MONTHS
    for month in MONTHS:
        alone = _rows_by_month(rc.golden_customers(_inputs(spark, [month]), [month], OPTIONS))
        assert batch[month] == alone[month], month
        registry = registry_snapshot(_latest(month, REGISTRY_MONTHS))
        billing = billing_snapshot(_latest(month, BILLING_MONTHS))
        assert batch[month] == reference_golden(registry, billing, OPTIONS, month), month
    # the snapshots change what each month reconciles: the fixture exercises what it claims
    status = {m: {r["golden_id"]: (r["match_status"], r["billing_ids"]) for r in rows} for m, rows in batch.items()}
    assert status["2012-03"]["G-C1"] == ("matched", "A1") and status["2012-04"]["G-A1"][0] == "billing_only"
    assert "G-C2" in status["2012-03"] and "G-C2" not in status["2012-04"]
    assert status["2012-04"]["G-C40"] == ("matched", "A4") and status["2012-05"]["G-C40"] == ("matched", "A44")
    assert status["2012-02"]["G-C2"] == ("matched", "A2") and status["2012-05"]["G-A7"] == ("billing_only", "A7")
    assert {r["first_seen_month"] for r in batch["2012-03"]} == {r["last_seen_month"] for r in batch["2012-03"]} == {"2012-03"}


def test_an_id_repeated_in_one_month_fails_the_batch_naming_that_month(spark):
    with pytest.raises(
        ValueError, match=r"registry, month 2012-02: ids must be unique within a source's month, repeated: \['C1'\]"
    ):
        rc.golden_customers(_inputs(spark, MONTHS[:3], repeat="2012-02"), MONTHS[:3], OPTIONS)
    # the same snapshot read by another month is that month's error too (its own month named)
    with pytest.raises(ValueError, match=r"registry, month 2012-03: ids must be unique"):
        rc.golden_customers(_inputs(spark, ["2012-03"], repeat="2012-02"), ["2012-03"], OPTIONS)
    # the other months alone are reconciled
    assert rc.golden_customers(_inputs(spark, ["2012-01"], repeat="2012-02"), ["2012-01"], OPTIONS).count() > 0


# ---------------------------------------------------------------------------------------- factory level
def _write_inputs(lake: Lake, repeat: str | None) -> None:
    for month in REGISTRY_MONTHS:
        rows = registry_snapshot(month, repeat=repeat)
        lake.overwrite_month("trusted", "customers", pa.Table.from_pandas(rows, preserve_index=False), month)
    for month in BILLING_MONTHS:
        rows = billing_snapshot(month)
        lake.overwrite_month("trusted", "billing_customers", pa.Table.from_pandas(rows, preserve_index=False), month)


def _materialize(make_project, root: Path, per_plan: int, monkeypatch, repeat: str | None = None):
    """``golden_customers`` over ``MONTHS`` with ``months_per_plan=per_plan`` in a lake of its own: (the
    lake, the batches the transform was called with, the months that each fold read from one batch's
    frame, the step's failure message or None)."""
    from lakehouse.factories import build_definitions

    project = make_project(LAKEHOUSE_ROOT=str(root))
    project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update={"months_per_plan": per_plan})})
    lake = Lake(project.lake_root)
    _write_inputs(lake, repeat)
    calls: list[list[str]] = []
    plans: list[tuple[int, int]] = []
    transform, states = rc.golden_customers, merging.states

    def spy(inputs, months, options):
        calls.append(list(months))
        return transform(inputs, months, options)

    def spied_states(stored, new, **kw):
        frame = states(stored, new, **kw)
        plan = frame._jdf.queryExecution().optimizedPlan().toString()
        plans.append((len(new), plan.count("MapInPandas")))
        return frame

    monkeypatch.setattr(rc, "golden_customers", spy)
    monkeypatch.setattr(merging, "states", spied_states)
    defs = build_definitions(project)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, [KEY], MONTHS[0], MONTHS[-1], instance=instance, raise_on_error=False)
    monkeypatch.setattr(rc, "golden_customers", transform)
    monkeypatch.setattr(merging, "states", states)
    failures = result.get_step_failure_events()
    failure = failures[0].event_specific_data.error.to_string() if failures else None  # type: ignore[union-attr]
    return lake, calls, plans, failure


def _versions(lake: Lake) -> list[list[tuple]]:
    """Every committed version of the golden table, its rows sorted."""
    last = lake.version("exploitation", "golden_customers")
    assert last is not None
    return [
        sorted(
            (tuple(sorted(r.items())) for r in lake.read_arrow("exploitation", "golden_customers", version=v).to_pylist()),
            key=repr,
        )
        for v in range(last + 1)
    ]


def test_the_view_in_batches_commits_every_version_month_by_month_commits(make_project, tmp_path, spark, monkeypatch):
    batch_lake, batch_calls, batch_plans, failure = _materialize(make_project, tmp_path / "batch", 3, monkeypatch)
    alone_lake, alone_calls, alone_plans, alone_failure = _materialize(make_project, tmp_path / "alone", 1, monkeypatch)
    assert failure is None and alone_failure is None
    assert batch_calls == [MONTHS[:3], MONTHS[3:]] and alone_calls == [[m] for m in MONTHS]
    # the transform is one part of each fold's plan, however many months the fold reads from it
    [parts] = {p for _, p in batch_plans} | {p for _, p in alone_plans}
    assert [n for n, _ in batch_plans] == [3, 2] and parts > 0
    versions = _versions(batch_lake)
    assert len(versions) == len(MONTHS) and versions == _versions(alone_lake)
    last = {r["golden_id"]: r for r in batch_lake.read_arrow("exploitation", "golden_customers").to_pylist()}
    assert last["G-C2"]["last_seen_month"] == "2012-03" and last["G-C3"]["first_seen_month"] == "2012-02"
    assert last["G-A1"]["first_seen_month"] == "2012-04" and last["G-C40"]["billing_ids"] == "A44"


def test_a_month_with_repeated_ids_fails_alone_naming_it(make_project, tmp_path, spark, monkeypatch):
    """The transform of a batch fails (April's registry repeats an id): each month of that batch is computed
    again alone, April fails naming its month, the others commit what month by month commits."""
    batch_lake, batch_calls, _, failure = _materialize(make_project, tmp_path / "batch", 3, monkeypatch, "2012-04")
    alone_lake, _, _, alone_failure = _materialize(make_project, tmp_path / "alone", 1, monkeypatch, "2012-04")
    assert batch_calls == [MONTHS[:3], MONTHS[3:], *[[m] for m in MONTHS[3:]]]
    assert failure is not None and alone_failure is not None
    assert "registry, month 2012-04: ids must be unique" in failure, failure
    versions = _versions(batch_lake)
    assert len(versions) == len(MONTHS) - 1 and versions == _versions(alone_lake)


# ------------------------------------------------------------------------------------------ Lake level
def test_months_of_one_frame_fold_as_frames_of_their_own(spark, tmp_path):
    """``Lake.merge_months`` given each month's share of one batch frame (``MonthRows``) commits what it
    commits given each month's rows as a frame; a month repeating a key fails alone; when computing the batch
    frame fails, nothing is committed and the error is raised (the caller computes the months alone)."""
    from pyspark.sql import functions as F

    from lakehouse_tests.test_merge_batch import KW, _month, _one_by_one, _same_versions

    months = [("2012-01", ["G1", "G2"]), ("2012-02", ["G2", "G2"]), ("2012-03", ["G1", "G3", None]), ("2012-04", ["G3"])]
    frames = [_month(spark, m, ids, last=m) for m, ids in months]
    batch = frames[0].withColumn("month", F.lit(months[0][0]))
    for (m, _), frame in zip(months[1:], frames[1:], strict=True):
        batch = batch.unionByName(frame.withColumn("month", F.lit(m)))
    shared = Lake(tmp_path / "shared")
    got = shared.merge_months(spark, "exploitation", "golden", [merging.MonthRows(batch, "month", m) for m, _ in months], **KW)
    alone_lake = Lake(tmp_path / "alone")
    _same_versions(shared, got, alone_lake, _one_by_one(spark, alone_lake, frames))
    assert isinstance(got[1], ValueError) and "repeat a key" in str(got[1])

    broken = batch.withColumn("name", F.when(F.col("month") == "2012-03", F.raise_error("boom")).otherwise(F.col("name")))
    failing = Lake(tmp_path / "failing")
    with pytest.raises(Exception, match="boom"):
        failing.merge_months(spark, "exploitation", "golden", [merging.MonthRows(broken, "month", m) for m, _ in months], **KW)
    assert not failing.exists("exploitation", "golden")
