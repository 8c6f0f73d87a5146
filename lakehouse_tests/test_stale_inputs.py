"""A month computed from inputs that a concurrent run replaced meanwhile is computed again: the newest wins.

Run A reads a month's landing manifest (or an input table's month), run B lands a corrected file (or
rewrites the input month) before A commits. A's commit would hold the superseded data and nothing would
correct it; instead A sees that its inputs changed and computes the month again from the new ones.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lakehouse.collectors.landing import land, read_manifest
from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse_tests.declarations import HEAT_DROP, declare

MONTH = "2012-02"
OLD = b"meter_id,ts,reading_kwh\nM1,2012-02-01T00:00:00Z,1.0\nM1,2012-02-01T01:00:00Z,2.0\n"
NEW = b"meter_id,ts,reading_kwh\nM1,2012-02-01T00:00:00Z,10.0\nM1,2012-02-01T01:00:00Z,20.0\nM1,2012-02-01T02:00:00Z,30.0\n"


def _project(configs_copy: Path, make_project, tmp_path: Path):
    inbox = tmp_path / "world" / "inbox" / "heat_drop"
    inbox.mkdir(parents=True)
    (inbox / f"heat_a_{MONTH}.csv").write_bytes(OLD)
    declare(configs_copy, "sources", "heat_drop", HEAT_DROP)
    project = make_project(configs_copy)
    defs = build_definitions(project)
    lake = Lake(project.lake_root)
    landed = dg.materialize(
        defs.assets, selection=[dg.AssetKey(["landing", "heat_drop"])], partition_key=MONTH, resources=defs.resources
    )
    assert landed.success
    return defs, lake


def _readings(lake: Lake, zone: str) -> list[float]:
    return sorted(r["reading_kwh"] for r in lake.read_arrow(zone, "heat_drop", months=[MONTH]).to_pylist())


def test_a_file_landed_while_the_month_is_formatted_is_not_lost(configs_copy, make_project, tmp_path, spark, monkeypatch):
    import lakehouse.factories.formatted as formatted

    defs, lake = _project(configs_copy, make_project, tmp_path)
    real = formatted.format_months
    calls = []

    def format_while_a_correction_lands(session, files, *args, **kwargs):
        # the files were read from the manifest before this call: a correction landing now is what a
        # concurrent run's landing does between this run's manifest read and its commit
        if not calls:
            entry = land(lake.landing_month("heat_drop", MONTH), f"heat_a_{MONTH}.csv", NEW, origin="test")
            assert entry is not None and entry.status == "landed"
        calls.append(list(files))
        return real(session, files, *args, **kwargs)

    monkeypatch.setattr(formatted, "format_months", format_while_a_correction_lands)
    run = dg.materialize(
        defs.assets, selection=[dg.AssetKey(["formatted", "heat_drop"])], partition_key=MONTH, resources=defs.resources
    )
    assert run.success
    assert len(calls) == 2  # computed again from the new manifest
    assert _readings(lake, "formatted") == [10.0, 20.0, 30.0]  # the corrected file's rows, not the superseded ones
    (entry,) = [e for e in read_manifest(lake.landing_month("heat_drop", MONTH)) if e.status == "landed"]
    assert entry.rows == 3


def test_an_input_month_rewritten_while_trusted_cleans_is_cleaned_again(configs_copy, make_project, tmp_path, spark, monkeypatch):
    import lakehouse.factories.trusted as trusted

    defs, lake = _project(configs_copy, make_project, tmp_path)
    fmt = dg.AssetKey(["formatted", "heat_drop"])
    assert dg.materialize(defs.assets, selection=[fmt], partition_key=MONTH, resources=defs.resources).success
    real = trusted.clean_month
    calls = []

    def clean_while_the_input_is_rewritten(*args, **kwargs):
        if not calls:  # a concurrent run formats the corrected file after this month read formatted
            land(lake.landing_month("heat_drop", MONTH), f"heat_a_{MONTH}.csv", NEW, origin="test")
            assert dg.materialize(defs.assets, selection=[fmt], partition_key=MONTH, resources=defs.resources).success
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trusted, "clean_month", clean_while_the_input_is_rewritten)
    run = dg.materialize(
        defs.assets, selection=[dg.AssetKey(["trusted", "heat_drop"])], partition_key=MONTH, resources=defs.resources
    )
    assert run.success and len(calls) == 2
    assert _readings(lake, "trusted") == [10.0, 20.0, 30.0]
