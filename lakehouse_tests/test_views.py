"""Exploitation views on a small fixture lake: golden customers (MERGE) and consumption_daily (joins,
profile figures, declared columns, column lineage)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse_tests.declarations import declaration

MONTHS = ["2012-01", "2012-02"]
STATION = "USW00024233"


def _days(month: str) -> list[dt.date]:
    start = dt.date.fromisoformat(f"{month}-01")
    nxt = dt.date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return [start + dt.timedelta(days=i) for i in range((nxt - start).days)]


def write_fixture_lake(lake: Lake, months: list[str] = MONTHS) -> None:
    """Trusted tables for ``months`` (two by default): meters M1 (Seattle) and M2 (Tacoma), M9 unknown to the
    registry."""
    for month in months:
        days = _days(month)
        ts, meters, values = [], [], []
        for meter, base in (("M1", 1.0), ("M2", 2.0), ("M9", 0.5)):
            for d in days:
                for h in range(24):
                    ts.append(dt.datetime(d.year, d.month, d.day, h, tzinfo=dt.UTC))
                    meters.append(meter)
                    values.append(base + 0.01 * h)
        clean = pa.table({"meter_id": meters, "ts": ts, "reading_kwh": values})
        lake.overwrite_month("trusted", "meter_readings", clean, month)
        # as received, M1's 3rd had a stuck register from 05:00 to 10:00, one reading stamped at :30, one
        # hour missing, a negative reading and a duplicated one (cleaning repaired all of it in trusted)
        raw_ts, raw_values = list(ts), list(values)
        for i, t in enumerate(ts):
            if meters[i] == "M1" and t.day == 3 and 5 <= t.hour <= 10:
                raw_values[i] = 9.99
        first = next(i for i, t in enumerate(ts) if meters[i] == "M1" and t.day == 3)
        raw_ts[first + 21] = ts[first + 21] + dt.timedelta(minutes=30)
        raw_values[first + 2] = -0.5
        keep = [i for i in range(len(ts)) if i != first + 20] + [first + 12]
        lake.overwrite_month(
            "formatted",
            "meter_readings",
            pa.table(
                {
                    "meter_id": [meters[i] for i in keep],
                    "ts": [raw_ts[i] for i in keep],
                    "reading_kwh": [raw_values[i] for i in keep],
                }
            ),
            month,
        )
        lake.overwrite_month(
            "trusted",
            "weather",
            pa.table(
                {
                    "station": [STATION] * len(days),
                    "date": days,
                    "temp_max_c": [10.0 + d.day * 0.1 for d in days],
                    "temp_min_c": [2.0] * len(days),
                    "precipitation_mm": [1.0] * len(days),
                    "wind_ms": [3.0] * len(days),
                    "condition": ["rain"] * len(days),
                }
            ),
            month,
        )
        lake.overwrite_month(
            "trusted",
            "calendar",
            pa.table(
                {
                    "date": days,
                    "weekday": [d.isoweekday() for d in days],
                    "is_weekend": [d.isoweekday() >= 6 for d in days],
                    "is_holiday": [d == dt.date(2012, 1, 2) for d in days],
                    "holiday_name": ["New Year's Day (observed)" if d == dt.date(2012, 1, 2) else "" for d in days],
                    "is_working_day": [d.isoweekday() < 6 and d != dt.date(2012, 1, 2) for d in days],
                }
            ),
            month,
        )
        registry = [
            ("C1", "M1", "Anna Miller", "Pine Street", 12, "98123", "Seattle", "detached", 150.0, 1965, "gas_boiler"),
            ("C2", "M2", "Ben Schmidt", "Maple Avenue", 7, "98402", "Tacoma", "office", 400.0, 2001, "heat_pump"),
        ]
        cols = [
            "customer_id",
            "meter_id",
            "name",
            "street",
            "house_number",
            "postcode",
            "city",
            "building_type",
            "heated_area_m2",
            "construction_year",
            "heating_system",
        ]
        lake.overwrite_month(
            "trusted", "customers", pa.Table.from_pylist([dict(zip(cols, r, strict=True)) for r in registry]), month
        )
        billing = [("A1", "MILLER, ANNA", "12 Pine St.", "98123-0412", "SEATTLE", "residential", dt.date(2010, 1, 1))]
        if month == "2012-02":  # an account opened in February, for a customer billing alone knows
            billing.append(("A7", "Olga Wolf", "17 Elm Avenue", "98111", "Tacoma", "residential", dt.date(2012, 2, 3)))
        bcols = ["account_no", "holder_name", "address_line", "zip", "town", "tariff", "opened_on"]
        lake.overwrite_month(
            "trusted", "billing_customers", pa.Table.from_pylist([dict(zip(bcols, r, strict=True)) for r in billing]), month
        )


@pytest.fixture(scope="module")
def materialized(spark, tmp_path_factory):
    from lakehouse.specs import load_project
    from lakehouse_tests.conftest import REPO

    root = tmp_path_factory.mktemp("views")
    project = load_project(
        REPO / "configs", env={"LAKEHOUSE_ROOT": str(root / "lake"), "LAKEHOUSE_DEMO_ROOT": str(root / "world")}
    )
    lake = Lake(project.lake_root)
    write_fixture_lake(lake)
    defs = build_definitions(project)
    keys = [dg.AssetKey(["exploitation", "golden_customers"]), dg.AssetKey(["exploitation", "consumption_daily"])]
    result = dg.materialize(
        defs.assets,
        selection=keys,
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags={ASSET_PARTITION_RANGE_START_TAG: MONTHS[0], ASSET_PARTITION_RANGE_END_TAG: MONTHS[-1]},
    )
    assert result.success
    return project, defs, lake, result


def test_golden_customers_merged_month_by_month(materialized):
    _, _, lake, _ = materialized
    golden = {r["golden_id"]: r for r in lake.read_arrow("exploitation", "golden_customers").to_pylist()}
    assert set(golden) == {"G-C1", "G-C2", "G-A7"}
    assert golden["G-C1"]["billing_ids"] == "A1" and golden["G-C1"]["match_score"] >= 0.8
    assert golden["G-C1"]["first_seen_month"] == "2012-01" and golden["G-C1"]["last_seen_month"] == "2012-02"
    assert golden["G-A7"]["first_seen_month"] == "2012-02" and golden["G-A7"]["match_status"] == "billing_only"
    assert golden["G-C2"]["match_status"] == "registry_only" and golden["G-C2"]["heated_area_m2"] == 400.0
    ops = [h["operation"] for h in lake.history("exploitation", "golden_customers")]
    # the first month created the table, the second replaced it with the merged state (staged by Spark's tasks)
    assert ops[-1] == "CREATE TABLE" and ops.count("WRITE") >= 1, ops


def test_consumption_daily_joins_and_profile(materialized):
    _, _, lake, _ = materialized
    df = lake.read_arrow("exploitation", "consumption_daily").to_pandas()
    assert len(df) == 3 * (31 + 29)  # every meter-day, also the meter the registry does not know
    m1 = df[df.meter_id == "M1"].set_index("date")
    day3 = m1.loc[dt.date(2012, 1, 3)]
    assert day3.hours_covered == 24 and day3.max_repeat_run == 1  # trusted: repaired
    assert day3.raw_hours_covered == 23 and day3.raw_readings == 24  # one hour missing, one duplicated
    assert day3.raw_max_repeat_run == 6 and day3.raw_off_hour_readings == 1 and day3.raw_negative_readings == 1
    normal = m1.loc[dt.date(2012, 1, 4)]
    assert normal.hours_covered == 24 and normal.max_repeat_run == 1 and normal.raw_hours_covered == 24
    assert normal.raw_consumption_kwh == pytest.approx(normal.consumption_kwh)
    assert normal.consumption_kwh == pytest.approx(24 * 1.0 + 0.01 * sum(range(24)), abs=1e-6)
    assert normal.temp_mean_c == pytest.approx((10.4 + 2.0) / 2)
    assert normal.heated_area_m2 == 150.0 and normal.golden_id == "G-C1" and normal.station == STATION
    assert bool(m1.loc[dt.date(2012, 1, 2)].is_holiday) and not bool(normal.is_holiday)
    m2 = df[df.meter_id == "M2"]
    assert set(m2.city) == {"Tacoma"} and set(m2.station) == {STATION} and m2.temp_max_c.notna().all()
    m9 = df[df.meter_id == "M9"]
    assert m9.golden_id.isna().all() and m9.temp_mean_c.notna().all()
    assert np.all(df.groupby("month").size().to_numpy() == [3 * 31, 3 * 29])


def test_declared_columns_schema_and_lineage(materialized):
    project, defs, lake, result = materialized
    view = next(v for v in project.views if v.name == "consumption_daily")
    table = lake.read_arrow("exploitation", "consumption_daily")
    assert table.column_names == [c.name for c in view.columns] + ["month"]
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == dg.AssetKey(["exploitation", "consumption_daily"])
    )
    meta = event.materialization.metadata
    lineage = meta["dagster/column_lineage"].value
    deps = {c: {(d.asset_key.to_user_string(), d.column_name) for d in ds} for c, ds in lineage.deps_by_column.items()}
    assert deps["consumption_kwh"] == {("trusted/meter_readings", "reading_kwh")}
    assert deps["temp_mean_c"] == {("trusted/weather", "temp_max_c"), ("trusted/weather", "temp_min_c")}
    assert deps["heated_area_m2"] == {("exploitation/golden_customers", "heated_area_m2")}
    schema = meta["dagster/column_schema"].value
    assert [c.name for c in schema.columns] == [c.name for c in view.columns]
    spec = defs.get_assets_def(dg.AssetKey(["exploitation", "consumption_daily"])).specs_by_key
    assert "dagster/column_schema" in next(iter(spec.values())).metadata


def test_lineage_must_name_an_input(configs_copy):
    from lakehouse.specs import load_project
    from lakehouse.specs.loader import SpecError

    path = declaration(configs_copy, "views", "consumption_daily")
    path.write_text(path.read_text().replace("lineage: [weather.wind_ms]", "lineage: [wether.wind_ms]"))
    with pytest.raises(SpecError, match="wether.wind_ms"):
        load_project(configs_copy, env={"LAKEHOUSE_ROOT": "/tmp/x"})


def test_view_derive_joins_the_contract_with_the_lineage_of_its_inputs(spark):
    from lakehouse.factories.exploitation import column_lineage, conform
    from lakehouse.specs.models import ViewSpec

    view = ViewSpec.model_validate(
        {
            "name": "daily",
            "inputs": [{"table": "trusted/meter_readings", "alias": "r"}, {"table": "trusted/weather", "alias": "w"}],
            "sql": "SELECT 1",
            "columns": [
                {"name": "date", "type": "date"},
                {"name": "consumption_kwh", "type": "double", "lineage": ["r.reading_kwh"]},
                {"name": "temp_mean_c", "type": "double", "lineage": ["w.temp_max_c", "w.temp_min_c"]},
            ],
            "derive": {
                "hdd": {"expr": "greatest(0, 16.5 - temp_mean_c)", "unit": "K·d"},
                "kwh_per_hdd": {"expr": "consumption_kwh / nullif(hdd, 0)"},
            },
        }
    )
    result = spark.createDataFrame(
        [(dt.date(2012, 1, 1), 30.0, 6.5, "x"), (dt.date(2012, 1, 2), 10.0, 18.0, "y")],
        "date date, consumption_kwh double, temp_mean_c double, extra string",
    )
    rows = [r.asDict() for r in conform(result, view).orderBy("date").collect()]
    assert list(rows[0]) == ["date", "consumption_kwh", "temp_mean_c", "hdd", "kwh_per_hdd"]  # extra is dropped
    assert [(r["hdd"], r["kwh_per_hdd"]) for r in rows] == [(10.0, 3.0), (0.0, None)]
    deps = {
        c: {(d.asset_key.to_user_string(), d.column_name) for d in ds} for c, ds in column_lineage(view).deps_by_column.items()
    }
    assert deps["hdd"] == {("trusted/weather", "temp_max_c"), ("trusted/weather", "temp_min_c")}
    assert deps["kwh_per_hdd"] == deps["hdd"] | {("trusted/meter_readings", "reading_kwh")}
    with pytest.raises(ValueError, match=r"derive 'hdd': unknown column\(s\) \['temp_c'\]"):
        ViewSpec.model_validate({**view.model_dump(), "derive": {"hdd": {"expr": "16.5 - temp_c"}}})
    # without declared columns the result's own columns are checked when the view runs
    free = ViewSpec.model_validate(
        {"name": "free", "inputs": [{"table": "trusted/weather"}], "sql": "SELECT 1", "derive": {"d": {"expr": "temp_c * 2"}}}
    )
    with pytest.raises(ValueError, match=r"derive reads column\(s\) \['temp_c'\]"):
        conform(result, free)


def test_derived_source_columns_have_lineage_to_the_formatted_columns(make_project, configs_copy):
    from lakehouse.factories.schema import derived_lineage

    path = declaration(configs_copy, "sources", "weather")
    path.write_text(path.read_text() + "  derive:\n    temp_mean_c: {expr: '(temp_max_c + temp_min_c) / 2', unit: °C}\n")
    weather = make_project(configs_copy).source("weather")
    deps = {
        c: {(d.asset_key.to_user_string(), d.column_name) for d in ds}
        for c, ds in derived_lineage(weather).deps_by_column.items()
    }
    assert deps == {"temp_mean_c": {("formatted/weather", "temp_max_c"), ("formatted/weather", "temp_min_c")}}
    assert derived_lineage(make_project().source("weather")) is None
