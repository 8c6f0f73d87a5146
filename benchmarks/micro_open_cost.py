"""Micro-benchmark: one month of many small meter files through the formatted zone's Spark job, with
Spark's default ``spark.sql.files.openCostInBytes`` (4 MB: ~31 files of 25 KB per task) and a small one
(fewer, bigger tasks). Same process, same warm session, alternating, so the ratio is a same-run ratio.

    python -m benchmarks.micro_open_cost --world benchmarks/_work/worlds/1440x48 --month 2012-01 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import median

from benchmarks.contenders import meter_files


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--month", default="2012-01")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--values", default="4194304,65536")
    args = p.parse_args()
    os.environ.setdefault("LAKEHOUSE_DEMO_ROOT", str(args.world))
    from lakehouse import settings
    from lakehouse.io.formatting import read_raw
    from lakehouse.io.spark import get_spark
    from lakehouse.transforms.parse import cast_checked

    project = settings.load()
    source = project.source("meter_readings")
    files = [str(f) for f in meter_files(args.world, f"{args.month}:{args.month}")[args.month]]
    spark = get_spark(project.lakehouse.spark)
    values = args.values.split(",")
    cast_checked(read_raw(spark, files, source), source, args.month).toArrow()  # warm-up
    times: dict[str, list[float]] = {v: [] for v in values}
    tasks: dict[str, int] = {}
    for _ in range(args.repeats):
        for v in values:
            spark.conf.set("spark.sql.files.openCostInBytes", v)
            df = cast_checked(read_raw(spark, files, source), source, args.month)
            t0 = time.monotonic()
            rows = df.toArrow().num_rows
            times[v].append(time.monotonic() - t0)
            tasks[v] = read_raw(spark, files, source).rdd.getNumPartitions()
    print(
        json.dumps(
            {
                "files": len(files),
                "rows": rows,
                "loadavg": os.getloadavg(),
                "seconds": {v: [round(t, 2) for t in ts] for v, ts in times.items()},
                "median": {v: round(median(ts), 2) for v, ts in times.items()},
                "tasks": tasks,
            }
        )
    )


if __name__ == "__main__":
    main()
