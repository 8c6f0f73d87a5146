"""Transforms of exploitation views declared in ``lakehouse/defs/views/`` (pure Spark).

A view transform is ``(inputs: dict[str, DataFrame], months: list[str], options)``: the rows of a batch of
months in one Spark plan, each row with its ``month`` column (its inputs hold the union of those months);
or ``(inputs, month: str, options)``: one month's rows. The factory conforms them to the declared columns
and writes and commits each month on its own (docs/ml.md, "View transforms").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def _require(inputs: dict[str, DataFrame], *names: str) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise KeyError(f"view inputs {missing} are missing; inputs are {sorted(inputs)}")


def city_station(city: Column, stations: dict[str, str], default: str | None) -> Column:
    """The weather station observing ``city`` (case-insensitive lookup in ``stations``, else ``default``)."""
    from pyspark.sql import functions as F

    expr = None
    for name, station in sorted(stations.items()):
        cond = F.lower(F.trim(city)) == name.strip().lower()
        expr = F.when(cond, F.lit(station)) if expr is None else expr.when(cond, F.lit(station))
    fallback = F.lit(default).cast("string")
    return fallback if expr is None else expr.otherwise(fallback)


def daily_meter_profile(readings: DataFrame, prefix: str = "") -> DataFrame:
    """Per meter and UTC day: consumption and the shape figures a fault leaves behind.

    ``consumption_kwh`` (sum), ``readings`` (rows), ``hours_covered`` (distinct hours), ``max_hour_kwh``,
    ``max_hour_share`` (largest hour / day), ``max_repeat_run`` (longest run of identical consecutive
    readings: a stuck register), ``off_hour_readings`` (timestamps not on the hour: a drifting clock),
    ``negative_readings``. Every name but the key gets ``prefix``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    r = readings.select("meter_id", "ts", "reading_kwh").withColumn("date", F.to_date("ts"))
    w = Window.partitionBy("meter_id", "date").orderBy("ts")
    r = r.withColumn(
        "_changed", (F.lag("reading_kwh").over(w).isNull() | (F.lag("reading_kwh").over(w) != F.col("reading_kwh"))).cast("int")
    )
    r = r.withColumn("_run", F.sum("_changed").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    runs = r.groupBy("meter_id", "date", "_run").agg(F.count("*").alias("_len"))
    longest = runs.groupBy("meter_id", "date").agg(F.max("_len").alias("max_repeat_run"))
    day = r.groupBy("meter_id", "date").agg(
        F.round(F.sum("reading_kwh"), 3).alias("consumption_kwh"),
        F.count("*").alias("readings"),
        F.countDistinct(F.date_trunc("hour", "ts")).alias("hours_covered"),
        F.max("reading_kwh").alias("max_hour_kwh"),
        F.sum(((F.minute("ts") != 0) | (F.second("ts") != 0)).cast("int")).alias("off_hour_readings"),
        F.sum((F.col("reading_kwh") < 0).cast("int")).alias("negative_readings"),
    )
    day = day.withColumn(
        "max_hour_share",
        F.when(F.col("consumption_kwh") > 0, F.round(F.col("max_hour_kwh") / F.col("consumption_kwh"), 4)),
    )
    day = day.join(longest, ["meter_id", "date"], "left")
    return day.select("meter_id", "date", *(F.col(c).alias(prefix + c) for c in day.columns if c not in ("meter_id", "date")))


def consumption_daily(inputs: dict[str, DataFrame], months: list[str], options: dict[str, Any]) -> DataFrame:
    """Per meter and day: consumption (trusted readings), that day's weather at the station observing the
    building's city, the building's features (golden customer) and the calendar, for each of ``months``
    (a day's figures read that day's rows only, so a batch of months gives each month's rows alone).

    Inputs (aliases): ``readings`` (trusted/meter_readings), ``weather`` (trusted/weather), ``calendar``
    (trusted/calendar), ``customers`` (exploitation/golden_customers), and optionally ``raw``
    (formatted/meter_readings): the same day profile *as received*, columns prefixed ``raw_`` — cleaning
    repairs what a faulty meter sent, so fault detection looks at what arrived. ``options``: ``stations``
    maps a city to its weather station, ``default_station`` serves the other cities. Meters unknown to the
    golden records keep their consumption with empty building fields (left joins: no reading is dropped).
    """
    from pyspark.sql import functions as F

    _require(inputs, "readings", "weather", "calendar", "customers")
    stations = dict(options.get("stations", {}))
    default = options.get("default_station")
    day = daily_meter_profile(inputs["readings"])

    customers = (
        inputs["customers"]
        .where(F.col("meter_id").isNotNull())
        .select("meter_id", "golden_id", "city", "building_type", "heated_area_m2", "construction_year", "heating_system")
        .withColumn("station", city_station(F.col("city"), stations, default))
    )
    dup = customers.groupBy("meter_id").count().where("count > 1").limit(5).collect()
    if dup:
        raise ValueError(f"golden customers share a meter: {[r['meter_id'] for r in dup]}")
    weather = inputs["weather"].select(
        "station",
        "date",
        "temp_max_c",
        "temp_min_c",
        F.round((F.col("temp_max_c") + F.col("temp_min_c")) / 2.0, 3).alias("temp_mean_c"),
        "precipitation_mm",
        "wind_ms",
        F.col("condition").alias("weather_condition"),
    )
    calendar = inputs["calendar"].select("date", "weekday", "is_weekend", "is_holiday", "is_working_day")
    if "raw" in inputs:
        day = day.join(daily_meter_profile(inputs["raw"], prefix="raw_"), ["meter_id", "date"], "left")
    out = (
        day.join(customers, "meter_id", "left")
        .withColumn("station", F.coalesce(F.col("station"), F.lit(default).cast("string")))
        .join(weather, ["station", "date"], "left")
        .join(calendar, "date", "left")
    )
    return out.withColumn("month", F.date_format("date", "yyyy-MM")).where(F.col("month").isin(list(months)))
