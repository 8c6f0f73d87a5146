"""The Delta write path: the same table written two ways, in one Delta transaction each.

``--mode collect``: ``df.toArrow()`` on the driver, then ``write_deltalake`` (the lakehouse's path today).
``--mode executors``: every Spark task writes its rows as Parquet files into the table folder
(``mapInArrow``), only file paths and sizes come back, and the driver commits them with one
``DeltaTable.create_write_transaction`` (nothing but metadata is collected).

The table is the formatted meter readings of the world (Spark's CSV reader, cast, partitioned by month);
reading and casting happen inside the timed write for both modes alike.
"""

from __future__ import annotations

import time

from benchmarks.contenders import Clock, arguments, meter_files, write_result
from benchmarks.contenders.pyspark_script import session


def formatted(spark, files):
    from pyspark.sql import functions as F

    raw = spark.read.options(sep=";", header=True).schema("device_id string, timestamp string, reading_kwh string").csv(files)
    return raw.select(
        F.col("device_id").alias("meter_id"),
        F.col("timestamp").try_cast("timestamp").alias("ts"),
        F.col("reading_kwh").try_cast("double").alias("reading_kwh"),
        F.col("_metadata.file_name").alias("_source_file"),
        F.regexp_extract(F.col("_metadata.file_name"), r"_(\d{4}-\d{2})\.csv$", 1).alias("month"),
    )


def write_collect(df, uri: str) -> dict:
    from deltalake import write_deltalake

    t0 = time.monotonic()
    table = df.toArrow()
    collected = time.monotonic() - t0
    write_deltalake(uri, table, mode="overwrite", partition_by=["month"])
    return {"rows": table.num_rows, "collect_seconds": round(collected, 3)}


def write_executors(df, uri: str) -> dict:
    import json
    import os
    import uuid

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(df.schema, timezone="UTC")
    data_schema = pa.schema([f for f in schema if f.name != "month"])
    ts_fields = [f.name for f in data_schema if pa.types.is_timestamp(f.type)]
    data_schema = pa.schema([pa.field(f.name, pa.timestamp("us", tz="UTC")) if f.name in ts_fields else f for f in data_schema])

    def write_files(batches):
        for batch in batches:
            table = pa.Table.from_batches([batch]).cast(pa.schema([*data_schema, pa.field("month", pa.string())]))
            for month in pc.unique(table.column("month")).to_pylist():
                part = table.filter(pc.equal(table.column("month"), month)).drop_columns(["month"])
                rel = f"month={month}/part-{uuid.uuid4().hex}.parquet"
                os.makedirs(os.path.join(uri, f"month={month}"), exist_ok=True)
                pq.write_table(part, os.path.join(uri, rel))
                stats = {"numRecords": part.num_rows}
                yield pa.RecordBatch.from_pylist(
                    [{"path": rel, "size": os.path.getsize(os.path.join(uri, rel)), "month": month, "stats": json.dumps(stats)}]
                )

    out_schema = "path string, size long, month string, stats string"
    files = df.mapInArrow(write_files, out_schema).collect()
    now = int(time.time() * 1000)
    actions = [AddAction(r.path, r.size, {"month": r.month}, now, True, r.stats) for r in files]
    table_schema = pa.schema([*data_schema, pa.field("month", pa.string())])
    if DeltaTable.is_deltatable(uri):
        DeltaTable(uri).create_write_transaction(actions, mode="overwrite", schema=table_schema, partition_by=["month"])
    else:
        from deltalake import Schema
        from deltalake.transaction import create_table_with_add_actions

        create_table_with_add_actions(uri, Schema.from_arrow(table_schema), actions, mode="error", partition_by=["month"])
    return {"rows": sum(json.loads(r.stats)["numRecords"] for r in files), "files": len(files)}


def main() -> None:
    args = arguments(
        "benchmarks.contenders.write_path",
        lambda p: p.add_argument("--mode", choices=("collect", "executors"), required=True),
    )
    clock = Clock()
    spark = session()
    spark.sparkContext.setLogLevel("ERROR")
    clock.lap("spark_start")
    files = [str(p) for paths in meter_files(args.world, args.months).values() for p in paths]
    df = formatted(spark, files)
    uri = str(args.work / f"delta_{args.mode}")
    figures = (write_collect if args.mode == "collect" else write_executors)(df, uri)
    clock.lap("write")
    from deltalake import DeltaTable

    figures["delta_version"] = DeltaTable(uri).version()
    spark.stop()
    write_result(args.result, {"zone_seconds": clock.stages, **figures})


if __name__ == "__main__":
    main()
