"""Contender 3b, the lakehouse's own transforms in one PySpark script: the same work, no orchestration.

The functions the assets call, applied once to the whole month range: ``read_raw`` + ``cast_checked``
(formatted; the delivered month taken from each file's name), ``clean_month`` with the meter source's
rules and cleaning steps (trusted, its quarantine and repairs), and the ``daily_consumption`` view's SQL
(exploitation); Parquet out, partitioned by month. What it leaves out is exactly what the lakehouse adds
around the transforms: Dagster, landing with a manifest, per-month Spark jobs and Delta commits, the unit
step's history of earlier months (the range is one batch, so each file is compared with the fleet), the
quality metrics table, pandera validation and asset checks. lakehouse ÷ this contender is therefore the
price of orchestration and of working month by month, on the same transforms.

Across month boundaries it may differ from the lakehouse by a few rows: a gap spanning two months can be
imputed here (the lakehouse cleans each month alone), and the rows' counts are reported for comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.contenders import Clock, arguments, finish_spark, meter_files
from benchmarks.contenders.lakehouse import bench_configs


def main() -> None:
    args = arguments("benchmarks.contenders.spark_same")
    os.environ["LAKEHOUSE_DEMO_ROOT"] = str(args.world)
    clock = Clock()
    import lakehouse
    from lakehouse import settings

    os.environ["LAKEHOUSE_CONFIGS"] = str(bench_configs(Path(lakehouse.__file__).parent.parent / "configs", args.work / "configs"))
    project = settings.load()
    from pyspark.sql import functions as F

    from lakehouse.io.spark import get_spark
    from lakehouse.quality import cleaning
    from lakehouse.transforms.parse import FILE_COL, cast_checked, read_raw

    source = next(s for s in project.sources if s.name == "meter_readings")
    view = next(v for v in project.views if v.name == "daily_consumption")
    spark = get_spark(project.lakehouse.spark)
    clock.lap("spark_start")
    out = args.work / "spark_same"
    files = [str(p) for paths in meter_files(args.world, args.months).values() for p in paths]

    delivered = F.regexp_extract(F.col(FILE_COL), source.collector.month_regex, 1)
    checked = cast_checked(read_raw(spark, files, source), source, delivered).cache()
    checked.filter("error IS NULL").drop("error", "record").write.mode("overwrite").partitionBy("month").parquet(
        str(out / "formatted")
    )
    checked.filter("error IS NOT NULL").select("month", FILE_COL, "record", "error").write.mode("overwrite").parquet(
        str(out / "quarantine_formatted")
    )
    checked.unpersist()
    clock.lap("formatted")

    formatted = spark.read.parquet(str(out / "formatted"))
    result = cleaning.clean_month(formatted, source, month="all", collect=False)  # written by Spark, not collected
    month = F.date_format(F.col(source.partitioning.column), "yyyy-MM")
    result.trusted.withColumn("month", month).write.mode("overwrite").partitionBy("month").parquet(str(out / "trusted"))
    result.rejected.write.mode("overwrite").parquet(str(out / "quarantine_trusted"))
    result.repairs.write.mode("overwrite").parquet(str(out / "repairs"))
    result.close()
    clock.lap("trusted")

    spark.read.parquet(str(out / "trusted")).createOrReplaceTempView(view.inputs[0].name)
    daily = spark.sql(view.sql).withColumn("month", F.date_format("date", "yyyy-MM"))
    daily.write.mode("overwrite").partitionBy("month").parquet(str(out / "daily"))
    clock.lap("exploitation")
    finish_spark(spark, out, clock, args.result)


if __name__ == "__main__":
    main()
