"""Driver memory of one large month: formatted → trusted → the daily meter view with a small driver.

    .venv/bin/python -m benchmarks.driver_memory --readings 5000000 [--month 2012-01] [--driver-memory 1g]
        [--max-result-size 64m] [--master local[2] | --master standalone --executor-memory 4g]

Builds (once, cached under ``benchmarks/_work/worlds/``) a one-month meter world of about ``--readings``
hourly readings (:mod:`benchmarks.world`: the demo's simulator, its faults included), then materializes
landing, formatted, trusted and ``exploitation/daily_consumption`` for that month in a **fresh process**
whose Spark driver gets ``spark.driver.memory`` and ``spark.driver.maxResultSize`` from lakehouse.yaml's
``spark.conf`` (the project's own settings; the benchmark's copy of the configs is reduced to the meter
pipeline as :func:`benchmarks.contenders.lakehouse.bench_configs` does).

Measured: the run's success and wall time, seconds per zone (Dagster's step statistics), the driver's peak
JVM heap and off-heap memory as Spark reports them (REST API ``/api/v1/applications/<id>/executors``,
``peakMemoryMetrics`` of the ``driver``), the peak resident memory of the driver JVM and of the Python
driver process (polled with psutil), and the rows of each zone. A local master runs the tasks inside
the driver's JVM, so its heap also holds the tasks' working memory; ``--master standalone`` starts a
standalone master and one worker of two cores from the pyspark package
(:func:`lakehouse.io.spark_servers.standalone_cluster`) whose executor gets ``--executor-memory``, so the
driver's heap holds only what the driver keeps. Results go to
``benchmarks/out/driver_memory-<readings>-<local|standalone>.json`` and the run's log beside it (git-ignored); the summary is
the last line printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from calendar import monthrange
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
ASSETS = ("landing/meter_readings", "formatted/meter_readings", "trusted/meter_readings", "exploitation/daily_consumption")


def child(month: str) -> None:
    """In the fresh process: materialize the meter chain for ``month``, print the figures as JSON."""
    started = time.monotonic()
    import dagster as dg
    import pyarrow as pa

    from lakehouse import settings
    from lakehouse.factories import build_definitions
    from lakehouse.io.lake import Lake

    project = settings.load()
    defs = build_definitions(project)
    session = defs.resources["spark"].session()
    conf = {k: session.conf.get(k, None) for k in ("spark.driver.memory", "spark.driver.maxResultSize", "spark.master")}
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.monotonic()
    result = dg.materialize(
        defs.assets,
        selection=[dg.AssetKey.from_user_string(k) for k in ASSETS],
        resources=defs.resources,
        instance=instance,
        partition_key=month,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    run_s = time.monotonic() - t0
    zones: dict[str, float] = {}
    for stat in instance.get_run_step_stats(result.run_id):
        zone = stat.step_key.split("__")[0]
        zones[zone] = round(zones.get(zone, 0.0) + (stat.end_time or time.time()) - stat.start_time, 2)
    failure = next(
        (
            e.step_failure_data.error.message.strip().splitlines()[0][:400]
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"
        ),
        None,
    )
    lake = Lake(project.lake_root)
    rows = {}
    for zone, table in (("formatted", "meter_readings"), ("trusted", "meter_readings"), ("exploitation", "daily_consumption")):
        if lake.exists(zone, table):
            actions = pa.table(lake.delta(zone, table).get_add_actions(flatten=True))
            rows[zone] = int(sum(int(n or 0) for n in actions.column("num_records").to_pylist()))
    print(
        json.dumps(
            {
                "success": result.success,
                "failure": failure,
                "run_s": round(run_s, 1),
                "zones_s": zones,
                "rows": rows,
                "conf": conf,
                "driver_peak": _driver_peak(session),
                "process_s": round(time.monotonic() - started, 1),
            }
        ),
        flush=True,
    )


def _driver_peak(session) -> dict:
    """The driver's ``peakMemoryMetrics`` from Spark's REST API (MiB), and its JVM's heap pools' peak usage."""
    import urllib.request

    time.sleep(1.5)  # one more metrics poll after the last task
    out: dict = {}
    url = session.sparkContext.uiWebUrl
    if url:
        app = session.sparkContext.applicationId
        with urllib.request.urlopen(f"{url}/api/v1/applications/{app}/executors", timeout=10) as r:
            for e in json.load(r):
                if e["id"] == "driver":
                    peak = e.get("peakMemoryMetrics") or {}
                    out = {
                        k: round(peak[k] / 2**20, 1)
                        for k in ("JVMHeapMemory", "JVMOffHeapMemory", "OnHeapExecutionMemory", "OnHeapStorageMemory")
                        if k in peak
                    }
    jvm = session._jvm.java.lang.management.ManagementFactory
    out["heap_max_mib"] = round(jvm.getMemoryMXBean().getHeapMemoryUsage().getMax() / 2**20, 1)
    return out


def _poll(pid: int, peaks: dict, stop: threading.Event) -> None:
    """Peak RSS (MiB) of the driver's Python process and of its JVM, every quarter second."""
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            peaks["python_rss_mib"] = max(peaks.get("python_rss_mib", 0.0), proc.memory_info().rss / 2**20)
            for c in proc.children(recursive=True):
                if c.name() == "java":
                    peaks["jvm_rss_mib"] = max(peaks.get("jvm_rss_mib", 0.0), c.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        stop.wait(0.25)


def _configs(target: Path, driver_memory: str, max_result: str, executor_memory: str | None) -> Path:
    import yaml

    from benchmarks.contenders.lakehouse import bench_configs

    bench_configs(REPO / "configs", target)
    path = target / "lakehouse.yaml"
    data = yaml.safe_load(path.read_text())
    data["spark"]["conf"] = {
        **(data["spark"].get("conf") or {}),
        "spark.driver.memory": driver_memory,
        "spark.driver.maxResultSize": max_result,
        "spark.ui.enabled": "true",  # the REST API the driver's peak memory is read from
        "spark.executor.metrics.pollingInterval": "250ms",
        **({"spark.executor.memory": executor_memory} if executor_memory else {}),
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.driver_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=5_000_000)
    parser.add_argument("--month", default="2012-01")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--max-result-size", default="64m")
    parser.add_argument("--master", default="local[2]", help="local[N], or 'standalone' (a master and a worker started here)")
    parser.add_argument("--executor-memory", default="4g", help="the standalone worker's executor memory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    from benchmarks.world import FIRST_MONTH, Scale, ensure_world

    if args.month != FIRST_MONTH:
        raise SystemExit(f"--month: benchmark worlds start at {FIRST_MONTH}")
    hours = monthrange(int(args.month[:4]), int(args.month[5:]))[1] * 24
    scale = Scale(max(1, math.ceil(args.readings / hours)), 1)
    world = ensure_world(scale)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    standalone = args.master == "standalone"
    with tempfile.TemporaryDirectory(prefix="driver-memory-") as tmp, ExitStack() as stack:
        master = args.master
        if standalone:
            from lakehouse.io.spark_servers import free_port, standalone_cluster

            master = stack.enter_context(
                standalone_cluster(free_port(), cores=2, memory=args.executor_memory, workdir=Path(tmp) / "spark")
            )
        configs = _configs(
            Path(tmp) / "configs", args.driver_memory, args.max_result_size, args.executor_memory if standalone else None
        )
        env = {
            **os.environ,
            "LAKEHOUSE_ROOT": f"{tmp}/lake",
            "LAKEHOUSE_DEMO_ROOT": world["path"],
            "DAGSTER_HOME": tmp,
            "LAKEHOUSE_CONFIGS": str(configs),
            "LAKEHOUSE_SPARK_MASTER": master,
        }
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.driver_memory", "--child", args.month],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peaks: dict = {}
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(proc.pid, peaks, stop), daemon=True)
        poller.start()
        stdout, stderr = proc.communicate()
        stop.set()
        poller.join()
        wall = time.monotonic() - t0
    OUT.mkdir(exist_ok=True)
    label = f"{world['readings']}-{'standalone' if standalone else 'local'}"
    log = OUT / f"driver_memory-{label}.log"
    log.write_text(stderr)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"the run's process failed (exit {proc.returncode}; its log: {log})")
    figures = {
        "commit": commit,
        "readings": world["readings"],
        "meters": world["meters"],
        "month": args.month,
        "master": args.master,
        "driver_memory": args.driver_memory,
        "max_result_size": args.max_result_size,
        **({"executor_memory": args.executor_memory} if standalone else {}),
        "wall_s": round(wall, 1),
        **json.loads(lines[-1]),
        **{k: round(v, 1) for k, v in peaks.items()},
    }
    (OUT / f"driver_memory-{label}.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    return 0 if figures["success"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
