"""The golden_customers transform on the demo world's customers, this code against an older commit. A script.

    .venv/bin/python -m benchmarks.reconcile [--meters 40] [--repeats 3] [--before-ref REF]

Writes the demo world's registry and last billing export for ``--meters`` buildings (all accounts) under a
temporary directory, reads them into one warm local Spark session (cached, so reading is not timed) and runs
``lakehouse.transforms.reconcile.golden_customers`` with the view's options, evaluated by a ``noop`` write,
``--repeats`` times after an uncounted warm-up. With ``--before-ref`` the transform of that commit runs
alternately in the same session and the rows of both are compared. Prints seconds (median) and Spark jobs.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent


def _module_at(ref: str):
    from benchmarks.snapshot import export

    sha, root = export(ref)
    spec = importlib.util.spec_from_file_location(f"reconcile_{sha[:12]}", root / "lakehouse/transforms/reconcile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return sha[:12], module


def _customers(meters: int, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from lakehouse.sim.customers import REGISTRY_FILE, CustomerWorld
    from lakehouse.sim.world import WorldConfig

    config = WorldConfig(meters=meters)
    CustomerWorld(config).write(out, [config.end])
    with sqlite3.connect(out / REGISTRY_FILE) as db:
        registry = pd.read_sql("SELECT * FROM customers", db).astype({"heated_area_m2": float})
    billing = pd.read_csv(out / "inbox" / "billing_customers" / f"billing_export_{config.end}.csv", sep=";", dtype=str)
    return registry, billing


def _call(module, inputs: dict, options: dict, month: str):
    """``module``'s transform for ``month``: a batch of one (its inputs tagged with the month, the rows'
    ``month`` dropped to compare with older commits) or, before batches, the one-month signature."""
    from pyspark.sql import functions as F

    if "months" not in inspect.signature(module.golden_customers).parameters:
        return module.golden_customers(inputs, month, options)
    tagged = {name: frame.withColumn("month", F.lit(month)) for name, frame in inputs.items()}
    return module.golden_customers(tagged, [month], options).drop("month")


def _run(session, module, inputs: dict, options: dict, group: str) -> tuple[float, int, list]:
    session.sparkContext.setJobGroup(group, group)
    started = time.monotonic()
    out = _call(module, inputs, options, "2015-12")
    out.write.format("noop").mode("overwrite").save()
    wall = time.monotonic() - started
    jobs = len(session.sparkContext.statusTracker().getJobIdsForGroup(group))
    return wall, jobs, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before-ref", default=None)
    args = parser.parse_args(argv)

    from lakehouse.io.spark import get_spark
    from lakehouse.specs.models import SparkSpec
    from lakehouse.transforms import reconcile

    contenders = {"this": reconcile}
    if args.before_ref:
        sha, module = _module_at(args.before_ref)
        contenders[sha] = module
    session = get_spark(SparkSpec(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"}))
    options = yaml.safe_load((REPO / "lakehouse/defs/views/golden_customers/defs.yaml").read_text())["attributes"]["options"]
    with tempfile.TemporaryDirectory() as tmp:
        registry, billing = _customers(args.meters, Path(tmp))
    inputs = {"registry": session.createDataFrame(registry).cache(), "billing": session.createDataFrame(billing).cache()}
    for frame in inputs.values():
        frame.count()
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    jobs: dict[str, int] = {}
    rows: dict[str, list] = {}
    for rep in range(args.repeats + 1):
        for name, module in contenders.items():
            wall, jobs[name], out = _run(session, module, inputs, options, f"{name}-{rep}")
            if rep:
                walls[name].append(wall)
            else:
                rows[name] = sorted(map(tuple, out.collect()))
    print(f"registry {len(registry)} customers, billing {len(billing)} accounts, {args.repeats} repeats")
    for name in contenders:
        runs = ", ".join(f"{w:.2f}" for w in walls[name])
        print(f"{name}: median {statistics.median(walls[name]):.2f} s ({runs}); {jobs[name]} Spark jobs per run")
    for name in list(rows)[1:]:
        print(f"same rows as {name}: {rows['this'] == rows[name]} ({len(rows['this'])} golden rows)")
    session.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
