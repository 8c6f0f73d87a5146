"""Deliveries as real exports come: json, jsonl, parquet, gzip, a locale's numbers, header spelling, patterns.

Unit tests of the parser and the cast, then two sources declared by YAML alone (a JSON gas-meter export
and a Parquet export) materialized from the inbox through landing, formatted and trusted.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakehouse.collectors.landing import read_manifest
from lakehouse.specs.models import ColumnSpec, FormatSpec, PartitioningSpec, SourceSpec
from lakehouse.transforms.parse import cast_checked, parse_file
from lakehouse.transforms.records import count_records
from lakehouse_tests.declarations import declare

GAS = ["time_period", "energy_kwh", "temperature_degC"]


def rows(table: pa.Table) -> list[dict]:
    return [{k: v for k, v in r.items() if v is not None and k != "_source_file"} for r in table.to_pylist()]


def test_json_array_under_a_path_with_nested_columns():
    doc = {
        "meta": {"n": 3},
        "data": {
            "days": [
                {"day": "2019-01-01", "energy": {"kwh": 41.5}, "t": -2},
                {"day": "2019-01-02", "energy": {"kwh": None}, "t": 1.25},
                {"day": "2019-01-03", "energy": {"kwh": [1, 2]}, "t": 0},
            ]
        },
    }
    fmt = FormatSpec(kind="json", records_path="data.days")
    out = rows(parse_file("g.json", json.dumps(doc).encode(), fmt, ["day", "energy.kwh", "t"]))
    assert out[0] == {"day": "2019-01-01", "energy.kwh": "41.5", "t": "-2", "_source_line": 1}
    assert out[1] == {"day": "2019-01-02", "t": "1.25", "_source_line": 2}
    assert out[2]["_source_line"] == 3 and out[2]["_error"] == "column energy.kwh: expected a value, got a JSON array"
    assert count_records(json.dumps(doc).encode(), fmt) == 3


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b'[{"a": 1}', "invalid JSON at line 1"),
        (b'{"rows": []}', "expected an array of records at the top level, got a JSON dict"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary data (a PNG image)"),
    ],
)
def test_an_unreadable_json_file_rejects_each_of_its_lines_with_the_reason(data, needle):
    fmt = FormatSpec(kind="json")
    out = rows(parse_file("g.json", data, fmt, ["a"]))
    assert needle in out[0]["_error"] and out[0]["_source_line"] == 0
    assert all("rejected with its file" in r["_error"] for r in out[1:])
    assert len(out) - 1 == count_records(data, fmt)  # what landing counts is what is rejected


def test_jsonl_rejects_one_bad_line_and_keeps_the_rest():
    data = b'{"a": "x", "b": 1}\n\n{"a": "y", "b": \n["not", "an object"]\n{"a": "z\\u0000", "b": 2}\n{"a": "w", "b": 3}\n'
    fmt = FormatSpec(kind="jsonl")
    out = rows(parse_file("f.jsonl", data, fmt, ["a", "b"]))
    assert [(r["_source_line"], r.get("a"), r.get("_error", "")[:26]) for r in out] == [
        (1, "x", ""),
        (3, None, "invalid JSON at column 17:"),
        (4, None, "record is a JSON list, exp"),
        (5, None, "column a: control characte"),
        (6, "w", ""),
    ]
    assert count_records(data, fmt) == 5


def test_gzip_declared_auto_and_undeclared():
    text = b"a,b\n1,2\n3,4\n"
    packed = gzip.compress(text)
    assert rows(parse_file("f.csv.gz", packed, FormatSpec(compression="gzip"), ["a", "b"]))[1]["b"] == "4"
    assert len(rows(parse_file("f.csv", text, FormatSpec(compression="auto"), ["a", "b"]))) == 2
    assert len(rows(parse_file("f.csv", packed, FormatSpec(compression="auto"), ["a", "b"]))) == 2
    plain = rows(parse_file("f.csv", packed, FormatSpec(), ["a", "b"]))
    assert "declare format.compression" in plain[0]["_error"]
    cut = rows(parse_file("f.csv.gz", packed[:-6], FormatSpec(compression="gzip"), ["a", "b"]))
    assert "truncated" in cut[0]["_error"]


def test_parquet_columns_by_name_as_text_the_cast_reads_back():
    table = pa.table(
        {
            "ts": pa.array([1546300800_000000, None], pa.timestamp("us", tz="UTC")),
            "kwh": pa.array([0.1, 2.5e-7]),
            "n": pa.array([3, 4], pa.int64()),
            "extra": ["x", "y"],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    fmt = FormatSpec(kind="parquet")
    out = rows(parse_file("f.parquet", sink.getvalue(), fmt, ["ts", "kwh", "n"]))
    assert out == [
        {"ts": "2019-01-01T00:00:00.000000Z", "kwh": "0.1", "n": "3", "_source_line": 1},
        {"kwh": "2.5e-07", "n": "4", "_source_line": 2},
    ]
    assert count_records(sink.getvalue(), fmt) == 2
    missing = rows(parse_file("f.parquet", sink.getvalue(), fmt, ["ts", "volume"]))
    assert "missing ['volume']" in missing[0]["_error"] and len(missing) == 3


def test_header_names_in_another_case_when_declared():
    data = b" Device ;TS\nm1;2012-01-01\n"
    strict = rows(parse_file("f.csv", data, FormatSpec(delimiter=";"), ["device", "ts"]))
    assert "does not match the declared columns" in strict[0]["_error"]
    loose = rows(parse_file("f.csv", data, FormatSpec(delimiter=";", header_match="case_insensitive"), ["device", "ts"]))
    assert loose == [{"device": "m1", "ts": "2012-01-01", "_source_line": 2}]


def _source(fmt: FormatSpec, *columns: ColumnSpec) -> SourceSpec:
    return SourceSpec(
        name="s",
        collector={"type": "file_drop", "inbox": "/nonexistent"},
        format=fmt,
        columns=[ColumnSpec(name="day", type="date", nullable=False), *columns],
        partitioning=PartitioningSpec(kind="time_column", column="day"),
    )


def _cast(spark, source: SourceSpec, values: list[str]) -> list[tuple]:
    lines = "".join(f"2012-01-0{i % 9 + 1};{v}\n" for i, v in enumerate(values))
    raw = parse_file(
        "f.csv", (f"day;{source.columns[1].raw_name}\n" + lines).encode(), source.format, [c.raw_name for c in source.columns]
    )
    out = cast_checked(spark.createDataFrame(raw), source, "2012-01").orderBy("_source_line").collect()
    return [(r[source.columns[1].name], r.error) for r in out]


def test_decimal_comma_with_thousands_and_ambiguous_values(spark):
    fmt = FormatSpec(delimiter=";", decimal=",", thousands=".")
    source = _source(fmt, ColumnSpec(name="v", type="double"))
    got = _cast(spark, source, ["1.234,5", "1.234", "12,5", "-0,25", "1,5e3", "1.23", "1,234.5", "1 234,5"])
    values = [v for v, _ in got]
    assert values[:5] == [1234.5, 1234.0, 12.5, -0.25, 1500.0]
    assert values[5:] == [None, None, None]
    assert "not a number under decimal ',' and thousands '.'" in got[5][1]
    assert "not a number under decimal ',' and thousands '.'" in got[6][1]
    assert "ambiguous" in got[7][1]
    no_groups = _source(FormatSpec(delimiter=";", decimal=","), ColumnSpec(name="v", type="double"))
    ((value, error),) = _cast(spark, no_groups, ["1.234"])
    assert value is None and "ambiguous under decimal ',' and no thousands separator" in error


def test_only_iso_forms_of_dates_times_and_numbers(spark):
    ts = _source(FormatSpec(delimiter=";"), ColumnSpec(name="t", type="timestamp"))
    got = _cast(
        spark, ts, ["2012-01-01T05:00:00+01:00", "12:00", "41275.5", "2012-01-01T24:00:00Z", "2012-06-30T23:59:60Z", "2012"]
    )
    assert str(got[0][0]).startswith("2012-01-01 04:00:00")
    assert [v for v, _ in got[1:]] == [None] * 5
    assert "cannot read '12:00' as timestamp" in got[1][1]
    assert "a bare number" in got[2][1] and "hour 24" in got[3][1] and "leap second" in got[4][1] and "a bare number" in got[5][1]
    num = _source(FormatSpec(delimiter=";"), ColumnSpec(name="v", type="double"))
    assert [v for v, _ in _cast(spark, num, ["0x1p3", "1.5d", "1e3", ".5"])] == [None, None, 1000.0, 0.5]


def test_a_string_pattern_rejects_what_does_not_match(spark):
    source = _source(FormatSpec(delimiter=";"), ColumnSpec(name="id", type="string", pattern="[A-Z][0-9]{4}"))
    got = _cast(spark, source, ["M0001", "M0001x", "m0001"])
    assert got[0] == ("M0001", None)
    assert got[1][0] is None and "'M0001x' does not match the pattern [A-Z][0-9]{4}" in got[1][1]


# --------------------------------------------------------------------- sources declared by YAML alone
GAS_JSON = """
name: gas_meter
description: A household gas meter's export of daily energy and outdoor temperature, as JSON.
collector:
  type: file_drop
  inbox: ${LAKEHOUSE_DEMO_ROOT}/inbox/gas_meter
  pattern: "gas_*.json.gz"
  month_regex: '_(\\d{4}-\\d{2})\\.json\\.gz$'
format:
  kind: json
  compression: gzip
  records_path: data
columns:
  - {name: day, source: time_period, type: date, nullable: false}
  - {name: energy_kwh, type: double, nullable: false, unit: kWh}
  - {name: temperature_c, source: weather.temperature_degC, type: double, unit: °C}
partitioning: {kind: time_column, column: day}
max_rejected_rate: 0.5   # ten days, two broken on purpose: above the default guard of 5%
quality:
  key: [day]
  rules:
    - {name: non_negative_energy, deny: "t.energy_kwh < 0", action: quarantine}
"""

PARQUET = """
name: heat_export
description: Hourly heat readings exported as Parquet by a metering platform.
collector:
  type: file_drop
  inbox: ${LAKEHOUSE_DEMO_ROOT}/inbox/heat_export
  pattern: "heat_*.parquet"
  month_regex: '_(\\d{4}-\\d{2})\\.parquet$'
format: {kind: parquet}
columns:
  - {name: meter_id, source: device, type: string, nullable: false, pattern: "[A-Z][0-9]+"}
  - {name: ts, type: timestamp, nullable: false}
  - {name: reading_kwh, source: kwh, type: double, nullable: false}
partitioning: {kind: time_column, column: ts}
max_rejected_rate: 0.5   # a small sample with broken rows on purpose
quality:
  key: [meter_id, ts]
  rules:
    - {name: one_reading_per_hour, unique: [meter_id, ts], action: repair, repair: {keep: first}}
"""


def _materialize(configs: Path, make_project, name: str, yaml_text: str, month: str):
    from lakehouse.factories import build_definitions
    from lakehouse.io.lake import Lake

    declare(configs, "sources", name, yaml_text)
    project = make_project(configs)
    defs = build_definitions(project)
    selection = [dg.AssetKey([zone, name]) for zone in ("landing", "formatted", "trusted")]
    result = dg.materialize(defs.assets, selection=selection, partition_key=month, resources=defs.resources, raise_on_error=False)
    return result, Lake(project.lake_root)


def test_a_json_gas_meter_export_declared_by_yaml(configs_copy, make_project, tmp_path, spark):
    inbox = tmp_path / "world" / "inbox" / "gas_meter"
    inbox.mkdir(parents=True)
    days = [
        {"time_period": f"2015-03-{d:02d}", "energy_kwh": 40.0 - d, "weather": {"temperature_degC": d / 2}} for d in range(1, 11)
    ]
    days[3]["energy_kwh"] = -1.0
    days[5]["time_period"] = "06/03/2015"
    (inbox / "gas_home_2015-03.json.gz").write_bytes(gzip.compress(json.dumps({"meter": "G1", "data": days}).encode()))
    result, lake = _materialize(configs_copy, make_project, "gas_meter", GAS_JSON, "2015-03")
    assert result.success
    formatted = {r["day"].isoformat(): r for r in lake.read_arrow("formatted", "gas_meter").to_pylist()}
    assert (
        len(formatted) == 9 and formatted["2015-03-02"]["energy_kwh"] == 38.0 and formatted["2015-03-02"]["temperature_c"] == 1.0
    )
    trusted = {r["day"].isoformat() for r in lake.read_arrow("trusted", "gas_meter").to_pylist()}
    assert trusted == set(formatted) - {"2015-03-04"}
    quarantine = lake.read_arrow("quality", "quarantine").to_pylist()
    reasons = {(q["stage"], q["source_line"]): q["error"] for q in quarantine if q["dataset"] == "gas_meter"}
    assert "cannot read '06/03/2015' as date" in reasons[("formatted", 6)]
    assert ("trusted", 4) in reasons
    (entry,) = [e.__dict__ for e in read_manifest(lake.landing_month("gas_meter", "2015-03"))]
    assert entry["rows"] == 10


def test_a_parquet_export_declared_by_yaml(configs_copy, make_project, tmp_path, spark):
    inbox = tmp_path / "world" / "inbox" / "heat_export"
    inbox.mkdir(parents=True)
    stamps = [1328054400_000000 + h * 3600_000000 for h in range(6)]  # 2012-02-01T00:00Z, hourly
    table = pa.table(
        {
            "device": ["M1", "M1", "M1", "M1", "bad id", "M1"],
            "ts": pa.array(stamps[:5] + [stamps[0]], pa.timestamp("us", tz="UTC")),
            "kwh": [1.5, 2.0, None, 3.25, 1.0, 9.0],
        }
    )
    pq.write_table(table, inbox / "heat_platform_2012-02.parquet")
    result, lake = _materialize(configs_copy, make_project, "heat_export", PARQUET, "2012-02")
    assert result.success
    formatted = sorted((r["_source_line"], r["reading_kwh"]) for r in lake.read_arrow("formatted", "heat_export").to_pylist())
    assert formatted == [(1, 1.5), (2, 2.0), (4, 3.25), (6, 9.0)]
    trusted = sorted((r["_source_line"], r["reading_kwh"]) for r in lake.read_arrow("trusted", "heat_export").to_pylist())
    assert trusted == [(1, 1.5), (2, 2.0), (4, 3.25)]  # line 6 repeats line 1's hour: the first is kept
    quarantine = [q for q in lake.read_arrow("quality", "quarantine").to_pylist() if q["dataset"] == "heat_export"]
    reasons = {q["source_line"]: q["error"] for q in quarantine if q["stage"] == "formatted"}
    assert reasons[3] == "column reading_kwh: empty" and "does not match the pattern" in reasons[5]


GAS_EXPORT = (
    GAS_JSON.replace("name: gas_meter", "name: gas_export")
    .replace("gas_*.json.gz", "gas_export_*.json.gz")
    .replace("inbox/gas_meter", "inbox/gas_export")
    .replace("partitioning:", "months: {start: '2015-01'}\nspans_months: true\npartitioning:")
)


def test_an_export_of_many_months_lands_once_and_each_month_takes_its_rows(configs_copy, make_project, tmp_path, spark):
    """Two months of daily records in one file dropped once (named for the month it was exported): it lands
    once, each formatted month takes its own days, and what no month can take is rejected once."""
    from lakehouse.factories import build_definitions
    from lakehouse.io.lake import Lake

    inbox = tmp_path / "world" / "inbox" / "gas_export"
    inbox.mkdir(parents=True)
    days = [
        {"time_period": f"2015-03-{d:02d}", "energy_kwh": float(d), "weather": {"temperature_degC": 1.0}} for d in range(1, 32)
    ]
    days += [
        {"time_period": f"2015-04-{d:02d}", "energy_kwh": 100.0 + d, "weather": {"temperature_degC": 2.0}} for d in range(1, 11)
    ]
    days += [{"time_period": "2014-12-31", "energy_kwh": 5.0}, {"time_period": "not a day", "energy_kwh": 5.0}]
    (inbox / "gas_export_2015-04.json.gz").write_bytes(gzip.compress(json.dumps({"data": days}).encode()))
    declare(configs_copy, "sources", "gas_export", GAS_EXPORT)
    project = make_project(configs_copy)
    defs = build_definitions(project)
    keys = {z: dg.AssetKey([z, "gas_export"]) for z in ("landing", "formatted", "trusted")}
    assert defs.resolve_assets_def(keys["formatted"]).partitions_def.get_first_partition_key() == "2015-01"
    ok = dg.materialize(defs.assets, selection=[keys["landing"]], partition_key="2015-04", resources=defs.resources)
    assert ok.success
    lake = Lake(project.lake_root)
    (entry,) = [e.__dict__ for e in read_manifest(lake.landing_month("gas_export", "2015-04"))]
    assert entry["rows"] == 43 and entry["months"] == ["2014-12", "2015-03", "2015-04"]
    for month in ("2015-03", "2015-04", "2015-05"):
        run = dg.materialize(
            defs.assets, selection=[keys["formatted"], keys["trusted"]], partition_key=month, resources=defs.resources
        )
        assert run.success, month
    formatted = lake.read_arrow("formatted", "gas_export").to_pylist()
    by_month = {m: sorted(r["day"].day for r in formatted if r["month"] == m) for m in ("2015-03", "2015-04", "2015-05")}
    assert by_month == {"2015-03": list(range(1, 32)), "2015-04": list(range(1, 11)), "2015-05": []}
    assert {r["_source_file"] for r in formatted} == {"2015-04/gas_export_2015-04.json.gz"}
    rejected = [q for q in lake.read_arrow("quality", "quarantine").to_pylist() if q["dataset"] == "gas_export"]
    assert sorted((q["month"], q["source_line"]) for q in rejected) == [("2015-04", 42), ("2015-04", 43)]
    assert "outside the source's months 2015-01.." in next(q["error"] for q in rejected if q["source_line"] == 42)
    assert len(formatted) + len(rejected) == entry["rows"]  # every record once, in exactly one month


def test_decompressed_bytes_are_capped_by_the_format():
    """A small gzip that expands past ``format.max_decompressed_bytes`` is unreadable (its lines
    quarantined with the reason), whether parsed or counted at landing, and never expanded whole."""
    bomb = gzip.compress(b"a,b\n" + b"1,2\n" * (4 << 20))  # 16 MiB of rows in ~16 KiB
    fmt = FormatSpec(compression="gzip", max_decompressed_bytes=1 << 20)
    out = rows(parse_file("bomb.csv.gz", bomb, fmt, ["a", "b"]))
    assert "gzip data expands beyond 1,048,576 bytes (format.max_decompressed_bytes)" in out[0]["_error"]
    assert count_records(bomb, fmt) == len(out) - 1  # the raw lines, as the parser rejects them
    assert count_records(bomb, FormatSpec(compression="gzip")) == 4 << 20  # the default cap lets it through
