"""Micro-benchmark: the formatted zone's Spark work for one month, before and after the optimization,
alternating in one warm Spark session (so the ratio is a same-run ratio on a noisy machine).

before: Python line parser for every file, ``persist`` + ``good.toArrow()`` + ``bad.toArrow()`` (two jobs)
after:  pyarrow fast path (line parser only for files with something to report), one job
        (``cast_checked(...).toArrow()``), split on the driver

    python -m benchmarks.micro_formatted --world benchmarks/_work/worlds/1440x48 --month 2012-02 --repeats 3
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
    p.add_argument("--month", default="2012-02")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("LAKEHOUSE_DEMO_ROOT", str(args.world))
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql.pandas.types import from_arrow_schema

    from lakehouse import settings
    from lakehouse.io.spark import get_spark
    from lakehouse.quality import quarantine
    from lakehouse.transforms import parse as P

    project = settings.load()
    source = project.source("meter_readings")
    files = [str(f) for f in meter_files(args.world, f"{args.month}:{args.month}")[args.month]]
    spark = get_spark(project.lakehouse.spark)
    fmt, raw_names = source.format, [c.raw_name for c in source.columns]
    month = args.month

    def read_raw_line_parser():
        def parse_batches(batches):
            from lakehouse.transforms import parse as PW

            PW._parse_fast = lambda *a: None  # the line parser for every file, as before
            for batch in batches:
                for path, content in zip(batch.column("path").to_pylist(), batch.column("content").to_pylist(), strict=True):
                    yield from PW.parse_text(os.path.basename(path), content, fmt, raw_names).to_batches()

        binary = spark.read.format("binaryFile").load(files)
        return binary.select("path", "content").mapInArrow(parse_batches, from_arrow_schema(P.raw_schema(raw_names)))

    def before() -> int:
        raw = read_raw_line_parser().persist()
        try:
            good, bad = P.cast_to_canonical(raw, source, month)
            data = good.toArrow()
            quarantine.quarantine_rows(bad, dataset="m", stage="formatted", run_id="r", month=month, record_columns=None).toArrow()
        finally:
            raw.unpersist()
        return data.num_rows

    def after() -> int:
        checked = P.cast_checked(P.read_raw(spark, files, source), source, month).toArrow()
        is_bad = pc.is_valid(checked.column("error"))
        data = checked.filter(pc.invert(is_bad)).drop_columns(["error", "record"])
        bad = checked.filter(is_bad)
        if bad.num_rows:
            quarantine.quarantine_rows(spark.createDataFrame(bad.select(["month", P.FILE_COL, P.LINE_COL, "record", "error"])),
                                       dataset="m", stage="formatted", run_id="r", month=month, record_columns=None).toArrow()
        return data.num_rows

    after()  # warm-up (JVM, Python workers, code generation)
    before()
    times: dict[str, list[float]] = {"before": [], "after": []}
    rows = {}
    for _ in range(args.repeats):
        for name, fn in (("before", before), ("after", after)):
            t0 = time.monotonic()
            rows[name] = fn()
            times[name].append(round(time.monotonic() - t0, 2))
    assert rows["before"] == rows["after"], rows
    print(json.dumps({"month": month, "files": len(files), "rows": rows["after"], "loadavg": os.getloadavg(),
                      "seconds": times, "median": {k: median(v) for k, v in times.items()},
                      "before_over_after": round(median(times["before"]) / median(times["after"]), 2)}))
    _ = pa


if __name__ == "__main__":
    main()
