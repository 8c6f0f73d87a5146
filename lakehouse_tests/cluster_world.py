"""Drive a small world through the zones on one Spark deployment and print every table's fingerprint.

A process holds one kind of Spark session (a local JVM, a standalone cluster's driver or a Spark Connect
client), so each deployment runs this module in its own process::

    python -m lakehouse_tests.cluster_world --world W --lake L [--master URL | --remote sc://...] [--conf k=v]

The world (``W``, written by :func:`write_world`) is shared by every deployment; each gets its own lake.
The landing, formatted, trusted, quality and exploitation zones are materialized for :data:`MONTHS` in one
run, with the project's own resources (``lakehouse.settings.load`` reads the overrides from the
environment, as a deployment would). The JSON printed on stdout maps ``zone/table`` to its row count and a
hash of its sorted rows (:func:`fingerprints`), with the run's seconds (session start included); off a local master it adds where the executors imported
the package from, and on a cluster master the application id and Spark's per-executor task counts from
the driver's REST API, read before the session stops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

MONTHS = ["2012-01", "2012-02"]
#: columns that name the run that wrote a row (they differ between any two runs)
RUN_COLUMNS = {"run_id", "batch_id", "written_at"}


def write_world(world: Path) -> None:
    """A small deterministic world: 3 meters with faults, the customer registry and billing exports."""
    from lakehouse.sim.customers import CustomerWorld
    from lakehouse.sim.world import MeterWorld, WorldConfig

    config = WorldConfig(meters=3, fault_rate=0.01, seed=3)
    MeterWorld(config).write(world, MONTHS)
    CustomerWorld(config).write(world, MONTHS)


def fingerprints(lake_root: Path) -> dict[str, dict[str, object]]:
    """``zone/table`` → rows and a hash of the sorted rows (run columns left out; append-only quality
    tables as of their newest batch per month) for every Delta table under ``lake_root``."""
    from lakehouse.io.lake import Lake
    from lakehouse.quality import quarantine, repairs

    lake = Lake(lake_root)
    current = {("quality", "quarantine"): quarantine.current, ("quality", "repairs"): repairs.current}
    out: dict[str, dict[str, object]] = {}
    for zone, table in ((z, t) for z in lake.storage.folders(lake.root) for t in lake.storage.folders(lake.storage.uri(z))):
        if not lake.exists(zone, table):
            continue
        data = current[(zone, table)](lake) if (zone, table) in current else lake.read_arrow(zone, table)
        data = data.select([c for c in data.column_names if c not in RUN_COLUMNS])
        rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in data.to_pylist())
        out[f"{zone}/{table}"] = {"rows": len(rows), "sha256": hashlib.sha256("\n".join(rows).encode()).hexdigest()}
    return out


def executors(session) -> dict[str, object]:
    """The application id and each executor's completed tasks, from the driver's REST API (its UI must be on)."""
    ui = session.sparkContext.uiWebUrl
    app = session.sparkContext.applicationId
    with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/allexecutors", timeout=30) as response:
        listed = json.load(response)
    return {"app_id": app, "executors": {e["id"]: {"host": e["hostPort"], "tasks": e["completedTasks"]} for e in listed}}


def executor_origins(session) -> list[str]:
    """Where the executors' Python imports the ``lakehouse`` package from (one task per partition)."""
    return sorted({r.origin for r in session.range(2, numPartitions=2).mapInArrow(_origin, "origin string").collect()})


def _origin(batches):
    """(on an executor) the file its Python imports the lakehouse package from."""
    import pyarrow as pa

    import lakehouse

    for _ in batches:
        yield pa.RecordBatch.from_pydict({"origin": [lakehouse.__file__]})


def run(world: Path, lake_root: Path) -> dict[str, object]:
    import dagster as dg

    from lakehouse import settings
    from lakehouse.factories import build_definitions
    from lakehouse.io.spark import is_local
    from lakehouse.sim.weather_server import WeatherServer

    os.environ["LAKEHOUSE_ROOT"] = str(lake_root)
    os.environ["LAKEHOUSE_DEMO_ROOT"] = str(world)
    started = time.monotonic()
    with WeatherServer(host="127.0.0.1", port=0) as server:
        os.environ["LAKEHOUSE_WEATHER_URL"] = server.url
        project = settings.load()
        defs = build_definitions(project)
        zones = [a.key for a in defs.assets if a.partitions_def is not None and a.key.path[0] != "ml"]
        result = dg.materialize(
            defs.assets,
            selection=zones,
            resources=defs.resources,
            instance=dg.DagsterInstance.ephemeral(),
            tags={"dagster/asset_partition_range_start": MONTHS[0], "dagster/asset_partition_range_end": MONTHS[-1]},
            raise_on_error=True,
        )
        session = defs.resources["spark"].session()
        out: dict[str, object] = {"success": result.success, "seconds": round(time.monotonic() - started, 1)}
        out["tables"] = fingerprints(lake_root)
        spark = project.lakehouse.spark
        if spark.remote or not is_local(spark.master):
            out["executor_lakehouse"] = executor_origins(session)
        if not spark.remote and not is_local(spark.master):
            out.update(executors(session))
        session.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--lake", type=Path, required=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--master", help="spark.master (default: the configs' local master)")
    where.add_argument("--remote", help="a Spark Connect URL, sc://host:port")
    args = parser.parse_args(argv)
    if args.master:
        os.environ["LAKEHOUSE_SPARK_MASTER"] = args.master
    if args.remote:
        os.environ["LAKEHOUSE_SPARK_REMOTE"] = args.remote
    out = run(args.world.resolve(), args.lake.resolve())
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
