"""Adding a source is one YAML file: no code, and its assets appear, materialize and hold the data."""

from __future__ import annotations

import dagster as dg
import pytest

from lakehouse.collectors.landing import read_manifest
from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse.sim.world import seattle_weather
from lakehouse_tests.declarations import declare

# The provider's legacy export: another URL, semicolons, CRLF, day-first dates, its own column names.
LEGACY_WEATHER = """
name: weather_legacy
description: Daily weather from the provider's legacy NOAA export (a second feed, different schema).
collector:
  type: http
  url: "${LAKEHOUSE_WEATHER_URL}/noaa/{station}/{month}.txt"
  params:
    station: USW00024233
  file_name: "noaa_{station}_{month}.txt"
  retries: 2
  backoff_s: 0.05
  expect_prefix: "date;"
format:
  delimiter: ";"
columns:
  - {name: day, source: date, type: date, format: dd.MM.yyyy, nullable: false}
  - {name: rain_mm, source: precipitation, type: double, unit: mm}
  - {name: t_max, source: temp_max, type: double, unit: °C}
  - {name: t_min, source: temp_min, type: double, unit: °C}
  - {name: wind, type: double, unit: m/s}
  - {name: sky, source: weather, type: string}
partitioning:
  kind: time_column
  column: day
quality:
  key: [day]
  rules:
    - name: min_not_above_max
      deny: "t.t_min > t.t_max"
"""


def test_a_yaml_file_alone_adds_a_source(configs_copy, make_project, weather_server, spark):
    weather_server.clear()
    declare(configs_copy, "sources", "weather_legacy", LEGACY_WEATHER)
    project = make_project(configs_copy, LAKEHOUSE_WEATHER_URL=weather_server.url)
    defs = build_definitions(project)

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"landing/weather_legacy", "formatted/weather_legacy", "trusted/weather_legacy"} <= keys
    assert defs.get_repository_def().get_job("weather_legacy_landing") is not None

    selection = [dg.AssetKey(["landing", "weather_legacy"]), dg.AssetKey(["formatted", "weather_legacy"])]
    result = dg.materialize(defs.assets, selection=selection, partition_key="2012-02", resources=defs.resources)
    assert result.success

    lake = Lake(project.lake_root)
    (entry,) = [e.__dict__ for e in read_manifest(lake.landing_month("weather_legacy", "2012-02"))]
    assert entry["origin"] == f"{weather_server.url}/noaa/USW00024233/2012-02.txt" and entry["rows"] == 29

    table = lake.read_arrow("formatted", "weather_legacy").to_pylist()
    truth = seattle_weather()
    truth = truth[[d.strftime("%Y-%m") == "2012-02" for d in truth["date"]]]
    assert sorted(r["day"] for r in table) == list(truth["date"])
    by_day = {r["day"]: r for r in table}
    for row in truth.itertuples(index=False):  # value for value, as NOAA observed them
        got = by_day[row.date]
        assert (got["t_max"], got["t_min"], got["rain_mm"], got["wind"], got["sky"]) == (
            row.temp_max,
            row.temp_min,
            row.precipitation,
            row.wind,
            row.weather,
        )
    assert {r["month"] for r in table} == {"2012-02"}
    assert lake.months("formatted", "weather_legacy") == ["2012-02"]


def test_a_broken_new_source_names_its_file_and_key(configs_copy, make_project):
    from lakehouse.specs import SpecError

    broken = LEGACY_WEATHER.replace("  expect_prefix", "  expect_prefx")
    declare(configs_copy, "sources", "weather_legacy", broken)
    with pytest.raises(
        SpecError, match=r"weather_legacy/defs.yaml:\d+: attributes.collector.expect_prefx: Extra inputs are not permitted"
    ):
        make_project(configs_copy, LAKEHOUSE_WEATHER_URL="http://127.0.0.1:1")
