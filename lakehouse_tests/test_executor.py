"""The threaded executor: independent steps of one run side by side, dependencies and failures as Dagster's
in-process executor handles them (lakehouse.factories.executor)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from lakehouse.factories.executor import threaded_executor

#: how long each slow step holds; two of them overlap only if they run at the same time
HOLD_S = 1.5


def _log(name: str) -> None:
    with Path(os.environ["EXECUTOR_TEST_LOG"]).open("a") as fh:
        fh.write(f"{name} {time.monotonic()} {threading.get_ident()}\n")


@dg.asset
def left() -> int:
    _log("left start")
    time.sleep(HOLD_S)
    _log("left end")
    return 1


@dg.asset
def right() -> int:
    _log("right start")
    if os.environ.get("EXECUTOR_TEST_FAIL") == "right":
        raise RuntimeError("right failed on purpose")
    time.sleep(HOLD_S)
    _log("right end")
    return 2


@dg.asset
def both(left: int, right: int) -> int:
    _log("both start")
    return left + right


@dg.asset
def aside() -> int:
    _log("aside start")
    _log("aside end")
    return 3


@dg.asset
def a_start() -> int:
    _log("a_start start")
    return 1


@dg.asset
def b_start() -> int:
    _log("b_start start")
    return 1


@dg.asset
def b_middle(b_start: int) -> int:
    return b_start


@dg.asset
def end(a_start: int, b_middle: int) -> int:
    return a_start + b_middle


def chains_job() -> dg.JobDefinition:
    """Two chains to one last asset, ``b``'s a step longer; every asset weighs the same."""
    defs = dg.Definitions(
        assets=[a_start, b_start, b_middle, end],
        jobs=[dg.define_asset_job("chains", executor_def=threaded_executor(1, lambda key: 1.0))],
    )
    return defs.resolve_job_def("chains")


def graph_job(max_concurrent: int = 2, heavy: str = "", with_aside: bool = False) -> dg.JobDefinition:
    """The graph's job; ``heavy`` names the asset that weighs more than the others (none: all weigh the
    same); ``with_aside``: plus an asset no other reads, which weighs more than ``left`` and ``right``."""

    def weigh(key: dg.AssetKey) -> float:
        return 1e9 if key.path[-1] == heavy else 2.0 if key.path[-1] == "aside" else 1.0

    defs = dg.Definitions(
        assets=[left, right, both, *([aside] if with_aside else [])],
        jobs=[dg.define_asset_job("graph", executor_def=threaded_executor(max_concurrent, weigh if heavy else None))],
    )
    return defs.resolve_job_def("graph")


def run(
    tmp_path: Path, monkeypatch, fail: str = "", max_concurrent: int = 2, heavy: str = "", with_aside: bool = False
) -> tuple[dg.ExecuteJobResult, dict[str, float]]:
    log = tmp_path / "steps.log"
    monkeypatch.setenv("EXECUTOR_TEST_LOG", str(log))
    monkeypatch.setenv("EXECUTOR_TEST_FAIL", fail)
    (tmp_path / "home").mkdir(exist_ok=True)
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    job = dg.build_reconstructable_job(__name__, "graph_job", reconstructable_args=(max_concurrent, heavy, with_aside))
    with dg.execute_job(job, instance=instance, raise_on_error=False) as result:
        times = {" ".join(line.split()[:2]): float(line.split()[2]) for line in log.read_text().splitlines()}
        return result, times


def test_independent_steps_overlap_and_a_dependent_step_waits_for_both(tmp_path, monkeypatch):
    result, t = run(tmp_path, monkeypatch)
    assert result.success
    # both slow steps started before either ended: they ran side by side
    assert max(t["left start"], t["right start"]) < min(t["left end"], t["right end"])
    assert t["both start"] >= max(t["left end"], t["right end"])
    done = {e.step_key for e in result.all_events if e.is_step_success}
    assert done == {"left", "right", "both"}


def test_one_step_at_a_time_when_bounded_to_one(tmp_path, monkeypatch):
    result, t = run(tmp_path, monkeypatch, max_concurrent=1)
    assert result.success
    first, second = sorted(("left", "right"), key=lambda n: t[f"{n} start"])
    assert t[f"{second} start"] >= t[f"{first} end"]


@pytest.mark.parametrize("heavy", ["left", "right"])
def test_the_ready_step_that_weighs_more_starts_first(tmp_path, monkeypatch, heavy):
    result, t = run(tmp_path, monkeypatch, max_concurrent=1, heavy=heavy)
    assert result.success
    light = "right" if heavy == "left" else "left"
    assert t[f"{light} start"] >= t[f"{heavy} end"]


def test_the_steps_leading_to_the_heaviest_asset_start_first(tmp_path, monkeypatch):
    """``both`` (computed from ``left`` and ``right``) weighs the most: both its inputs run before
    ``aside``, which weighs more than either of them but leads to nothing."""
    result, t = run(tmp_path, monkeypatch, max_concurrent=1, heavy="both", with_aside=True)
    assert result.success
    assert t["aside start"] >= max(t["left end"], t["right end"]), t


def test_the_ready_step_with_more_work_ahead_starts_first(tmp_path, monkeypatch):
    """Both chains end in ``end``; ``b``'s has one step more ahead of it: it starts first."""
    log = tmp_path / "steps.log"
    monkeypatch.setenv("EXECUTOR_TEST_LOG", str(log))
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    with dg.execute_job(dg.build_reconstructable_job(__name__, "chains_job"), instance=instance) as result:
        assert result.success
    started = [line.split()[0] for line in log.read_text().splitlines()]
    assert started == ["b_start", "a_start"], started


def test_an_asset_weighs_the_bytes_landed_for_its_sources(tmp_path):
    from lakehouse.io.lake import Lake
    from lakehouse.sim.demo import landed_bytes

    @dg.asset(key=["landing", "big"])
    def landing_big() -> None: ...

    @dg.asset(key=["landing", "small"])
    def landing_small() -> None: ...

    @dg.asset(key=["trusted", "big"], deps=[landing_big])
    def trusted_big() -> None: ...

    @dg.asset(key=["exploitation", "view"], deps=[trusted_big, landing_small])
    def view() -> None: ...

    for source, sizes in {"big": [300, 200], "small": [7]}.items():
        for i, size in enumerate(sizes):
            path = tmp_path / "lake" / "landing" / source / "2015-01" / f"f{i}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
    defs = dg.Definitions(assets=[landing_big, landing_small, trusted_big, view])
    weigh = landed_bytes(Lake(tmp_path / "lake"), defs)
    assert weigh(dg.AssetKey(["trusted", "big"])) == 500
    assert weigh(dg.AssetKey(["exploitation", "view"])) == 507
    # the collectors first: what they land is unknown before they run
    assert weigh(dg.AssetKey(["landing", "small"])) > weigh(dg.AssetKey(["exploitation", "view"]))


def test_a_failed_step_fails_the_run_holds_its_dependents_and_lets_the_others_finish(tmp_path, monkeypatch):
    result, t = run(tmp_path, monkeypatch, fail="right")
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    succeeded = {e.step_key for e in result.all_events if e.is_step_success}
    started = {e.step_key for e in result.all_events if e.is_step_start}
    assert failed == {"right"} and succeeded == {"left"} and "both" not in started
    assert "left end" in t and "both start" not in t


@pytest.mark.parametrize("bad", [0, 9])
def test_the_setting_is_bounded(bad):
    from pydantic import ValidationError

    from lakehouse.specs.models import LakehouseSpec

    with pytest.raises(ValidationError, match="step_workers"):
        LakehouseSpec.model_validate({"lake_root": "x", "step_workers": bad})
