"""``make demo``: build the demo world, materialize the whole graph for every month, print a summary.

Runs in one process against the project's Dagster instance (``DAGSTER_HOME``), so everything it
materializes shows in ``make ui``. The world's providers run for the duration: the weather provider
(:mod:`lakehouse.sim.weather_server`) serves on 127.0.0.1 and ``LAKEHOUSE_WEATHER_URL`` points the
``weather`` source at it; the registry is a SQLite file and the inboxes are folders under the world.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psutil

from lakehouse import settings
from lakehouse.factories import build_definitions
from lakehouse.factories.executor import Weigh, threaded_executor
from lakehouse.io.lake import Lake
from lakehouse.sim import scores, weather_server
from lakehouse.sim.customers import CustomerWorld
from lakehouse.sim.world import MeterWorld, WorldConfig, months_between

# the demo prints progress for people; Dagster's notices about beta parameters would bury it
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

#: the run tags Dagster reads a partition range from (what the UI and the CLI set for a range)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
#: the demo's jobs: the zone tables over the range, the ML training, the monthly ML outputs over the range
ZONES_JOB, ML_JOB, ML_MONTHLY_JOB = "demo_zones", "demo_ml", "demo_ml_monthly"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


WEATHER_URL_ENV = "LAKEHOUSE_WEATHER_URL"
#: the port lakehouse/defs/sources/weather/defs.yaml defaults to
WEATHER_PORT = 8765


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every descendant (the Spark JVM, its Python workers),
    the descendants already reaped included (counted in their parent's ``children_*`` times)."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class CpuMeter:
    """How busy the process tree kept the machine's cores since it was made."""

    wall0: float = field(default_factory=time.monotonic)
    cpu0: float = field(default_factory=tree_cpu_seconds)
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))

    def figures(self) -> dict[str, float]:
        """Wall seconds, CPU seconds and utilisation = CPU ÷ (wall × cores)."""
        wall = time.monotonic() - self.wall0
        cpu = tree_cpu_seconds() - self.cpu0
        return {
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "cores": self.cores,
            "cpu_utilisation": round(cpu / (wall * self.cores), 3),
        }


def build_world(out: Path, start: str, end: str, meters: int, fault_rate: float) -> None:
    """Meter inbox files, the customer registry (SQLite), billing exports and the truth of both."""
    months = months_between(start, end)
    _say(f"[1/3] demo world: {meters} meters x {len(months)} months -> {out}")

    def progress(done: int, total: int, month: str) -> None:
        if done % 6 == 0 or done == total:
            _say(f"      meter files written for {done}/{total} months (up to {month})")

    config = WorldConfig(meters=meters, start=start, end=end, fault_rate=fault_rate)
    MeterWorld(config).write(out, months, progress)
    customers = CustomerWorld(config).write(out, months)
    _say(
        f"      registry {out / 'customers.sqlite'}: {customers['customers']} customers; billing exports:"
        f" {customers['billing_files']} files, {customers['accounts']} accounts ({customers['billing_only']} billing-only)"
    )


@contextlib.contextmanager
def weather_provider(port: int = WEATHER_PORT) -> Iterator[str]:
    """Serve the demo's weather while the block runs; ``LAKEHOUSE_WEATHER_URL`` points at it meanwhile.

    A provider given by the environment (``LAKEHOUSE_WEATHER_URL`` already set) is used as is. Port
    ``port`` is preferred (the config's default); a free port is taken when it is busy.
    """
    given = os.environ.get(WEATHER_URL_ENV)
    if given:
        _say(f"      weather provider from the environment: {given}")
        yield given
        return
    server = weather_server.start("127.0.0.1", port)
    os.environ[WEATHER_URL_ENV] = server.url
    _say(f"      weather provider (NOAA Seattle daily, local): {server.url}")
    try:
        yield server.url
    finally:
        os.environ.pop(WEATHER_URL_ENV, None)
        server.stop()


#: the console shows the runs' INFO lines (one per asset and month: figures, elapsed, time left) and
#: warnings/errors, not every DEBUG event
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def report(result: dg.ExecuteJobResult) -> None:
    """One line per materialized asset of a finished run: months, rows (summed over its months), the
    newest Delta version, step time."""
    seconds = {e.step_key: e.step_success_data.duration_ms / 1000 for e in result.all_events if e.is_step_success}
    assets: dict[str, tuple[set, list]] = {}
    for event in result.get_asset_materialization_events():
        m = event.materialization
        months, metas = assets.setdefault(m.asset_key.to_user_string(), (set(), []))
        months.add(m.partition)
        metas.append({k: v.value for k, v in m.metadata.items()})
    for name, (months, metas) in sorted(assets.items()):
        counts = [meta.get("rows", meta.get("dagster/row_count")) for meta in metas]
        rows = sum(counts) if counts and all(isinstance(c, int) for c in counts) else None
        found = [meta.get("delta_version", meta.get("input_delta_version")) for meta in metas]
        version = max((v for v in found if isinstance(v, int)), default=None)
        step = seconds.get(name.replace("/", "__"))
        _say(
            f"      {name:<34} {len(months - {None}) or '':>3}{' months' if months - {None} else '       '}"
            + (f" {rows:>11,} rows" if isinstance(rows, int) else "")
            + (f"  v{version}" if version is not None else "")
            + (f"  {step:.0f}s" if step is not None else "")
        )


def demo_tags(stage: str, start: str, end: str) -> dict[str, str]:
    """Tags a person can filter the demo's runs by in the UI (Runs -> filter ``lakehouse/trigger:demo``)."""
    return {"lakehouse/trigger": "demo", "lakehouse/stage": stage, "lakehouse/months": f"{start}..{end}"}


def landed_bytes(lake: Lake, defs: dg.Definitions) -> Weigh:
    """An asset's weight in the zones run's order of steps: the bytes landed for the sources it is
    computed from (the landing assets among its ancestors in ``defs``). A landing asset weighs more than
    any other: what it lands is unknown before it runs and weighs every step after it, and collecting only
    copies bytes, so the collectors run first."""
    graph = defs.resolve_asset_graph()

    def weigh(key: dg.AssetKey) -> float:
        if key.path[0] == "landing":
            return math.inf
        sources = [k.path[-1] for k in graph.get_ancestor_asset_keys(key) if k.path[0] == "landing"]
        return float(sum(size for source in sources for _, size in lake.storage.list(lake.uri("landing", source))))

    return weigh


def demo_definitions() -> tuple[dg.Definitions, dict[str, int]]:
    """The project's assets with the demo's jobs, and the number of assets each job materializes.

    The zones job runs independent steps side by side (``step_workers`` threads sharing the Spark session,
    :mod:`lakehouse.factories.executor`), the collectors first, then the steps with the most landed
    bytes ahead of them (:func:`landed_bytes` along their heaviest path to the end of the run); the ML jobs run one step at a time: their trainings seed global
    random generators and limit process-wide thread pools.
    """
    project = settings.load()
    defs = build_definitions(project)
    every = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    zone_assets = [a for a in every if a.partitions_def is not None and a.key.path[0] != "ml"]
    ml_assets = [a for a in every if a.partitions_def is None]
    # monthly ML outputs (predictions, flagged meter-days) need the trained models: they run last
    ml_monthly = [a for a in every if a.partitions_def is not None and a.key.path[0] == "ml"]
    zones_executor = threaded_executor(project.lakehouse.step_workers, landed_bytes(settings.lake(project), defs))
    jobs = {
        name: dg.define_asset_job(name, selection=[k for a in chosen for k in a.keys], description=text, executor_def=executor)
        for name, chosen, text, executor in (
            (ZONES_JOB, zone_assets, "make demo: every zone table over the demo's months", zones_executor),
            (ML_JOB, ml_assets, "make demo: the ML pipelines' training assets", dg.in_process_executor),
            (ML_MONTHLY_JOB, ml_monthly, "make demo: the monthly ML outputs over the demo's months", dg.in_process_executor),
        )
        if chosen
    }
    sizes = {ZONES_JOB: len(zone_assets), ML_JOB: len(ml_assets), ML_MONTHLY_JOB: len(ml_monthly)}
    demo = dg.Definitions(assets=defs.assets, jobs=list(jobs.values()), resources=defs.resources, executor=dg.in_process_executor)
    return demo, {name: sizes[name] for name in jobs}


def demo_job(name: str) -> dg.JobDefinition:
    """One of the demo's jobs, built from the configs: what ``execute_job`` reconstructs (in this process)."""
    return demo_definitions()[0].resolve_job_def(name)


def materialize_all(start: str, end: str, instance: dg.DagsterInstance | None = None) -> dict:
    instance = instance or dg.DagsterInstance.get()
    project = settings.load()
    _, sizes = demo_definitions()

    def run(name: str, stage: str, *, months: bool) -> dg.ExecuteJobResult | None:
        if name not in sizes:
            return None
        tags = demo_tags(stage, start, end) | ({RANGE_START: start, RANGE_END: end} if months else {})
        # execute_job, not execute_in_process: the latter replaces a job's executor by the in-process one
        job = dg.build_reconstructable_job("lakehouse.sim.demo", "demo_job", reconstructable_args=(name,))
        with dg.execute_job(job, instance=instance, tags=tags, run_config=QUIET, raise_on_error=False) as result:
            return result

    zones_cpu = CpuMeter()
    _say(
        f"[2/3] materializing {sizes.get(ZONES_JOB, 0)} zone assets for {start}..{end} in one run of job {ZONES_JOB} (one Spark session)"
    )
    res = run(ZONES_JOB, "zones", months=True)
    assert res is not None, "the demo's configs declare no zone asset"
    zones = zones_cpu.figures()
    zones_s = zones["wall_s"]
    _say(f"      zones {'done' if res.success else 'FAILED (see the errors above)'} in {zones_s:.0f}s:")
    report(res)
    _say(f"[3/3] training {sizes.get(ML_JOB, 0)} ML asset(s) (job {ML_JOB}), then the monthly ML outputs (job {ML_MONTHLY_JOB})")
    t1 = time.monotonic()
    res_ml = run(ML_JOB, "ml", months=False) if res.success else None
    if res_ml is not None:
        report(res_ml)
    res_mm = run(ML_MONTHLY_JOB, "ml_monthly", months=True) if res_ml is not None and res_ml.success else None
    if res_mm is not None:
        report(res_mm)
    ml_meta = {}
    if res_ml is not None:
        for event in res_ml.get_asset_materialization_events():
            m = event.materialization
            ml_meta[m.asset_key.to_user_string()] = {
                k: v.value
                for k, v in m.metadata.items()
                if isinstance(v.value, (int, float)) or (isinstance(v.value, str) and len(v.value) < 100)
            }
    return {
        "success": res.success and (res_ml is None or res_ml.success) and (res_mm is None or res_mm.success),
        "zones_seconds": round(zones_s, 1),
        "zones_cpu_utilisation": zones["cpu_utilisation"],
        "ml_seconds": round(time.monotonic() - t1, 1),
        "ml": ml_meta,
        "lake_root": str(project.lake_root),
    }


def summary(lake: Lake) -> list[str]:
    lines = []
    for zone in ("formatted", "trusted", "exploitation", "quality"):
        for table in lake.storage.folders(lake.storage.uri(zone)):
            if lake.exists(zone, table):
                rows = lake.row_count(zone, table) or 0
                lines.append(
                    f"  {zone + '/' + table:<36} {rows:>10,} rows  {len(lake.months(zone, table)):>3} months  v{lake.version(zone, table)}"
                )
    return lines


def _start_spark() -> None:
    """This process's Spark session, started ahead of the zones run. A session that cannot start is left
    to the run, whose step then fails saying why."""
    from lakehouse.io.spark import get_spark

    with contextlib.suppress(Exception):
        get_spark(settings.load().lakehouse.spark)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.sim.demo", description=__doc__)
    parser.add_argument("--world", type=Path, default=Path(".demo"))
    parser.add_argument("--start", default="2012-01")
    parser.add_argument("--end", default="2015-12")
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--fault-rate", type=float, default=0.002)
    args = parser.parse_args(argv)
    cpu = CpuMeter()
    # the Spark JVM starts on the other core while the world is written (the zones run then finds it)
    spark = threading.Thread(target=_start_spark, name="spark-start", daemon=True)
    spark.start()
    build_world(args.world, args.start, args.end, args.meters, args.fault_rate)
    spark.join()
    with weather_provider():
        result = materialize_all(args.start, args.end, instance=dg.DagsterInstance.get())
    lake = settings.lake(settings.load())
    print("\n== demo summary ==")
    whole = cpu.figures()
    result["cpu"] = whole
    print(f"wall time: {whole['wall_s']:.0f}s (zones {result['zones_seconds']}s, ml {result['ml_seconds']}s)")
    print(
        f"cpu: {whole['cpu_s']:.0f}s of the process tree over {whole['cores']} cores = {whole['cpu_utilisation']:.0%}"
        f" utilisation (zones {result['zones_cpu_utilisation']:.0%})"
    )
    print("\n".join(summary(lake)))
    for asset, meta in result["ml"].items():
        print(f"  {asset}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in meta.items()}))
    print("\n== analyses scored against the demo world's truth (lakehouse.sim.scores) ==")
    print("\n".join(scores.summary_lines(lake, args.world)))
    print(
        "\nLook at it: `make ui`, open http://127.0.0.1:3000 -> Assets (grouped by zone: landing, formatted,"
        " trusted, exploitation, ml); each zone table shows its monthly partitions, each month with its own"
        " figures and check results. Runs: filter by tag lakehouse/trigger=demo."
        f"\nLake: {lake.root}   Demo world (inbox, truth): {args.world.resolve()}"
    )
    return 0 if result["success"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
