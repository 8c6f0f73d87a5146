"""The trusted zone publishes a batch of months to the quality tables together: the batch's quarantine rows
in one commit, its repairs in one, and its months' metric rows and publish rows in one metrics commit,
after each month's own trusted commit. A differential test: the same formatted months cleaned month by
month, in one plan, and in one plan whose unit-step estimates are wrong (its later months cleaned again
alone, and published with the others) give the same current quality tables, figures and checks.
"""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from lakehouse.io.lake import Lake
from lakehouse.quality import metrics, quarantine, repairs
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse_tests.reliability.helpers import RUN_COLUMNS, materialize, project_at, zone_definitions

MONTHS = ["2012-01", "2012-02", "2012-03"]
TRUSTED = dg.AssetKey(["trusted", "meter_readings"])
QUALITY = {"metrics": metrics.TABLE, "quarantine": quarantine.TABLE, "repairs": repairs.TABLE}
#: figures that name the run or the commit rather than the month's content
RUN_FIGURES = {"delta_version", "seconds", "path"}


def _current(lake: Lake, table: tuple[str, str]) -> list[str]:
    """The rows of the current batches of ``table``, without the ids and times of their batch."""
    if table == metrics.TABLE:
        current = set(metrics.current_batches(lake)["batch_id"].to_pylist())
        t = metrics.read(lake)
        t = t.filter(pa.compute.is_in(t["batch_id"], value_set=pa.array(sorted(current), pa.string())))
    else:
        t = metrics.current(lake, table)
    return sorted(repr(sorted((k, v) for k, v in r.items() if k not in RUN_COLUMNS)) for r in t.to_pylist())


def _month_metadata(instance: dg.DagsterInstance) -> dict[str, dict]:
    """Each month's latest materialization metadata of the trusted asset (its run's figures left out)."""
    out = {}
    for month in MONTHS:
        where = dg.AssetRecordsFilter(asset_key=TRUSTED, asset_partitions=[month])
        [record] = instance.fetch_materializations(where, limit=1).records
        meta = record.asset_materialization.metadata
        out[month] = {k: v for k, v in meta.items() if k not in RUN_FIGURES}
    return out


def _checks(result: dg.ExecuteInProcessResult) -> list[tuple]:
    return sorted(
        (e.partition, e.check_name, e.passed, e.severity.value)
        for e in result.get_asset_check_evaluations()
        if e.asset_key == TRUSTED
    )


def test_a_batch_of_months_publishes_in_one_commit_per_quality_table_what_month_by_month_publishes(spark, tmp_path, monkeypatch):
    from lakehouse.factories import trusted
    from lakehouse.quality import units

    world = tmp_path / "world"
    MeterWorld(WorldConfig(meters=2, fault_rate=0.02, seed=11)).write(world, MONTHS)
    real_estimate = units._estimate
    run = ""

    def estimate(months):  # every series' history far below any reading: every file looks 1000x off
        return {key: (1e-9, 10**6) for key in real_estimate(months)} if run == "wrong" else real_estimate(months)

    real_clean_month = trusted.clean_month
    alone: dict[str, list[str]] = {}

    def clean_month(formatted, source, *, month, **kwargs):
        if source.name == "meter_readings":
            alone[run].append(month)
        return real_clean_month(formatted, source, month=month, **kwargs)

    monkeypatch.setattr(units, "_estimate", estimate)
    monkeypatch.setattr(trusted, "clean_month", clean_month)
    seen: dict[str, dict] = {}
    for run, per_plan in (("one", 1), ("plan", 3), ("wrong", 3)):
        alone[run] = []
        project = project_at(tmp_path / f"lake-{run}", world)
        settings_ = {"month_workers": 1, "months_per_plan": per_plan}
        project = project.model_copy(update={"lakehouse": project.lakehouse.model_copy(update=settings_)})
        defs = zone_definitions(project, sources=("meter_readings", "calendar"))
        instance = dg.DagsterInstance.ephemeral()
        upstream = [k for k in (a.key for a in defs.assets) if k != TRUSTED]
        assert materialize(defs, upstream, MONTHS[0], MONTHS[-1], instance).success
        lake = Lake(project.lake_root)
        before = {name: lake.version(*table) for name, table in QUALITY.items()}
        result = materialize(defs, [TRUSTED], MONTHS[0], MONTHS[-1], instance)
        assert result.success
        commits = {name: (lake.version(*table) or 0) - (before[name] or -1) for name, table in QUALITY.items()}
        seen[run] = {
            "commits": commits,
            "tables": {name: _current(lake, table) for name, table in QUALITY.items()},
            "metadata": _month_metadata(instance),
            "checks": _checks(result),
        }
        assert lake.months("trusted", "meter_readings") == MONTHS
    # month by month: a publish per month (and the run's pandera figures), a commit per month with rows
    assert seen["one"]["commits"]["metrics"] == len(MONTHS) + 1
    assert seen["one"]["commits"]["quarantine"] == len(MONTHS)
    # a plan of three months, even with months cleaned again: one commit per quality table (and the
    # run's pandera figures)
    assert seen["plan"]["commits"] == seen["wrong"]["commits"] == {"metrics": 2, "quarantine": 1, "repairs": 1}
    for run in ("plan", "wrong"):
        assert seen[run]["tables"] == seen["one"]["tables"], run
        assert seen[run]["metadata"] == seen["one"]["metadata"], run
        assert seen[run]["checks"] == seen["one"]["checks"], run
    # month by month, each month cleaned alone; the wrong estimates left February and March to be cleaned
    # again alone, then published with January
    assert alone == {"one": MONTHS, "plan": [], "wrong": MONTHS[1:]}
    mine = ("('dataset', 'meter_readings')", "('stage', 'trusted')", f"('metric', '{metrics.PUBLISH_METRIC}')")
    assert len([r for r in seen["one"]["tables"]["metrics"] if all(part in r for part in mine)]) == len(MONTHS)
    assert all(seen["one"]["tables"][t] for t in ("quarantine", "repairs"))
