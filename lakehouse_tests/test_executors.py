"""The formatted zone's fast lane gives exactly the Spark lane's rows, steps aside for anything else, and
commits a month in one Delta transaction."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lakehouse.io import formatting, staging
from lakehouse.io.formatting import read_raw
from lakehouse.io.lake import Lake
from lakehouse.io.storage import Storage
from lakehouse.specs.models import SourceSpec
from lakehouse.transforms import fast_lane
from lakehouse.transforms.parse import FILE_COL, LINE_COL, cast_checked

METER = SourceSpec.model_validate(
    {
        "name": "meters",
        "collector": {"type": "file_drop", "inbox": "in"},
        "format": {"kind": "csv", "delimiter": ";", "header": True},
        "columns": [
            {"name": "meter_id", "source": "device_id", "type": "string", "nullable": False},
            {"name": "ts", "source": "timestamp", "type": "timestamp", "nullable": False},
            {"name": "reading_kwh", "type": "double", "nullable": False},
        ],
        "partitioning": {"kind": "time_column", "column": "ts"},
    }
)
#: every type the fast lane casts, nullable, partitioned by a date column
WIDE = SourceSpec.model_validate(
    {
        "name": "wide",
        "collector": {"type": "file_drop", "inbox": "in"},
        "format": {"kind": "csv", "delimiter": ",", "header": True},
        "columns": [
            {"name": "day", "type": "date", "nullable": False},
            {"name": "n", "type": "int"},
            {"name": "big", "type": "bigint"},
            {"name": "x", "type": "double"},
            {"name": "ok", "type": "boolean"},
            {"name": "label", "type": "string"},
        ],
        "partitioning": {"kind": "time_column", "column": "day"},
    }
)
MONTH = "2012-01"
HEADER = b"device_id;timestamp;reading_kwh\n"


def meter_file(hours: range, meter: str = "M0001") -> bytes:
    return HEADER + b"".join(
        b"%s;2012-01-%02dT%02d:00:00Z;%d.%03d\n" % (meter.encode(), 1 + h // 24, h % 24, h % 50, h * 7 % 1000) for h in hours
    )


def spark_lane(spark, files: list[str], source: SourceSpec) -> tuple[pa.Table, pa.Table]:
    """(accepted, rejected) of the Spark lane alone, the reference."""
    checked = cast_checked(read_raw(spark, files, source), source, MONTH).toArrow()
    bad = pc.is_valid(checked.column("error"))
    good = checked.filter(pc.invert(bad)).drop_columns(["error", "record", "month"])
    return good, checked.filter(bad).select(["month", FILE_COL, LINE_COL, "record", "error"])


def both_lanes(spark, tmp_path: Path, source: SourceSpec, contents: dict[str, bytes]):
    inbox = tmp_path / "in"
    inbox.mkdir(exist_ok=True)
    files = []
    for name, data in contents.items():
        (inbox / name).write_bytes(data)
        files.append(str(inbox / name))
    schema = formatting.data_schema(source)
    rejects = formatting.Rejects(str(tmp_path / "quarantine"), lambda rows: rows)  # staged as the tasks hand them over
    out = formatting.format_month(spark, files, source, MONTH, Storage("/"), str(tmp_path / "table"), schema, rejects=rejects)
    accepted = pa.concat_tables([pq.read_table(tmp_path / "table" / s["path"]) for s in out.staged]) if out.staged else None
    bad = [pq.read_table(tmp_path / "quarantine" / s["path"]) for s in out.quarantined]
    bad = pa.concat_tables(bad) if bad else formatting._REJECTED.empty_table()
    assert out.rejected == bad.num_rows
    return accepted, bad, out.fast, spark_lane(spark, files, source), out.staged


def ordered(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r[FILE_COL], r[LINE_COL]))


def test_clean_and_dirty_files_give_the_spark_lanes_rows(spark, tmp_path):
    rnd = random.Random(11)
    clean = meter_file(range(0, 72))
    forms = [
        (b"T05:00:00Z;5.035", b"T05:00:00Z;1e5"),  # exponent: Spark reads it, not the strict form
        (b"T05:00:00Z;5.035", b"T05:00:00Z;+5.035"),
        (b"T05:00:00Z;5.035", b"T05:00:00Z;NaN"),
        (b"T05:00:00Z;5.035", b"T05:00:00Z;1234567890123456789.5"),
        (b"T05:00:00Z;5.035", b"T05:00:00Z;"),  # empty required value
        (b"2012-01-01T05:00:00Z", b"2012-02-30T05:00:00Z"),  # no such day
        (b"2012-01-01T05:00:00Z", b"2012-01-01T05:00:00+01:00"),  # an offset
        (b"2012-01-01T05:00:00Z", b"2012-01-01T05:00:00"),  # naive (the session is UTC)
        (b"2012-01-01T05:00:00Z", b"2012-01-01T05:00:00.250Z"),
        (b"2012-01-01T05:00:00Z", b"2011-12-31T05:00:00Z"),  # another month
        (b"2012-01-01T05:00:00Z", b"2012-01-01T24:00:00Z"),
        (b"M0001;2012-01-01T05", b"M0001;2012-01-01T05:00:00Z;1;2012-01-01T05"),  # a line with 5 fields
        (b"\n", b"\r\n"),
    ]
    contents = {"meter_M0001_2012-01.csv": clean, "meter_M0002_2012-01.csv": meter_file(range(10, 40), "M0002")}
    for i, (old, new) in enumerate(forms * 2):
        data = clean.replace(old, new, 1 if rnd.random() < 0.7 else -1)
        contents[f"meter_X{i:03d}_2012-01.csv"] = data
    contents["meter_R0001_2012-01.csv"] = b"reading_kwh;device_id;timestamp\n" + b"".join(
        b"%d.5;M0009;2012-01-02T%02d:00:00Z\n" % (h, h) for h in range(24)
    )  # columns in another order: still the fast lane
    accepted, bad, fast, (ref_good, ref_bad), _ = both_lanes(spark, tmp_path, METER, contents)
    assert 3 <= fast < len(contents), fast  # both lanes were taken
    assert accepted.schema.equals(fast_lane.file_schema(formatting.data_schema(METER)))
    assert ordered(accepted) == ordered(ref_good.cast(accepted.schema))
    assert ordered(bad) == ordered(ref_bad.cast(bad.schema)) and bad.num_rows > 0


def test_every_fast_type_matches_spark(spark, tmp_path):
    header = b"day,n,big,x,ok,label\n"
    good = header + b"2012-01-05,7,-9000000000,0.25,true,a\n2012-01-31,,12,,false,\n2012-01-01,-3,0,10,,z\n"
    contents = {
        "wide_2012-01_a.csv": good,
        "wide_2012-01_b.csv": good.replace(b"2012-01-31,", b"2012-02-01,"),  # another month
        "wide_2012-01_c.csv": good.replace(b",7,", b",3000000000,"),  # beyond int: Spark's cast says so
        "wide_2012-01_d.csv": good.replace(b"true", b"yes"),  # Spark reads it; not the strict form
        "wide_2012-01_e.csv": good.replace(b"2012-01-05", b"2012-1-5"),
    }
    accepted, bad, fast, (ref_good, ref_bad), _ = both_lanes(spark, tmp_path, WIDE, contents)
    assert fast == 1
    assert ordered(accepted) == ordered(ref_good.cast(accepted.schema))
    assert ordered(bad) == ordered(ref_bad.cast(bad.schema))
    row = ordered(accepted)[1]
    assert (row["n"], row["x"], row["ok"], row["label"]) == (None, None, False, None)


def test_spaces_inside_values_take_the_fast_lane_and_spaces_spark_trims_do_not(spark, tmp_path):
    header = b"day,n,big,x,ok,label\n"
    good = header + b"2012-01-05,7,-9,0.25,true,Kirkland WA\n2012-01-31,,12,,false,a  b c\n2012-01-01,-3,0,10,,z\n"
    contents = {
        "wide_2012-01_a.csv": good,
        "wide_2012-01_b.csv": good.replace(b",Kirkland", b", Kirkland"),  # leading: Spark trims it
        "wide_2012-01_c.csv": good.replace(b"WA\n", b"WA \n"),  # trailing
        "wide_2012-01_d.csv": good.replace(b",a  b c", b",   "),  # only spaces: empty once trimmed
        "wide_2012-01_e.csv": good.replace(b",7,", b", 7,"),  # a number with a space before it
        "wide_2012-01_f.csv": good.replace(b"a  b c", b"a\tb"),  # a tab
        "wide_2012-01_g.csv": good + b" \n",  # a line of a space
    }
    accepted, bad, fast, (ref_good, ref_bad), _ = both_lanes(spark, tmp_path, WIDE, contents)
    assert fast == 1  # the file with spaces inside values only
    assert ordered(accepted) == ordered(ref_good.cast(accepted.schema))
    assert ordered(bad) == ordered(ref_bad.cast(bad.schema))
    labels = [r["label"] for r in ordered(accepted) if r[FILE_COL] == "wide_2012-01_a.csv"]
    assert labels == ["Kirkland WA", "a  b c", "z"]


def test_the_spark_lane_s_rows_are_staged_by_its_tasks(spark, tmp_path, collected):
    """Accepted and rejected rows of faulty files are written by Spark's tasks: the driver collects file
    lists (the staging's ``kind``/path/size/stats/rows), never a row of the month."""
    dirty = meter_file(range(0, 48)).replace(b"T05:00:00Z;5.035", b"T05:00:00Z;oops")
    contents = {"meter_M0001_2012-01.csv": meter_file(range(0, 24)), "meter_X0001_2012-01.csv": dirty}
    accepted, bad, fast, (ref_good, ref_bad), _ = both_lanes(spark, tmp_path, METER, contents)
    assert fast == 1 and accepted.num_rows == 24 + 47 and ordered(accepted) == ordered(ref_good.cast(accepted.schema))
    [row] = bad.to_pylist()
    record = {"device_id": "M0001", "timestamp": "2012-01-01T05:00:00Z", "reading_kwh": "oops"}
    assert (row[FILE_COL], row[LINE_COL], json.loads(row["record"])) == ("meter_X0001_2012-01.csv", 7, record)
    assert "reading_kwh" in row["error"] and ordered(bad) == ordered(ref_bad.cast(bad.schema))
    # format_month's jobs bring back file lists only; the last frame of rows is the test's own reference
    assert collected[:-1] and all(c == staging.OUT_SCHEMA.names for c in collected[:-1]), collected
    assert "reading_kwh" in collected[-1]


def test_a_source_the_fast_lane_cannot_cast_takes_the_spark_lane(spark, tmp_path):
    raw = METER.model_dump()
    raw["columns"][1]["format"] = "yyyy-MM-dd'T'HH:mm:ss'Z'"
    spec = SourceSpec.model_validate(raw)
    assert not fast_lane.eligible(spec) and fast_lane.eligible(METER)
    accepted, bad, fast, (ref_good, _), staged = both_lanes(spark, tmp_path, spec, {"m_2012-01.csv": meter_file(range(5))})
    assert fast == 0 and len(staged) == 1 and ordered(accepted) == ordered(ref_good.cast(accepted.schema))


@pytest.mark.parametrize(
    ("kind", "value"),
    [("double", "1e5"), ("double", "inf"), ("int", "12345678901"), ("timestamp", "2012-01-01T05:00Z"), ("date", "2012-02-30")],
)
def test_cast_strict_steps_aside(kind, value):
    raw = pa.table({"v": [value], FILE_COL: ["f"], LINE_COL: pa.array([2], pa.int64())})
    plan = fast_lane.CastPlan(
        fmt=None,
        raw_names=("v",),
        columns=(("v", "v", kind, True, None),),
        month_column=None,
        month=MONTH,
        utc_session=True,
        schema=pa.schema([("v", pa.string()), (FILE_COL, pa.string()), (LINE_COL, pa.int64())]),
    )
    assert fast_lane.cast_strict(raw, plan) is None


def staged_month(lake: Lake, month: str, rows: int, schema: pa.Schema) -> list[dict]:
    table = pa.table(
        {
            "meter_id": ["M1"] * rows,
            "ts": pa.array([f"{month}-01T{h:02d}:00:00Z" for h in range(rows)]).cast(pa.timestamp("us", tz="UTC")),
            "reading_kwh": [float(h) for h in range(rows)],
            FILE_COL: ["f.csv"] * rows,
            LINE_COL: pa.array(range(2, rows + 2), pa.int64()),
        }
    ).cast(fast_lane.file_schema(schema))
    return [staging.stage_parquet(lake.storage, lake.table_uri("formatted", "m"), f"month={month}", table)]


def test_commit_month_replaces_one_month_in_one_transaction(spark, tmp_path):
    lake = Lake(tmp_path / "lake")
    schema = formatting.data_schema(METER)
    assert lake.commit_month("formatted", "m", "2012-01", staged_month(lake, "2012-01", 5, schema), schema) == 0
    assert lake.commit_month("formatted", "m", "2012-02", staged_month(lake, "2012-02", 3, schema), schema) == 1
    assert lake.commit_month("formatted", "m", "2012-01", staged_month(lake, "2012-01", 2, schema), schema) == 2
    assert lake.row_count("formatted", "m", ["2012-01"]) == 2 and lake.row_count("formatted", "m", ["2012-02"]) == 3
    table = lake.read_arrow("formatted", "m")
    assert table.num_rows == 5 and sorted(table.column("month").to_pylist()) == ["2012-01"] * 2 + ["2012-02"] * 3
    stats = lake.delta("formatted", "m").get_add_actions(flatten=True)
    stats = pa.table(stats).to_pylist()
    jan = next(s for s in stats if s["partition.month"] == "2012-01")
    assert jan["min.reading_kwh"] == 0.0 and jan["max.reading_kwh"] == 1.0 and jan["null_count.meter_id"] == 0
    # staged but never committed (a crash before the commit): not part of the table
    staged_month(lake, "2012-01", 9, schema)
    assert lake.read_arrow("formatted", "m", months=["2012-01"]).num_rows == 2
    # nothing staged: the month is emptied, the others stay
    lake.commit_month("formatted", "m", "2012-02", [], schema)
    assert lake.row_count("formatted", "m", ["2012-02"]) == 0 and lake.row_count("formatted", "m") == 2
    assert lake.read_spark(spark, "formatted", "m").count() == 2


def test_commit_month_refuses_other_columns(spark, tmp_path):
    lake = Lake(tmp_path / "lake")
    schema = formatting.data_schema(METER)
    lake.commit_month("formatted", "m", "2012-01", staged_month(lake, "2012-01", 2, schema), schema)
    other = pa.schema([f if f.name != "reading_kwh" else pa.field("reading_kwh", pa.string()) for f in schema])
    with pytest.raises(ValueError, match=r"formatted/m: month 2012-02 has columns .*reading_kwh: string.* but the table has"):
        lake.commit_month("formatted", "m", "2012-02", [], other)
    assert lake.version("formatted", "m") == 0


def test_file_statistics_bound_every_column():
    table = pa.table(
        {
            "ts": pa.array(["2012-01-02T03:04:05.000006Z", "2012-01-01T00:00:00Z"]).cast(pa.timestamp("us", tz="UTC")),
            "x": [2.5, None],
            "s": ["b", "a"],
            "long": ["x" * 100, "y"],
        }
    )
    stats = json.loads(staging.stats(table))
    assert stats["numRecords"] == 2 and stats["nullCount"] == {"ts": 0, "x": 1, "s": 0, "long": 0}
    assert stats["minValues"] == {"ts": "2012-01-01T00:00:00Z", "x": 2.5, "s": "a"}
    assert stats["maxValues"] == {"ts": "2012-01-02T03:04:05.000006Z", "x": 2.5, "s": "b"}


def test_the_formatted_schema_is_what_spark_s_casts_give(spark):
    """``data_schema`` reads the declaration alone; Spark's casts of an empty frame are the oracle."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    from lakehouse import settings
    from lakehouse.io.lake import normalized_schema
    from lakehouse.transforms.parse import cast_checked, raw_schema

    formats = SourceSpec.model_validate(
        {
            "name": "formats",
            "collector": {"type": "file_drop", "inbox": "in"},
            "format": {"kind": "csv", "delimiter": ";", "header": True, "decimal": ",", "thousands": "."},
            "columns": [
                {"name": "at", "type": "timestamp", "format": "dd.MM.yyyy HH:mm", "nullable": False},
                {"name": "on", "type": "date", "format": "dd/MM/yyyy"},
                {"name": "code", "type": "string", "pattern": "[A-Z]{2}[0-9]+", "nullable": False},
                {"name": "n", "type": "int"},
                {"name": "ok", "type": "boolean", "nullable": False},
                {"name": "big", "type": "bigint"},
                {"name": "amount", "type": "double"},
            ],
            "partitioning": {"kind": "time_column", "column": "at"},
            "spans_months": True,
        }
    )
    for source in [METER, WIDE, formats, *settings.load().sources]:
        raw = spark.createDataFrame([], from_arrow_schema(raw_schema([c.raw_name for c in source.columns])))
        checked = cast_checked(raw, source, "2000-01").drop("error", "record")
        spark_schema = normalized_schema(to_arrow_schema(checked.schema, timezone="UTC"))
        assert formatting.data_schema(source).equals(spark_schema), source.name
