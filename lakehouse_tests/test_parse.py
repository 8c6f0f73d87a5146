import pytest

from lakehouse.specs.models import FormatSpec
from lakehouse.transforms.parse import cast_checked, parse_file

FMT = FormatSpec(delimiter=";", header=True)
RAW = ["device_id", "timestamp", "reading_kwh"]


def rows(table):
    return table.to_pylist()


def test_good_lines_keep_file_and_line_numbers():
    data = b"device_id;timestamp;reading_kwh\nM1;2012-01-01T00:00:00Z;1.5\n\nM1;2012-01-01T01:00:00Z;2.0\n"
    out = rows(parse_file("f.csv", data, FMT, RAW))
    assert [(r["_source_line"], r["reading_kwh"], r["_error"]) for r in out] == [(2, "1.5", None), (4, "2.0", None)]


def test_malformed_line_is_kept_with_its_cause():
    data = b"device_id;timestamp;reading_kwh\nM1;2012-01-01T00:00:00Z;1.5\nM1,2012-01-01T01:00:00Z,2.0\n"
    out = rows(parse_file("f.csv", data, FMT, RAW))
    bad = [r for r in out if r["_error"]]
    assert len(out) == 2 and len(bad) == 1
    assert bad[0]["_source_line"] == 3 and "expected 3 fields" in bad[0]["_error"]
    assert bad[0]["_raw"] == "M1,2012-01-01T01:00:00Z,2.0"


def test_reordered_columns_crlf_and_bom():
    data = "\ufeffreading_kwh;device_id;timestamp\r\n1.5;M1;2012-01-01T00:00:00Z\r\n".encode()
    (row,) = rows(parse_file("f.csv", data, FMT, RAW))
    assert (row["device_id"], row["timestamp"], row["reading_kwh"], row["_error"]) == ("M1", "2012-01-01T00:00:00Z", "1.5", None)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty file"),
        (b"a,b,c\nM1,x,1\n", "does not match the declared columns"),
        (b"\x1f\x8b\x08\x00rest", "gzip"),
    ],
)
def test_file_level_problems(data, needle):
    out = rows(parse_file("f.csv", data, FMT, RAW))
    assert any(needle in (r["_error"] or "") for r in out)
    assert all(r["_error"] for r in out)


def test_undecodable_line_is_quarantined_not_the_file():
    data = b"device_id;timestamp;reading_kwh\nM1;2012-01-01T00:00:00Z;1.5\nM\xff1;2012-01-01T01:00:00Z;2\n"
    out = rows(parse_file("f.csv", data, FMT, RAW))
    assert [r["_error"] is None for r in out] == [True, False]
    assert "not valid utf-8" in out[1]["_error"]


def test_cast_rejects_bad_values_and_other_months(spark, make_project):
    source = make_project().source("meter_readings")
    data = (
        b"device_id;timestamp;reading_kwh\n"
        b"M1;2012-01-01T00:00:00Z;1.5\n"
        b"M1;2012-01-01T01:00:00Z;abc\n"
        b"M1;2012-02-01T00:00:00Z;1.0\n"
        b"M1;2012-01-01T02:00:00Z;NaN\n"
        b";2012-01-01T03:00:00Z;1.0\n"
    )
    raw = spark.createDataFrame(parse_file("meter_M1_2012-01.csv", data, source.format, [c.raw_name for c in source.columns]))
    checked = cast_checked(raw, source, "2012-01").collect()
    good_rows = [r for r in checked if r.error is None]
    bad = [r for r in checked if r.error is not None]
    assert [(r.meter_id, r.reading_kwh, r.month, r._source_line) for r in good_rows] == [("M1", 1.5, "2012-01", 2)]
    errors = {r._source_line: r.error for r in bad}
    assert "cannot read 'abc' as double" in errors[3]
    assert "belongs to month 2012-02" in errors[4]
    assert "cannot read 'NaN' as double" in errors[5]
    assert "column meter_id: empty" in errors[6]
