"""Contender 3b, the lakehouse's own transforms in one PySpark script: the same work, no orchestration.

The functions the assets call: ``format_month`` month by month (formatted: the fast lane and the Spark
lane, Parquet staged without a Delta commit), then once over the whole month range ``clean_month`` with the
meter source's rules and cleaning steps (trusted, its quarantine and repairs) and the
``daily_consumption`` view's SQL (exploitation); Parquet out, partitioned by month. What it leaves out is
what the lakehouse adds around the transforms: Dagster, landing with a manifest, per-month trusted and view
jobs and Delta commits, the unit step's history of earlier months (the range is one batch, so each file is
compared with the fleet), the quality metrics table, pandera validation and asset checks. lakehouse ÷ this
contender is therefore the price of orchestration and of working month by month, on the same transforms.

The driver's heap is the lakehouse's (``spark.driver.memory`` in ``lakehouse.io.spark.DEFAULT_CONF``) unless
``BENCH_SPARK_DRIVER_MEMORY`` sets another: holding the whole range at once, the script ran out of a 4 GB
heap from about 12M readings on (docs/benchmarks.md), where the lakehouse, a month at a time, does not.

Across month boundaries it may differ from the lakehouse by a few rows: a gap spanning two months can be
imputed here (the lakehouse cleans each month alone), and the rows' counts are reported for comparison.

``--per-month`` (the ``spark_monthly`` contender) runs the same functions one month at a time, as a script
that must fit a large range in memory would: formatted then trusted per month, the unit step given the
trusted months before it (``history_months``), Parquet appended per month, the view once at the end. It
leaves out what orchestration adds (Dagster, the landing manifest, Delta commits, the quality metrics,
pandera validation and asset checks): its outputs are the files Spark's tasks stage, one month after the
other, where the lakehouse also commits them to Delta and overlaps two months.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.contenders import Clock, arguments, finish_spark, meter_files
from benchmarks.contenders.lakehouse import bench_configs


def _formatted(spark, source, schema, months: dict[str, list[Path]], out: Path) -> None:
    """The lakehouse's formatting of each month (``format_month``: clean files parsed, cast and written as
    Parquet by Spark's Python workers, the rest through Spark's casts) into ``out/formatted/month=…/``; the
    rejected rows into ``out/quarantine_formatted/month=…/``. No Delta commit: the staged files are the output."""
    from lakehouse.io.formatting import Rejects, format_month
    from lakehouse.io.storage import Storage

    rejects = Rejects(str(out / "quarantine_formatted"), lambda rows: rows.drop_columns(["month"]))
    for month, paths in months.items():
        for table in ("formatted", "quarantine_formatted"):
            shutil.rmtree(out / table / f"month={month}", ignore_errors=True)
        format_month(spark, [str(p) for p in paths], source, month, Storage("/"), str(out / "formatted"), schema, rejects=rejects)


def _trusted(formatted, source, out: Path, month: str = "all", history=None) -> None:
    """``clean_month`` over ``formatted`` (a month or the range): Spark's tasks stage the trusted rows, the
    quarantine rows and the changed cells as Parquet under ``out/{trusted,quarantine_trusted,repairs}/month=…/``
    (no Delta commit: the staged files are the output)."""
    from lakehouse.io.storage import Storage
    from lakehouse.quality import cleaning, metrics

    tables = {"trusted": out / "trusted", "quarantine": out / "quarantine_trusted", "repairs": out / "repairs"}
    for folder in tables.values():
        shutil.rmtree(folder / f"month={month}", ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    batch = metrics.Batch.new(dataset=source.name, stage="trusted", month=month, run_id="spark_same")
    staging = cleaning.Staging(Storage("/"), *(str(tables[k]) for k in ("trusted", "quarantine", "repairs")), batch)
    cleaning.clean_month(formatted, source, month=month, staging=staging, history=history)


def main(per_month: bool = False) -> None:
    args = arguments(
        "benchmarks.contenders.spark_same",
        lambda p: p.add_argument("--per-month", action="store_true", help="one month at a time (spark_monthly)"),
    )
    per_month = per_month or args.per_month
    os.environ["LAKEHOUSE_DEMO_ROOT"] = str(args.world)
    clock = Clock()
    import lakehouse
    from lakehouse import settings

    os.environ["LAKEHOUSE_CONFIGS"] = str(
        bench_configs(Path(lakehouse.__file__).parent.parent / "configs", args.work / "configs")
    )
    project = settings.load()
    from pyspark.sql import functions as F

    from lakehouse.factories.trusted import history_months
    from lakehouse.io.formatting import data_schema
    from lakehouse.io.spark import get_spark

    source = next(s for s in project.sources if s.name == "meter_readings")
    view = next(v for v in project.views if v.name == "daily_consumption")
    spec = project.lakehouse.spark
    memory = os.environ.get("BENCH_SPARK_DRIVER_MEMORY")
    if memory:
        spec = spec.model_copy(update={"conf": {**spec.conf, "spark.driver.memory": memory}})
    spark = get_spark(spec)
    clock.lap("spark_start")
    out = args.work / "spark_same"
    months = meter_files(args.world, args.months)
    schema = data_schema(source)  # the formatted table's columns, as the lakehouse writes them

    if per_month:
        n = history_months(source)
        done: list[str] = []
        for month, paths in months.items():
            _formatted(spark, source, schema, {month: paths}, out)
            clock.lap("formatted")
            earlier = [str(out / "trusted" / f"month={m}") for m in done[-n:]] if n else []
            history = spark.read.parquet(*earlier) if earlier else None
            formatted = spark.read.parquet(str(out / "formatted" / f"month={month}"))
            _trusted(formatted, source, out, month=month, history=history)
            done.append(month)
            clock.lap("trusted")
    else:
        _formatted(spark, source, schema, months, out)
        clock.lap("formatted")
        _trusted(spark.read.parquet(str(out / "formatted")), source, out)
        clock.lap("trusted")

    spark.read.parquet(str(out / "trusted")).createOrReplaceTempView(view.inputs[0].name)
    daily = spark.sql(view.sql).withColumn("month", F.date_format("date", "yyyy-MM"))
    daily.write.mode("overwrite").partitionBy("month").parquet(str(out / "daily"))
    clock.lap("exploitation")
    finish_spark(spark, out, clock, args.result, driver_memory=spark.conf.get("spark.driver.memory"), per_month=per_month)


if __name__ == "__main__":
    main()
