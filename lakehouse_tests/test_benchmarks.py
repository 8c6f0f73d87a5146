"""Smoke test of the benchmark harness at a tiny scale (marker ``benchmark``: deselected by default).

Run with ``pytest -m benchmark lakehouse_tests/test_benchmarks.py``. It checks that every contender runs and
that they agree on the rows they produce; it measures nothing (speed targets live in docs/benchmarks.md).
How a failed run is summarised is checked in the default suite.
"""

from __future__ import annotations

import pytest


def test_a_failed_run_is_reported_by_its_cause_not_its_last_stack_frames():
    from benchmarks.runner import failure_cause

    jvm_oom = "\n".join(
        [
            "26/12/04 17:38:03 ERROR Executor: Exception in task 1.0 in stage 8.0 (TID 10101)",
            "java.lang.OutOfMemoryError: Java heap space",
            "\tat org.apache.spark.sql.execution.SparkPlan.executeCollect(SparkPlan.scala:1)",
            "Traceback (most recent call last):",
            '  File "spark_same.py", line 59, in main',
            "py4j.protocol.Py4JJavaError: An error occurred while calling o482.getResult.",
            "Caused by: org.apache.spark.SparkException: Job 5 cancelled because SparkContext was shut down",
            "\tat org.apache.spark.security.SocketAuthServer$$anon$1.run(SocketAuthServer.scala:91)",
        ]
    )
    assert failure_cause(jvm_oom) == (
        "java.lang.OutOfMemoryError: Java heap space | "
        "Caused by: org.apache.spark.SparkException: Job 5 cancelled because SparkContext was shut down"
    )
    assert (
        failure_cause('Traceback (most recent call last):\n  File "x", line 3\nSystemExit: the run failed')
        == "SystemExit: the run failed"
    )
    assert failure_cause("line one\nno exception named here") == "line one | no exception named here"


@pytest.mark.benchmark
def test_contenders_run_and_agree(tmp_path):
    from benchmarks import runner
    from benchmarks.world import Scale, ensure_world

    world = ensure_world(Scale(3, 2), log=lambda *_: None)
    rows = {}
    for name, module in (
        ("floor", "benchmarks.contenders.pyarrow_floor"),
        ("pandas", "benchmarks.contenders.pandas_baseline"),
        ("pyspark", "benchmarks.contenders.pyspark_script"),
        ("spark_same", "benchmarks.contenders.spark_same"),
        ("spark_monthly", "benchmarks.contenders.spark_monthly"),
        ("lakehouse", "benchmarks.contenders.lakehouse"),
    ):
        work = tmp_path / name
        run = runner.run(
            name,
            [module, "--world", world["path"], "--work", str(work)],
            scale="3x2",
            repeat=1,
            budget_s=900,
            log_dir=tmp_path,
            env={"DAGSTER_HOME": str(work / "dagster_home")},
        )
        assert run.status == "ok", (name, run.note)
        assert run.peak_rss_mb > 0 and run.wall_s > 0
        rows[name] = run.figures["rows"]
    assert rows["floor"]["formatted"] == world["readings"]
    for name in ("pandas", "pyspark", "lakehouse"):
        assert rows[name]["formatted"] == world["readings"], name
        assert rows[name]["trusted"] == rows["pandas"]["trusted"], name
        assert rows[name]["exploitation"] == rows["pandas"]["exploitation"], name
    # the same transforms without orchestration, over the range or a month at a time: the same rows as the
    # lakehouse in every zone
    assert rows["spark_same"] == rows["lakehouse"]
    assert rows["spark_monthly"] == rows["lakehouse"]


@pytest.mark.benchmark
def test_report_renders_a_session(tmp_path):
    from benchmarks import report

    run = {
        "contender": "lakehouse",
        "scale": "1x1",
        "repeat": 1,
        "status": "ok",
        "wall_s": 10.0,
        "peak_rss_mb": 100.0,
        "loadavg_before": [1, 1, 1],
        "loadavg_after": [1, 1, 1],
        "note": "",
        "figures": {"zone_seconds": {"formatted": 2.0}, "rows": {"formatted": 730}},
    }
    session = {
        "started": "now",
        "machine": {"cpus": 2, "memory_gb": 1, "platform": "p", "python": "3.11", "java": "j", "versions": {}},
        "loadavg_start": [1, 1, 1],
        "code": {},
        "args": {"repeats": 1, "budget": 1, "rss_limit": 1},
        "note": "",
        "worlds": {"1x1": {"readings": 730, "files": 1, "bytes": 1}},
        "runs": [run, {**run, "contender": "pyspark", "wall_s": 5.0}],
        "skipped": [],
    }
    report.render([session], tmp_path)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "2.00×" in text and (tmp_path / "cost_vs_size.png").exists()
