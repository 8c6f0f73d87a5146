"""The same month through the zones on local disk and on a local S3-compatible server. A script, not a test.

    .venv/bin/python -m benchmarks.s3_month [--meters 40] [--month 2012-01] [--repeats 2]

Builds a demo world (``--meters`` meters, one month) under a temporary directory, starts ``moto_server`` on
127.0.0.1 (IAM checks on, as in ``lakehouse_tests/test_s3_lake.py``) and the demo's weather provider, then, in
one process with one warm Spark session (after one uncounted warm-up run), materializes landing → formatted → trusted → exploitation of every
source for that month on a fresh local lake and on a fresh ``s3://`` prefix, ``--repeats`` times in
alternating order. Prints seconds per lake and zone (Dagster's step statistics) and the S3 ÷ local ratio, and checks that
both lakes hold the same rows (row counts and a hash of sorted rows per table). moto is an in-memory Python
server on the same 2 cores: the ratio is an upper bound of the cost of going through an object-store API,
not a measure of a real S3 endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def run_month(project, month: str) -> tuple[float, dict[str, float]]:
    import dagster as dg

    from lakehouse.factories import build_definitions

    defs = build_definitions(project)
    keys = [a.key for a in defs.assets if a.partitions_def is not None and a.key.path[0] != "ml"]
    instance = dg.DagsterInstance.ephemeral()
    started = time.monotonic()
    result = dg.materialize(
        defs.assets,
        selection=keys,
        resources=defs.resources,
        instance=instance,
        partition_key=month,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    wall = time.monotonic() - started
    assert result.success
    zones: dict[str, float] = {}
    for stat in instance.get_run_step_stats(result.run_id):
        zone = stat.step_key.split("__")[0]
        zones[zone] = round(zones.get(zone, 0.0) + (stat.end_time - stat.start_time), 2)
    return wall, zones


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_month", description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--month", default="2012-01")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import boto3

    from lakehouse.io.lake import Lake
    from lakehouse.io.maintenance import delta_tables
    from lakehouse.sim.customers import CustomerWorld
    from lakehouse.sim.weather_server import WeatherServer
    from lakehouse.sim.world import MeterWorld, WorldConfig
    from lakehouse.specs import load_project
    from lakehouse_tests.conftest import REPO, free_port, start_moto
    from lakehouse_tests.test_s3_lake import table_hash

    tmp = Path(tempfile.mkdtemp(prefix="s3month-"))
    config = WorldConfig(meters=args.meters, fault_rate=0.002, seed=1)
    MeterWorld(config).write(tmp / "world", [args.month])
    CustomerWorld(config).write(tmp / "world", [args.month])
    port = free_port()
    moto = start_moto(port, {"INITIAL_NO_AUTH_ACTION_COUNT": "1000000000"})
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    ).create_bucket(Bucket="lake")
    os.environ.update(
        {"LAKEHOUSE_S3_ENDPOINT": endpoint, "LAKEHOUSE_S3_ACCESS_KEY_ID": "bench", "LAKEHOUSE_S3_SECRET_ACCESS_KEY": "bench"}
    )
    from lakehouse.io.spark import get_spark
    from lakehouse.specs.models import SparkSpec

    get_spark(SparkSpec(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"}))
    out: dict[str, list] = {"local": [], "s3": []}
    try:
        with WeatherServer(host="127.0.0.1", port=0) as weather:

            def project_for(root: str):
                env = {
                    **os.environ,
                    "LAKEHOUSE_ROOT": root,
                    "LAKEHOUSE_DEMO_ROOT": str(tmp / "world"),
                    "LAKEHOUSE_WEATHER_URL": weather.url,
                }
                return load_project(REPO / "configs", env=env)

            # warm-up, not counted: the first run of a process pays for Spark's code generation and caches
            wall, _ = run_month(project_for(str(tmp / "lake-warmup")), args.month)
            print(json.dumps({"warmup_s": round(wall, 2)}), flush=True)
            for repeat in range(args.repeats):
                # alternating order: neither lake always runs first
                for kind in ("local", "s3") if repeat % 2 == 0 else ("s3", "local"):
                    root = str(tmp / f"lake-{repeat}") if kind == "local" else f"s3://lake/bench-{repeat}"
                    project = project_for(root)
                    wall, zones = run_month(project, args.month)
                    out[kind].append({"wall": round(wall, 2), "zones": zones, "root": root})
                    print(json.dumps({"repeat": repeat, "lake": kind, "wall_s": round(wall, 2), "zones_s": zones}), flush=True)
            local = Lake(out["local"][-1]["root"])
            s3 = Lake(out["s3"][-1]["root"], project.lakehouse.storage, env=os.environ)
            tables = delta_tables(local)
            same = tables == delta_tables(s3) and all(table_hash(local, *t) == table_hash(s3, *t) for t in tables)
    finally:
        moto.terminate()
    local_s, s3_s = statistics.median(r["wall"] for r in out["local"]), statistics.median(r["wall"] for r in out["s3"])
    print(
        json.dumps(
            {
                "month": args.month,
                "meters": args.meters,
                "repeats": args.repeats,
                "local_median_s": local_s,
                "s3_median_s": s3_s,
                "ratio": round(s3_s / local_s, 2),
                "same_tables": same,
                "tables": len(tables),
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
