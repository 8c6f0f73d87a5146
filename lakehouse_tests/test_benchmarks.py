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
    from benchmarks.check import compare
    from benchmarks.world import Scale, ensure_world

    world = ensure_world(Scale(3, 2), log=lambda *_: None)
    rows, checks = {}, {}
    for name, module in (
        ("floor", "benchmarks.contenders.pyarrow_floor"),
        ("pandas", "benchmarks.contenders.pandas_baseline"),
        ("pyspark", "benchmarks.contenders.pyspark_script"),
        ("spark_same", "benchmarks.contenders.spark_same"),
        ("spark_monthly", "benchmarks.contenders.spark_monthly"),
        ("lakehouse", "benchmarks.contenders.lakehouse"),
        ("duckdb_trusted", "benchmarks.contenders.duckdb_trusted"),
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
        checks[name] = run.figures.get("check")
    assert rows["floor"]["formatted"] == world["readings"]
    for name in ("pandas", "pyspark", "lakehouse"):
        assert rows[name]["formatted"] == world["readings"], name
        assert rows[name]["trusted"] == rows["pandas"]["trusted"], name
        assert rows[name]["exploitation"] == rows["pandas"]["exploitation"], name
    # the same transforms without orchestration, over the range or a month at a time: the same rows as the
    # lakehouse in every zone
    assert rows["spark_same"] == rows["lakehouse"]
    assert rows["spark_monthly"] == rows["lakehouse"]
    # DuckDB's cleaning: the same trusted rows, sums and quarantined rows per rule, month by month
    assert checks["lakehouse"] and compare(checks["lakehouse"], checks["duckdb_trusted"]) == []


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


def test_the_duckdb_contender_cleans_a_faulty_world_as_the_trusted_zone_does(spark, tmp_path):
    """The DuckDB contender's cleaning against the lakehouse's ``clean_month`` on the same formatted rows of
    a small world with many faults (every kind, Wh files among them), month 2 with month 1 as history: the
    same trusted rows (values, imputed rows) and the same quarantined rows by rule."""
    import pyarrow.compute as pc

    from benchmarks.contenders import duckdb_trusted as duck
    from benchmarks.contenders import meter_files
    from lakehouse.io.lake import Lake
    from lakehouse.sim.world import MeterWorld, WorldConfig
    from lakehouse_tests.test_cleaning import as_rows, clean_and_commit, meter_source

    months = ["2012-01", "2012-02"]
    MeterWorld(WorldConfig(meters=3, fault_rate=0.05, seed=3)).write(tmp_path / "world", months)
    source, root, con = meter_source(), tmp_path / "lake", duck.connect()
    lake_history = duck_history = None
    seen_rules: set[str] = set()
    wh_files = 0
    for month, paths in meter_files(tmp_path / "world").items():
        duck.read_month(con, paths)
        assert duck.format_month(con, month) == 0
        formatted = con.sql(
            "SELECT meter_id, ts, v AS reading_kwh, file AS _source_file, line AS _source_line FROM a ORDER BY id"
        ).to_arrow_table()
        wh_files += con.execute("SELECT count(*) FROM (SELECT file FROM a GROUP BY file HAVING median(v) > 100)").fetchall()[0][0]
        trusted, quarantined = duck.clean_month(con, duck_history)
        _, lake_rows = clean_and_commit(spark.createDataFrame(formatted), source, root, month=month, history=lake_history)

        def key(r: dict) -> tuple:
            return (r["meter_id"], r["ts"], r["reading_kwh"], r["_source_file"], r["_source_line"])

        assert sorted(map(key, as_rows(trusted))) == sorted(key(r) for r in lake_rows["trusted"]), month
        assert sorted(
            (r["rule"], r["disposition"], r["_source_file"], r["_source_line"]) for r in as_rows(quarantined)
        ) == sorted((r["rule"], r["disposition"], r["_source_file"], r["_source_line"]) for r in lake_rows["rejected"]), month
        assert pc.count(trusted["_source_line"], mode="only_null").as_py() > 0, f"{month}: no gap was filled"
        seen_rules |= set(quarantined["rule"].to_pylist())
        duck_history = trusted
        lake_history = Lake(root).read_arrow("trusted", source.name, months=[month])
    assert wh_files > 0, "the world sent no file in Wh: the unit step was not exercised"
    assert {"exact_duplicate", "conflicting_readings", "non_negative_reading", "stuck_meter", "outlier_reading"} <= seen_rules
