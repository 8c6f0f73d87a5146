"""Contender 3, a single hand-written PySpark script: the same transforms, no orchestration.

Spark's CSV reader over all the files at once (no per-line lineage: Spark's reader has no line numbers),
casts with the same rules, rejects rows of another month than their file's, writes the formatted rows as
Parquet partitioned by month, then drops exact duplicates and negative readings (trusted) and aggregates per
meter and UTC day (exploitation), each written as Parquet. Same 2-core settings as a careful user would pick.
"""

from __future__ import annotations

import os
import sys

from benchmarks.contenders import Clock, arguments, finish_spark, meter_files


def session():
    """A local[2] session with the lakehouse's engine settings (lakehouse.io.spark.DEFAULT_CONF), so the
    ratio measures orchestration and per-month work, not Spark configuration."""
    from pyspark.sql import SparkSession

    from lakehouse.io.spark import DEFAULT_CONF

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master("local[2]").appName("pyspark-script").config("spark.driver.bindAddress", "127.0.0.1")
    for key, value in DEFAULT_CONF.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def main() -> None:
    args = arguments("benchmarks.contenders.pyspark_script")
    clock = Clock()
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spark = session()
    spark.sparkContext.setLogLevel("ERROR")
    clock.lap("spark_start")
    out = args.work / "pyspark"
    files = [str(p) for paths in meter_files(args.world, args.months).values() for p in paths]
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in ("device_id", "timestamp", "reading_kwh", "_corrupt_record")]
    )
    raw = (
        spark.read.options(sep=";", header=True, mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt_record")
        .schema(schema)
        .csv(files)
        .withColumn("_source_file", F.col("_metadata.file_name"))
        .withColumn("month", F.regexp_extract("_source_file", r"_(\d{4}-\d{2})\.csv$", 1))
    )

    def text(c):
        return F.when(F.trim(F.col(c)) == "", None).otherwise(F.trim(F.col(c)))

    value = text("reading_kwh").try_cast("double")
    typed = raw.select(
        text("device_id").alias("meter_id"),
        text("timestamp").try_cast("timestamp").alias("ts"),
        F.when(F.isnan(value) | (F.abs(value) == float("inf")), None).otherwise(value).alias("reading_kwh"),
        "_source_file",
        "month",
        "_corrupt_record",
    )
    ok = (
        F.col("_corrupt_record").isNull()
        & F.col("meter_id").isNotNull()
        & F.col("ts").isNotNull()
        & F.col("reading_kwh").isNotNull()
        & (F.date_format("ts", "yyyy-MM") == F.col("month"))
    )
    checked = typed.withColumn("_ok", F.coalesce(ok, F.lit(False))).cache()
    checked.filter("_ok").drop("_ok", "_corrupt_record").write.mode("overwrite").partitionBy("month").parquet(
        str(out / "formatted")
    )
    checked.filter("not _ok").drop("_ok").write.mode("overwrite").parquet(str(out / "quarantine_parse"))
    checked.unpersist()
    clock.lap("formatted")

    formatted = spark.read.parquet(str(out / "formatted"))
    deduped = formatted.dropDuplicates(["meter_id", "ts", "reading_kwh"])
    deduped.filter("reading_kwh >= 0").write.mode("overwrite").partitionBy("month").parquet(str(out / "trusted"))
    deduped.filter("reading_kwh < 0").write.mode("overwrite").parquet(str(out / "quarantine_rules"))
    clock.lap("trusted")

    trusted = spark.read.parquet(str(out / "trusted"))
    daily = trusted.groupBy("month", "meter_id", F.to_date("ts").alias("date")).agg(
        F.round(F.sum("reading_kwh"), 3).alias("consumption_kwh"), F.count("*").alias("hours")
    )
    daily.write.mode("overwrite").partitionBy("month").parquet(str(out / "daily"))
    clock.lap("exploitation")
    finish_spark(spark, out, clock, args.result)


if __name__ == "__main__":
    main()
