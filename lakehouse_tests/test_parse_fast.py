"""The pyarrow fast path of ``parse_file`` gives exactly the full parser's rows, or steps aside."""

import random

import pytest

from lakehouse.specs.models import FormatSpec
from lakehouse.transforms import parse as P

RAW = ["device_id", "timestamp", "reading_kwh"]
HEADER = FormatSpec(delimiter=";", header=True)
NO_HEADER = FormatSpec(delimiter=";", header=False)
CLEAN = b"device_id;timestamp;reading_kwh\n" + b"".join(
    b"M0001;2012-01-01T%02d:00:00Z;%d.%03d\n" % (h, h, h * 7) for h in range(24)
)


def line_parser(monkeypatch, data, fmt):
    with monkeypatch.context() as m:
        m.setattr(P, "_parse_fast", lambda *a: None)
        return P.parse_file("meter_M0001_2012-01.csv", data, fmt, RAW)


def test_clean_file_takes_the_fast_path_with_line_numbers():
    table = P._parse_fast("f.csv", CLEAN, HEADER, RAW)
    assert table is not None and table.schema == P.raw_schema(RAW)
    rows = table.to_pylist()
    assert [r["_source_line"] for r in rows] == list(range(2, 26))
    assert rows[0] == {
        "device_id": "M0001",
        "timestamp": "2012-01-01T00:00:00Z",
        "reading_kwh": "0.000",
        "_source_file": "f.csv",
        "_source_line": 2,
        "_raw": None,
        "_error": None,
    }


@pytest.mark.parametrize(
    "data",
    [
        CLEAN[:-1],  # truncated last line
        CLEAN.replace(b"\n", b"\r\n"),  # CRLF
        CLEAN + b"\n",  # blank line
        CLEAN + b"device_id;timestamp;reading_kwh\n",  # repeated header
        CLEAN.replace(b"M0001;2012-01-01T03", b"M0001;2012;01-01T03"),  # a line with 4 fields
        CLEAN.replace(b"M0001;2012-01-01T05", b" M0001;2012-01-01T05"),  # a value to strip
        CLEAN.replace(b"M0001;2012-01-01T06", b"M\xc3\xa90001;2012-01-01T06"),  # not ASCII
        b"device_id;timestamp;reading_kwh\n",  # header only
        b"device_id;timestamp\nM1;2012-01-01T00:00:00Z\n",  # missing column
    ],
)
def test_files_with_something_to_report_go_to_the_line_parser(data):
    assert P._parse_fast("f.csv", data, HEADER, RAW) is None


def test_fast_path_equals_line_parser_on_mutated_files(monkeypatch):
    rnd = random.Random(8)
    pieces = [b";", b"\n", b"\r\n", b" ", b"", b"\xff", b"\x00", b"device_id;timestamp;reading_kwh\n", b"x", b'"', b"\n\n"]
    taken = 0
    for _ in range(300):
        cut = CLEAN.find(b"\n", rnd.randint(0, len(CLEAN) - 1)) + 1
        data = bytearray(CLEAN[:cut])
        if rnd.random() < 0.3:
            data = bytearray(data.replace(b"device_id;timestamp;reading_kwh", b"reading_kwh;device_id;timestamp", 1))
        for _ in range(rnd.choice([0, 0, 1, 2])):
            pos = rnd.randint(0, len(data))
            data[pos : pos + rnd.randint(0, 3)] = rnd.choice(pieces)
        for fmt in (HEADER, NO_HEADER):
            fast = P.parse_file("meter_M0001_2012-01.csv", bytes(data), fmt, RAW)
            taken += P._parse_fast("x", bytes(data), fmt, RAW) is not None
            assert fast.equals(line_parser(monkeypatch, bytes(data), fmt)), bytes(data)[:200]
    assert taken > 50  # the comparison exercised the fast path, not only the fallback
