"""R5: writers in separate processes committing to the same Delta tables at the same time.

Every write either commits or fails with :class:`lakehouse.io.lake.CommitConflictError` (never lost,
never half-applied), and the table ends as the sum of the committed writes. delta-rs reports a lost race
as ``CommitFailedError`` (and as a plain ``DeltaError`` "A table already exists" when two writers create a
table); :meth:`Lake._commit` retries both.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lakehouse.io.lake import Lake
from lakehouse_tests.reliability.delta_writer import payload
from lakehouse_tests.reliability.helpers import REPO


def run_writers(root: Path, specs: list[dict], *, delay: float = 1.5) -> dict[str, list[dict]]:
    """Start one process per spec, all released at the same instant; their per-write reports."""
    start_at = time.time() + delay
    procs = {}
    for spec in specs:
        args = [
            sys.executable,
            "-m",
            "lakehouse_tests.reliability.delta_writer",
            "--root",
            str(root),
            "--start-at",
            str(start_at),
        ]
        for k, v in spec.items():
            args += [f"--{k}", str(v)]
        procs[spec["writer"]] = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for writer, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        out[writer] = [json.loads(line) for line in stdout.splitlines() if line.startswith("{") and '"i"' in line]
    return out


def summarize(reports: dict[str, list[dict]]) -> dict:
    ok = sum(r["ok"] for rs in reports.values() for r in rs)
    errors = Counter(r["error"].split(":")[0] for rs in reports.values() for r in rs if not r["ok"])
    return {"writes": sum(len(rs) for rs in reports.values()), "committed": ok, "errors": dict(errors)}


def test_two_months_and_a_rival_writer_all_commit(tmp_path):
    """Two processes replace different months, a third races the first on the same month: every write
    commits (retried when it lost the race) and each month holds its writer's last version, whole."""
    root = tmp_path / "lake"
    writes = 6
    reports = run_writers(
        root,
        [
            {"writer": "a", "month": "2012-01", "writes": writes},
            {"writer": "b", "month": "2012-02", "writes": writes},
            {"writer": "c", "month": "2012-01", "writes": writes},
        ],
    )
    s = summarize(reports)
    assert s["errors"] == {} and s["committed"] == 3 * writes, s
    lake = Lake(root)
    t = lake.read_arrow("formatted", "stress").to_pylist()
    by_month = Counter((r["month"], r["writer"], r["write"]) for r in t)
    # each month is exactly one write of one writer: never a mix, never a half
    assert {m for m, _, _ in by_month} == {"2012-01", "2012-02"}
    for month in ("2012-01", "2012-02"):
        held = [(w, i) for (m, w, i) in by_month if m == month]
        assert len(held) == 1 and by_month[(month, *held[0])] == 200, by_month
    assert by_month[("2012-02", "b", writes)] == 200  # b's month is only b's, at its last write
    ((w, i),) = [(w, i) for (m, w, i) in by_month if m == "2012-01"]
    assert i == writes and w in ("a", "c")  # whoever committed last, at its last write
    history = [h for h in lake.history("formatted", "stress") if h.get("operation") in ("WRITE", "CREATE TABLE")]
    assert len(history) == 3 * writes  # one commit per write: none lost, none doubled


def test_concurrent_appends_and_merges_keep_every_write(tmp_path):
    root = tmp_path / "lake"
    writes = 5
    reports = run_writers(
        root,
        [
            {"writer": "a", "mode": "append", "writes": writes, "month": "2012-01"},
            {"writer": "b", "mode": "append", "writes": writes, "month": "2012-02"},
            {"writer": "c", "mode": "merge", "writes": writes, "rows": 50},
            {"writer": "d", "mode": "merge", "writes": writes, "rows": 50},
        ],
    )
    s = summarize(reports)
    assert s["errors"] == {} and s["committed"] == 4 * writes, s
    lake = Lake(root)
    appended = Counter((r["writer"], r["write"]) for r in lake.read_arrow("quality", "stress").to_pylist())
    assert appended == {(w, i): 200 for w in "ab" for i in range(1, writes + 1)}
    merged = lake.read_arrow("exploitation", "stress").to_pylist()
    assert sorted(r["key"] for r in merged) == sorted(
        f"{w}-{i}-{r}" for w in "cd" for i in range(1, writes + 1) for r in range(50)
    )


def test_a_commit_that_keeps_losing_fails_clearly(tmp_path, monkeypatch):
    """When every attempt loses the race, the write is not committed and the error says so."""
    from deltalake.exceptions import CommitFailedError

    from lakehouse.io import lake as lake_mod

    lake = Lake(tmp_path / "lake")
    lake.overwrite_month("formatted", "t", payload("a", 1, "2012-01"), "2012-01")
    calls = []

    def always_lose():
        calls.append(1)
        raise CommitFailedError("Commit failed: a concurrent transactions added new data")

    monkeypatch.setattr(lake_mod.time, "sleep", lambda s: None)
    with pytest.raises(lake_mod.CommitConflictError, match="lost 8 races .* nothing of this write was committed"):
        lake._commit("formatted", "t", always_lose)
    assert len(calls) == lake_mod.COMMIT_ATTEMPTS
    assert lake.version("formatted", "t") == 0
    # errors that are not lost races are not retried
    with pytest.raises(ValueError):
        lake._commit("formatted", "t", lambda: (_ for _ in ()).throw(ValueError("bad data")))


def test_losing_the_race_to_create_a_table_is_retried(spark, tmp_path, monkeypatch):
    """Two writers that both see no table: the second one's create fails with "A table already exists";
    Lake retries it as a merge into the table the first one created, so both writes are kept."""
    import pyarrow as pa

    from lakehouse.io import lake as lake_mod
    from lakehouse.io.spark import arrow_frame

    lake = Lake(tmp_path / "lake")
    first = arrow_frame(spark, pa.table({"key": ["a"], "value": [1.0]}))
    lake.merge(spark, "exploitation", "m", first, on=["key"])  # the rival's create
    real = lake_mod.DeltaTable.is_deltatable
    seen = []

    def stale_check(uri, *a, **k):  # this writer looked before the rival committed
        seen.append(uri)
        return False if len(seen) == 1 else real(uri, *a, **k)

    monkeypatch.setattr(lake_mod.DeltaTable, "is_deltatable", staticmethod(stale_check))
    monkeypatch.setattr(lake_mod.time, "sleep", lambda s: None)
    lake.merge(spark, "exploitation", "m", arrow_frame(spark, pa.table({"key": ["b"], "value": [2.0]})), on=["key"])
    assert sorted(r["key"] for r in lake.read_arrow("exploitation", "m").to_pylist()) == ["a", "b"]
    assert len(seen) >= 2  # the create failed once and was retried


def test_two_merges_from_the_same_snapshot_conflict(spark, tmp_path, monkeypatch):
    """A merge replaces the table as of the snapshot it read; a rival merge committed since (even into a
    table with no file to remove) makes the commit lose the race, and the retry merges into the rival's
    table: both writes are kept."""
    import pyarrow as pa

    from lakehouse.io import lake as lake_mod
    from lakehouse.io.spark import arrow_frame

    lake, rival = Lake(tmp_path / "lake"), Lake(tmp_path / "lake")
    empty = pa.table({"key": pa.array([], pa.string()), "value": pa.array([], pa.float64())})
    lake.merge(spark, "exploitation", "m", arrow_frame(spark, empty), on=["key"])
    real = lake_mod.Lake.read_spark
    calls = []

    def rival_commits_first(self, *args, **kwargs):  # between this merge's read and its commit
        calls.append(1)
        if len(calls) == 1:
            rival.merge(spark, "exploitation", "m", arrow_frame(spark, pa.table({"key": ["r"], "value": [1.0]})), on=["key"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(lake_mod.Lake, "read_spark", rival_commits_first)
    # the rival stands for another process: it does not wait for this process's lock of the table
    monkeypatch.setattr(lake_mod, "_table_lock", lambda uri: contextlib.nullcontext())
    monkeypatch.setattr(lake_mod.time, "sleep", lambda s: None)
    lake.merge(spark, "exploitation", "m", arrow_frame(spark, pa.table({"key": ["b"], "value": [2.0]})), on=["key"])
    assert sorted(r["key"] for r in lake.read_arrow("exploitation", "m").to_pylist()) == ["b", "r"]
    assert len(calls) >= 3  # this merge's read, the rival's, and this merge's retry


def test_an_open_table_sees_every_later_commit_and_threads_keep_their_own(tmp_path):
    """``Lake.delta`` keeps each thread's table open and brings it up to date before answering: commits
    made through another ``Lake`` (or another process) are seen, a pinned version is not disturbed, and a
    write through the open table reports its own commit's version."""
    import threading

    import pyarrow as pa

    lake, other = Lake(tmp_path / "lake"), Lake(tmp_path / "lake")
    assert lake.overwrite_month("formatted", "t", pa.table({"v": [1]}), "2012-01") == 0
    first = lake.delta("formatted", "t")
    assert other.overwrite_month("formatted", "t", pa.table({"v": [2, 3]}), "2012-02") == 1
    assert lake.delta("formatted", "t") is first and first.version() == 1
    assert lake.months("formatted", "t") == ["2012-01", "2012-02"] and lake.row_count("formatted", "t") == 3
    assert lake.read_arrow("formatted", "t", version=0).num_rows == 1 and lake.version("formatted", "t") == 1
    assert lake.append("formatted", "t", pa.table({"v": [4], "month": ["2012-02"]})) == 2

    seen: dict[str, object] = {}

    def in_thread() -> None:
        seen["table"] = lake.delta("formatted", "t")
        seen["rows"] = lake.read_arrow("formatted", "t").num_rows

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert seen["table"] is not first and seen["rows"] == 4
