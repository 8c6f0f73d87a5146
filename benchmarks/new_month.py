"""A new month through the whole demo graph, from the inbox to the predictions. A script, not a test.

    .venv/bin/python -m benchmarks.new_month [--lake .lakehouse] [--world .demo] [--months 2012-01,2015-12]

Needs the lake and world ``make demo`` built (all 48 months, trained models). Works on a copy of the lake
in a temporary directory. For each month given, in order: the month's landing folders of every source are
removed from the copy, so the meter files in the inbox, the weather provider's days, the registry's rows
and the billing exports of that month are new to the lake; then a **fresh process** materializes every
monthly asset for that month in one run with one Spark session — landing, formatted, trusted,
exploitation, and the monthly ML outputs (consumption predictions, flagged meter-days) from the trained
models. The demo's weather provider runs meanwhile.

Prints one line per month (wall time of the process, Spark start, seconds per zone from Dagster's step
statistics) and a JSON summary on the last line. The months run on the same 48-month lake, so month 48 vs
month 1 compares a month with three months of unit-step history against one with none, on tables of the
same size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(month: str) -> None:
    """In the fresh process: materialize every monthly asset of ``month`` and print the figures as JSON."""
    started = time.monotonic()
    import dagster as dg

    from lakehouse import settings
    from lakehouse.factories import build_definitions

    defs = build_definitions(settings.load())
    imported = time.monotonic()
    defs.resources["spark"].session()
    spark_start = time.monotonic() - imported
    monthly = [a.key for a in defs.assets if a.partitions_def is not None]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        defs.assets,
        selection=monthly,
        resources=defs.resources,
        instance=instance,
        partition_key=month,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    zones: dict[str, float] = {}
    steps: dict[str, float] = {}
    for stat in instance.get_run_step_stats(result.run_id):
        seconds = (stat.end_time or time.time()) - stat.start_time
        steps[stat.step_key.replace("__", "/", 1)] = round(seconds, 2)
        zone = stat.step_key.split("__")[0]
        zones[zone] = round(zones.get(zone, 0.0) + seconds, 2)
    print(
        json.dumps(
            {
                "month": month,
                "success": result.success,
                "assets": len(monthly),
                "imports_s": round(imported - started, 2),
                "spark_start_s": round(spark_start, 2),
                "run_s": round(time.monotonic() - imported - spark_start, 2),
                "zones_s": zones,
                "steps_s": dict(sorted(steps.items(), key=lambda kv: -kv[1])),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.new_month", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", type=Path, default=REPO / ".lakehouse")
    parser.add_argument("--world", type=Path, default=REPO / ".demo")
    parser.add_argument("--months", default="2012-01,2015-12")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    if not (args.lake / "ml").is_dir():
        raise SystemExit(f"{args.lake}: no trained models; run `make demo` first")
    from lakehouse.sim.demo import weather_provider

    out = []
    with tempfile.TemporaryDirectory(prefix="new-month-") as tmp, weather_provider():
        lake = Path(tmp) / "lake"
        shutil.copytree(args.lake, lake)
        env = {**os.environ, "LAKEHOUSE_ROOT": str(lake), "LAKEHOUSE_DEMO_ROOT": str(args.world.resolve()), "DAGSTER_HOME": tmp}
        for month in args.months.split(","):
            removed = [d for d in (lake / "landing").glob(f"*/{month}") if d.is_dir()]
            for d in removed:
                shutil.rmtree(d)
            t0 = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.new_month", "--child", month],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - t0
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{month}: the run's process failed (exit {proc.returncode})")
            figures = {**json.loads(lines[-1]), "wall_s": round(wall, 1), "landing_folders_removed": len(removed)}
            out.append(figures)
            print(
                f"{month}: {'ok' if figures['success'] else 'FAILED'} {wall:.1f} s wall (imports {figures['imports_s']} s, "
                f"Spark start {figures['spark_start_s']} s, run {figures['run_s']} s; {figures['assets']} assets) "
                f"zones: {figures['zones_s']}",
                flush=True,
            )
    if len(out) >= 2 and all(f["success"] for f in out):
        print(f"last ÷ first, wall: {out[-1]['wall_s'] / out[0]['wall_s']:.2f}×")
    print(json.dumps(out))
    return 0 if all(f["success"] for f in out) else 1


if __name__ == "__main__":
    raise SystemExit(main())
