"""A writer process for the concurrency and crash tests: ``python -m lakehouse_tests.reliability.delta_writer``.

    --mode overwrite  writes ``--writes`` versions of month ``--month`` with Lake.overwrite_month
    --mode append     appends ``--writes`` batches (each tagged with the writer and its number)
    --mode merge      merges ``--writes`` batches of keys ``<writer>-<i>`` into an unpartitioned table (through a
                      local Spark session: Lake.merge's tasks stage the merged table)

Version ``i`` of a writer's payload is a pure function of (writer, i) (:func:`payload`), so a test can
tell which write a table holds. Starts at ``--start-at`` (epoch seconds) so writers collide; prints one
JSON line per write (``{"i": .., "ok": true}`` or the error) and flushes it before the next write.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pyarrow as pa

from lakehouse.io.lake import Lake


def payload(writer: str, i: int, month: str, rows: int = 200) -> pa.Table:
    return pa.table(
        {
            "writer": pa.array([writer] * rows, pa.string()),
            "write": pa.array([i] * rows, pa.int64()),
            "row": pa.array(range(rows), pa.int64()),
            "value": pa.array([float(i * 1000 + r) for r in range(rows)], pa.float64()),
            "month": pa.array([month] * rows, pa.string()),
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--table", default="stress")
    ap.add_argument("--mode", choices=("overwrite", "append", "merge"), default="overwrite")
    ap.add_argument("--writer", required=True)
    ap.add_argument("--month", default="2012-01")
    ap.add_argument("--writes", type=int, default=10)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--start-at", type=float, default=0.0)
    args = ap.parse_args(argv)
    lake = Lake(args.root)
    spark = None
    if args.mode == "merge":
        from lakehouse.io.spark import arrow_frame, get_spark
        from lakehouse.specs.models import SparkSpec

        spark = get_spark(SparkSpec(master="local[1]", conf={"spark.sql.shuffle.partitions": "1"}))
    while time.time() < args.start_at:
        time.sleep(0.001)
    print(json.dumps({"ready": True}), flush=True)
    for i in range(1, args.writes + 1):
        data = payload(args.writer, i, args.month, args.rows)
        try:
            if args.mode == "overwrite":
                version = lake.overwrite_month("formatted", args.table, data, args.month)
            elif args.mode == "append":
                version = lake.append("quality", args.table, data)
            else:
                keyed = data.append_column("key", pa.array([f"{args.writer}-{i}-{r}" for r in range(args.rows)], pa.string()))
                frame = arrow_frame(spark, keyed.drop_columns(["month"]))
                _, version = lake.merge(spark, "exploitation", args.table, frame, on=["key"])
            print(json.dumps({"i": i, "ok": True, "version": version}), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            print(json.dumps({"i": i, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
