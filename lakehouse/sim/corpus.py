"""Bad input on demand: the demo world's fault injector for the reliability suite.

Where :mod:`lakehouse.sim.world` injects *row* faults at a low rate (the material of cleaning and
scoring), this module produces whole **bad deliveries**, one per kind, each with the truth of what the
lakehouse must make of every line:

* meter files dropped into the inbox (:data:`FILE_KINDS`): broken encodings, layouts, timestamps,
  values, names, months — each file built from a clean simulated meter-month, so every line's intended
  reading is known;
* source responses (:data:`SOURCE_KINDS`): what the weather provider (:mod:`lakehouse.sim.weather_server`)
  and the customer database can do wrong — 500s, timeouts, truncated bodies, HTML pages with status 200, a
  database that is down — with the number of consecutive faults and whether the collector must survive.

Each file's truth (:class:`BadFile`) says, per data line (1-based, the header is line 1):

``ok``        the row reaches the formatted and trusted tables with exactly this reading;
``rejected``  the row is quarantined while formatting, with ``needle`` in its error;
``flagged``   the row is formatted as delivered, then caught by a quality rule: quarantined at the trusted
              stage (``needle`` in its rule or error), or repaired (to ``intended`` when given) and logged.
              Rows of one ``group`` (conflicting duplicates) may keep at most one member in trusted.

and ``file_error``: the needle of the file-level (line 0) quarantine entry, when the file as a whole is
unusable. ``python -m lakehouse.sim.corpus --out DIR`` writes a corpus (inbox files + ``truth/corpus.json``).
The lakehouse never imports this module.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from lakehouse.sim.world import MeterWorld, WorldConfig

HEADER = "device_id;timestamp;reading_kwh"
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: the demo's meters are in Seattle: local wall time with its DST transitions
LOCAL_TZ = ZoneInfo("America/Los_Angeles")

Outcome = Literal["ok", "rejected", "flagged"]


@dataclass(frozen=True)
class Reading:
    meter_id: str
    ts: str  # ISO 8601 UTC, ``TS_FORMAT``
    kwh: float


@dataclass(frozen=True)
class Line:
    """What must become of one data line of a bad file."""

    outcome: Outcome
    #: the reading as delivered, which the formatted zone must hold (``ok``/``flagged``); ``None`` for
    #: ``rejected``
    reading: Reading | None = None
    #: a substring of the quarantine error (``rejected``) or of the rule/error (``flagged``); empty: any
    needle: str = ""
    #: ``flagged`` rows a repair may keep: the value it must restore (e.g. kWh for a Wh reading)
    intended: float | None = None
    #: ``flagged`` rows that conflict with each other share a group: at most one may stay in trusted
    group: int | None = None


@dataclass
class BadFile:
    kind: str
    #: the file name as delivered into the inbox
    name: str
    data: bytes
    #: the month the file is delivered for (from its name), ``None`` when its name carries none
    month: str | None
    lines: dict[int, Line] = field(default_factory=dict)
    #: a substring of the file-level (line 0) quarantine entry, when the file as a whole is unusable
    file_error: str | None = None
    #: ``True``: the month is outside the partition range, no run collects the file (it must be reported)
    out_of_range: bool = False

    def truth(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "bytes": len(self.data),
            "month": self.month,
            "file_error": self.file_error,
            "out_of_range": self.out_of_range,
            "lines": {str(n): asdict(line) for n, line in sorted(self.lines.items())},
        }


@dataclass(frozen=True)
class FileKind:
    name: str
    description: str
    make: Callable[[Context], BadFile | list[BadFile]]
    #: the part of the lakehouse that must catch it: ``parse`` (formatted zone), ``quality`` (trusted
    #: zone rules), ``landing`` (names), ``none`` (valid input that must be accepted as is)
    caught_by: Literal["parse", "quality", "landing", "collector", "none"] = "parse"


@dataclass
class Context:
    """One clean meter-month to corrupt: its device, month and hourly readings."""

    device: str
    month: str
    stamps: list[datetime]
    values: list[float]
    rng: np.random.Generator
    huge_line_bytes: int

    @property
    def name(self) -> str:
        return f"meter_{self.device}_{self.month}.csv"

    def readings(self) -> list[Reading]:
        return [Reading(self.device, t.strftime(TS_FORMAT), round(v, 3)) for t, v in zip(self.stamps, self.values, strict=True)]

    def text_rows(self) -> list[str]:
        return [f"{r.meter_id};{r.ts};{r.kwh:.3f}" for r in self.readings()]

    def some(self, share: float = 0.2, at_least: int = 2) -> list[int]:
        """Indices of a random subset of the rows (never the last row, which other kinds use)."""
        n = len(self.values)
        k = max(at_least, int(n * share))
        return sorted(int(i) for i in self.rng.choice(max(1, n - 1), size=min(k, n - 1), replace=False))


def _file(ctx: Context, kind: str, text_lines: list[str], *, eol: str = "\n", encoding: str = "utf-8") -> bytes:
    return (eol.join(text_lines) + eol).encode(encoding)


def _all_ok(ctx: Context, first_line: int = 2) -> dict[int, Line]:
    return {first_line + i: Line("ok", r) for i, r in enumerate(ctx.readings())}


def _all_rejected(ctx: Context, needle: str, first_line: int = 2) -> dict[int, Line]:
    return {first_line + i: Line("rejected", None, needle) for i in range(len(ctx.values))}


# ------------------------------------------------------------------------------------------ file kinds
def clean_control(ctx: Context) -> BadFile:
    return BadFile("clean_control", ctx.name, _file(ctx, "", [HEADER, *ctx.text_rows()]), ctx.month, _all_ok(ctx))


def empty(ctx: Context) -> BadFile:
    return BadFile("empty", ctx.name, b"", ctx.month, file_error="empty file")


def whitespace_only(ctx: Context) -> BadFile:
    return BadFile("whitespace_only", ctx.name, b"\n   \n\t\r\n\n", ctx.month, file_error="empty file")


def header_only(ctx: Context) -> BadFile:
    return BadFile("header_only", ctx.name, (HEADER + "\n").encode(), ctx.month, file_error="header only")


def truncated_last_line(ctx: Context) -> BadFile:
    rows = ctx.text_rows()
    last = rows[-1]
    cut = int(ctx.rng.integers(1, len(last)))  # keep 1..len-1 characters: always a real cut
    data = ("\n".join([HEADER, *rows[:-1], last[:cut]])).encode()  # no final newline: the transfer stopped
    lines = _all_ok(ctx)
    lines[1 + len(rows)] = Line("rejected", None, "no line terminator")
    return BadFile("truncated_last_line", ctx.name, data, ctx.month, lines)


def wrong_delimiter(ctx: Context) -> BadFile:
    rows = [r.replace(";", ",") for r in ctx.text_rows()]
    data = _file(ctx, "", [HEADER.replace(";", ","), *rows])
    return BadFile(
        "wrong_delimiter",
        ctx.name,
        data,
        ctx.month,
        _all_rejected(ctx, "rejected with its file"),
        file_error="does not match the declared columns",
    )


def decimal_comma(ctx: Context) -> BadFile:
    rows = [f"{r.meter_id};{r.ts};{r.kwh:.3f}".rsplit(".", 1) for r in ctx.readings()]
    data = _file(ctx, "", [HEADER, *(f"{a},{b}" for a, b in rows)])
    return BadFile("decimal_comma", ctx.name, data, ctx.month, _all_rejected(ctx, "as double"))


def extra_column(ctx: Context) -> BadFile:
    data = _file(ctx, "", [HEADER + ";status", *(r + ";OK" for r in ctx.text_rows())])
    return BadFile(
        "extra_column", ctx.name, data, ctx.month, _all_rejected(ctx, "rejected with its file"), file_error="unknown ['status']"
    )


def extra_field_on_lines(ctx: Context) -> BadFile:
    rows, lines, bad = ctx.text_rows(), _all_ok(ctx), set(ctx.some(0.1))
    for i in bad:
        rows[i] += ";17"
        lines[2 + i] = Line("rejected", None, "expected 3 fields")
    return BadFile("extra_field_on_lines", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def missing_column(ctx: Context) -> BadFile:
    rows = [r.rsplit(";", 1)[0] for r in ctx.text_rows()]
    data = _file(ctx, "", ["device_id;timestamp", *rows])
    return BadFile(
        "missing_column",
        ctx.name,
        data,
        ctx.month,
        _all_rejected(ctx, "rejected with its file"),
        file_error="missing ['reading_kwh']",
    )


def missing_field_on_lines(ctx: Context) -> BadFile:
    rows, lines = ctx.text_rows(), _all_ok(ctx)
    for i in ctx.some(0.1):
        rows[i] = rows[i].rsplit(";", 1)[0]
        lines[2 + i] = Line("rejected", None, "expected 3 fields")
    return BadFile("missing_field_on_lines", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def reordered_columns(ctx: Context) -> BadFile:
    rows = [f"{r.kwh:.3f};{r.ts};{r.meter_id}" for r in ctx.readings()]
    data = _file(ctx, "", ["reading_kwh;timestamp;device_id", *rows])
    return BadFile("reordered_columns", ctx.name, data, ctx.month, _all_ok(ctx))


def header_case_changed(ctx: Context) -> BadFile:
    data = _file(ctx, "", ["Device_ID;Timestamp;Reading_kWh", *ctx.text_rows()])
    return BadFile(
        "header_case_changed",
        ctx.name,
        data,
        ctx.month,
        _all_rejected(ctx, "rejected with its file"),
        file_error="does not match the declared columns",
    )


def non_utf8_bytes(ctx: Context) -> BadFile:
    rows = [r.encode() for r in ctx.text_rows()]
    lines = _all_ok(ctx)
    for i in ctx.some(0.1):
        rows[i] = rows[i] + "\u00b0".encode("latin-1")  # a degree sign from a Latin-1 firmware
        lines[2 + i] = Line("rejected", None, "not valid utf-8")
    return BadFile("non_utf8_bytes", ctx.name, b"\n".join([HEADER.encode(), *rows]) + b"\n", ctx.month, lines)


def latin1_file(ctx: Context) -> BadFile:
    device = "Z\u00e4hler-" + ctx.device[1:]  # a device id with an umlaut, the whole file in Latin-1
    rows = [f"{device};{r.ts};{r.kwh:.3f}" for r in ctx.readings()]
    data = _file(ctx, "", [HEADER, *rows], encoding="latin-1")
    return BadFile("latin1_file", ctx.name, data, ctx.month, _all_rejected(ctx, "not valid utf-8"))


def utf16_with_bom(ctx: Context) -> BadFile:
    data = _file(ctx, "", [HEADER, *ctx.text_rows()], eol="\r\n", encoding="utf-16")  # BOM + UTF-16LE
    return BadFile("utf16_with_bom", ctx.name, data, ctx.month, _all_ok(ctx))


def utf8_bom(ctx: Context) -> BadFile:
    data = b"\xef\xbb\xbf" + _file(ctx, "", [HEADER, *ctx.text_rows()])
    return BadFile("utf8_bom", ctx.name, data, ctx.month, _all_ok(ctx))


def crlf(ctx: Context) -> BadFile:
    return BadFile("crlf", ctx.name, _file(ctx, "", [HEADER, *ctx.text_rows()], eol="\r\n"), ctx.month, _all_ok(ctx))


def mixed_line_endings(ctx: Context) -> BadFile:
    rows = ctx.text_rows()
    body = "".join(r + ("\r\n" if i % 3 == 0 else "\n") for i, r in enumerate([HEADER, *rows]))
    return BadFile("mixed_line_endings", ctx.name, body.encode(), ctx.month, _all_ok(ctx))


def blank_lines_and_padding(ctx: Context) -> BadFile:
    out, lines, n = [HEADER, ""], {}, 2
    for i, r in enumerate(ctx.readings()):
        n += 1
        out.append(f"  {r.meter_id} ;\t{r.ts} ; {r.kwh:.3f}  ")
        lines[n] = Line("ok", r)
        if i % 5 == 0:
            out.append("   ")
            n += 1
    return BadFile("blank_lines_and_padding", ctx.name, _file(ctx, "", out), ctx.month, lines)


def second_header_mid_file(ctx: Context) -> BadFile:
    rows = ctx.text_rows()
    at = len(rows) // 2
    out = [HEADER, *rows[:at], HEADER, *rows[at:]]
    lines = {}
    for i, r in enumerate(ctx.readings()):
        lines[2 + i + (1 if i >= at else 0)] = Line("ok", r)
    lines[2 + at] = Line("rejected", None, "repeated header line")
    return BadFile("second_header_mid_file", ctx.name, _file(ctx, "", out), ctx.month, lines)


def quoted_fields(ctx: Context) -> BadFile:
    rows = [f'"{r.meter_id}";"{r.ts}";"{r.kwh:.3f}"' for r in ctx.readings()]
    return BadFile("quoted_fields", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_ok(ctx))


def timestamps_other_zone(ctx: Context) -> BadFile:
    """The same instants written in another time zone (+05:30): valid ISO 8601, must be read as UTC."""
    tz = ZoneInfo("Asia/Kolkata")
    rows = [f"{r.meter_id};{t.astimezone(tz).isoformat()};{r.kwh:.3f}" for r, t in zip(ctx.readings(), ctx.stamps, strict=True)]
    return BadFile("timestamps_other_zone", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_ok(ctx))


def dst_local_time_with_offsets(ctx: Context) -> BadFile:
    """Seattle wall-clock time with its offset; across a DST change a local hour repeats (fall) or is
    skipped (spring) but the instants stay distinct and must all be kept."""
    rows = [
        f"{r.meter_id};{t.astimezone(LOCAL_TZ).isoformat()};{r.kwh:.3f}" for r, t in zip(ctx.readings(), ctx.stamps, strict=True)
    ]
    return BadFile("dst_local_time_with_offsets", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_ok(ctx))


def timestamps_without_zone(ctx: Context) -> BadFile:
    """No zone designator: the column is declared UTC, so the text is read as UTC."""
    rows = [
        f"{r.meter_id};{t.strftime('%Y-%m-%d %H:%M:%S')};{r.kwh:.3f}" for r, t in zip(ctx.readings(), ctx.stamps, strict=True)
    ]
    return BadFile("timestamps_without_zone", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_ok(ctx))


def timestamps_other_format(ctx: Context) -> BadFile:
    rows = [f"{r.meter_id};{t.strftime('%d/%m/%Y %H:%M')};{r.kwh:.3f}" for r, t in zip(ctx.readings(), ctx.stamps, strict=True)]
    return BadFile(
        "timestamps_other_format", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_rejected(ctx, "as timestamp")
    )


def timestamps_epoch_seconds(ctx: Context) -> BadFile:
    rows = [f"{r.meter_id};{int(t.timestamp())};{r.kwh:.3f}" for r, t in zip(ctx.readings(), ctx.stamps, strict=True)]
    return BadFile(
        "timestamps_epoch_seconds", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_rejected(ctx, "as timestamp")
    )


def _shift_some(ctx: Context, kind: str, new_ts: Callable[[datetime], datetime]) -> BadFile:
    rows, lines = ctx.text_rows(), _all_ok(ctx)
    for i in ctx.some(0.1):
        r = ctx.readings()[i]
        rows[i] = f"{r.meter_id};{new_ts(ctx.stamps[i]).strftime(TS_FORMAT)};{r.kwh:.3f}"
        lines[2 + i] = Line("rejected", None, "delivered for")
    return BadFile(kind, ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def future_timestamps(ctx: Context) -> BadFile:
    return _shift_some(ctx, "future_timestamps", lambda t: t.replace(year=t.year + 20))


def ancient_timestamps(ctx: Context) -> BadFile:
    return _shift_some(ctx, "ancient_timestamps", lambda t: t.replace(year=1972))  # a leap year: 29 February exists


def file_for_other_month(ctx: Context) -> BadFile:
    """Named for this month, but its rows are last month's (a device with a wrong month counter)."""
    rows = [
        f"{r.meter_id};{(t - timedelta(days=31)).strftime(TS_FORMAT)};{r.kwh:.3f}"
        for r, t in zip(ctx.readings(), ctx.stamps, strict=True)
    ]
    return BadFile(
        "file_for_other_month", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, _all_rejected(ctx, "delivered for")
    )


def unknown_device_id(ctx: Context) -> BadFile:
    """Rows for a device no customer owns (a replaced meter's id, a typo in provisioning)."""
    unknown = "X" + ctx.device[1:]
    readings = [Reading(unknown, r.ts, r.kwh) for r in ctx.readings()]
    rows = [f"{r.meter_id};{r.ts};{r.kwh:.3f}" for r in readings]
    lines = {2 + i: Line("flagged", r, "") for i, r in enumerate(readings)}
    return BadFile("unknown_device_id", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def exact_duplicates(ctx: Context) -> BadFile:
    out, lines, n = [HEADER], {}, 1
    dup = set(ctx.some(0.1))
    for i, (text, r) in enumerate(zip(ctx.text_rows(), ctx.readings(), strict=True)):
        n += 1
        out.append(text)
        lines[n] = Line("ok", r)
        if i in dup:
            n += 1
            out.append(text)
            lines[n] = Line("flagged", r, "duplicate")
    return BadFile("exact_duplicates", ctx.name, _file(ctx, "", out), ctx.month, lines)


def conflicting_duplicates(ctx: Context) -> BadFile:
    """The same meter and hour twice with different readings: at most one can be right."""
    out, lines, n = [HEADER], {}, 1
    dup = set(ctx.some(0.1))
    for i, (text, r) in enumerate(zip(ctx.text_rows(), ctx.readings(), strict=True)):
        n += 1
        out.append(text)
        lines[n] = Line("ok", r)
        if i in dup:
            other = Reading(r.meter_id, r.ts, round(r.kwh * 2.5 + 1.0, 3))
            n += 1
            out.append(f"{other.meter_id};{other.ts};{other.kwh:.3f}")
            # a policy may keep either copy, or set both aside: never both in trusted
            lines[n - 1] = Line("flagged", r, "", group=i)
            lines[n] = Line("flagged", other, "", group=i)
    return BadFile("conflicting_duplicates", ctx.name, _file(ctx, "", out), ctx.month, lines)


def _bad_values(ctx: Context, kind: str, value: Callable[[float], str], outcome: Outcome, needle: str) -> BadFile:
    rows, lines = ctx.text_rows(), _all_ok(ctx)
    for i in ctx.some(0.1):
        r = ctx.readings()[i]
        text = value(r.kwh)
        rows[i] = f"{r.meter_id};{r.ts};{text}"
        reading = Reading(r.meter_id, r.ts, float(text)) if outcome == "flagged" else None
        lines[2 + i] = Line(outcome, reading, needle)
    return BadFile(kind, ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def negative_readings(ctx: Context) -> BadFile:
    return _bad_values(ctx, "negative_readings", lambda v: f"{-abs(v) - 0.1:.3f}", "flagged", "non_negative")


def absurd_readings(ctx: Context) -> BadFile:
    """Physically impossible for one building in one hour (a 10 GW heating)."""
    return _bad_values(ctx, "absurd_readings", lambda v: f"{v * 1e7 + 1e7:.3f}", "flagged", "")


def nan_and_inf_text(ctx: Context) -> BadFile:
    words = ["NaN", "nan", "inf", "-inf", "Infinity", "1e400"]
    state = iter(range(10**6))
    return _bad_values(ctx, "nan_and_inf_text", lambda v: words[next(state) % len(words)], "rejected", "as double")


def empty_values(ctx: Context) -> BadFile:
    rows, lines = ctx.text_rows(), _all_ok(ctx)
    for j, i in enumerate(ctx.some(0.1)):
        r = ctx.readings()[i]
        if j % 2:
            rows[i], needle = f"{r.meter_id};{r.ts};", "column reading_kwh: empty"
        else:
            rows[i], needle = f";{r.ts};{r.kwh:.3f}", "column meter_id: empty"
        lines[2 + i] = Line("rejected", None, needle)
    return BadFile("empty_values", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def wh_instead_of_kwh(ctx: Context) -> BadFile:
    """A device configured for Wh: every value 1000x; the intended reading is the kWh value."""
    rows = [f"{r.meter_id};{r.ts};{r.kwh * 1000:.0f}" for r in ctx.readings()]
    lines = {
        2 + i: Line("flagged", Reading(r.meter_id, r.ts, float(f"{r.kwh * 1000:.0f}")), "", intended=r.kwh)
        for i, r in enumerate(ctx.readings())
    }
    return BadFile("wh_instead_of_kwh", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def _unreadable_lines(data: bytes, needle: str) -> dict[int, Line]:
    """A file that cannot be read at all: each non-blank physical line is rejected with it."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return {n: Line("rejected", None, needle) for n, line in enumerate(lines, 1) if line.strip()}


def binary_file(ctx: Context) -> BadFile:
    blob = bytes(ctx.rng.integers(0, 256, size=4096, dtype=np.uint8))
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + blob  # an image uploaded by mistake
    return BadFile("binary_file", ctx.name, data, ctx.month, _unreadable_lines(data, "binary data"), file_error="binary data")


def gzip_file(ctx: Context) -> BadFile:
    data = gzip.compress(_file(ctx, "", [HEADER, *ctx.text_rows()]), mtime=0)
    return BadFile("gzip_file", ctx.name, data, ctx.month, _unreadable_lines(data, "gzip"), file_error="gzip")


def huge_line(ctx: Context) -> BadFile:
    """One line of many megabytes (a firmware dumping its buffer) in the middle of good rows."""
    rows, lines = ctx.text_rows(), _all_ok(ctx)
    at = len(rows) // 2
    rows.insert(at, "M" + "0123456789" * (ctx.huge_line_bytes // 10))
    for i, r in enumerate(ctx.readings()):
        lines[2 + i + (1 if i >= at else 0)] = Line("ok", r)
    lines[2 + at] = Line("rejected", None, "expected 3 fields")
    return BadFile("huge_line", ctx.name, _file(ctx, "", [HEADER, *rows]), ctx.month, lines)


def _renamed(ctx: Context, kind: str, name: str) -> BadFile:
    return BadFile(kind, name, _file(ctx, "", [HEADER, *ctx.text_rows()]), ctx.month, _all_ok(ctx))


def name_with_spaces(ctx: Context) -> BadFile:
    return _renamed(ctx, "name_with_spaces", f"meter_{ctx.device} (copy 1)_{ctx.month}.csv")


def name_non_ascii(ctx: Context) -> BadFile:
    return _renamed(ctx, "name_non_ascii", f"meter_{ctx.device}_Zähler_Straße_{ctx.month}.csv")


def name_with_traversal(ctx: Context) -> BadFile:
    """A legal Linux file name full of Windows path separators: ``meter_..\\..\\..\\etc\\x_<month>.csv``."""
    return _renamed(ctx, "name_with_traversal", f"meter_..\\..\\..\\..\\tmp\\{ctx.device}_{ctx.month}.csv")


def month_after_range(ctx: Context) -> BadFile:
    month = f"2031-{ctx.month[5:]}"  # the delivery's month, 2031: one file name per month of a corpus
    f = _renamed(ctx, "month_after_range", f"meter_{ctx.device}_{month}.csv")
    f.month, f.out_of_range, f.lines = month, True, {}
    return f


def month_before_range(ctx: Context) -> BadFile:
    month = f"1999-{ctx.month[5:]}"  # the delivery's month, 1999
    f = _renamed(ctx, "month_before_range", f"meter_{ctx.device}_{month}.csv")
    f.month, f.out_of_range, f.lines = month, True, {}
    return f


# ------------------------------------------------------------------- real-export dialect and text kinds
def _records(
    ctx: Context, texts: list[str], lines_of: list[Line], *, eol: str = "\n", header: str = HEADER
) -> tuple[bytes, dict[int, Line]]:
    """A file of ``texts`` records (each may span lines) after ``header``, and the truth keyed by the line
    each record starts on."""
    truth, line = {}, 2
    for text, outcome in zip(texts, lines_of, strict=True):
        truth[line] = outcome
        line += text.count("\n") + 1
    return (eol.join([header, *texts]) + eol).encode(), truth


def _some_records(ctx: Context, kind: str, text_of: Callable[[Reading], str], needle: str) -> BadFile:
    """A tenth of the records replaced by ``text_of(reading)`` (which may span lines), each rejected with
    ``needle``; the others accepted."""
    texts, truth = ctx.text_rows(), [Line("ok", r) for r in ctx.readings()]
    for i in ctx.some(0.1):
        texts[i] = text_of(ctx.readings()[i])
        truth[i] = Line("rejected", None, needle)
    data, lines = _records(ctx, texts, truth)
    return BadFile(kind, ctx.name, data, ctx.month, lines)


def quoted_newline_in_field(ctx: Context) -> BadFile:
    """A quoted device id holding a line break (a site name typed into the id field): one record over two
    lines, whose id is not an id — not two rows under made-up ids."""
    return _some_records(
        ctx, "quoted_newline_in_field", lambda r: f'"{r.meter_id}\nsite 2";{r.ts};{r.kwh:.3f}', "does not match the pattern"
    )


def quoted_delimiter_in_field(ctx: Context) -> BadFile:
    """A quoted value holding the delimiter: still three fields, the id is refused by its pattern."""
    return _some_records(
        ctx, "quoted_delimiter_in_field", lambda r: f'"{r.meter_id};old";{r.ts};{r.kwh:.3f}', "does not match the pattern"
    )


def escaped_quotes(ctx: Context) -> BadFile:
    """Every field quoted; some readings carry doubled quotes inside (``"1.2""3"``: the value 1.2"3)."""
    texts = [f'"{r.meter_id}";"{r.ts}";"{r.kwh:.3f}"' for r in ctx.readings()]
    truth = [Line("ok", r) for r in ctx.readings()]
    for i in ctx.some(0.1):
        r = ctx.readings()[i]
        texts[i] = f'"{r.meter_id}";"{r.ts}";"{r.kwh:.3f}""kWh"""'
        truth[i] = Line("rejected", None, f"cannot read '{r.kwh:.3f}\"kWh\"' as double")
    data, lines = _records(ctx, texts, truth)
    return BadFile("escaped_quotes", ctx.name, data, ctx.month, lines)


def unclosed_quote(ctx: Context) -> BadFile:
    """A quote opened and never closed two rows before the end: the rest of the file is one record."""
    texts, truth = ctx.text_rows(), [Line("ok", r) for r in ctx.readings()]
    at = len(texts) - 3
    r = ctx.readings()[at]
    texts[at] = f'"{r.meter_id};{r.ts};{r.kwh:.3f}'
    tail = "\n".join(texts[at:])
    data, lines = _records(ctx, [*texts[:at], tail], [*truth[:at], Line("rejected", None, "unexpected end of data")])
    return BadFile("unclosed_quote", ctx.name, data, ctx.month, lines)


def stray_quote_after_field(ctx: Context) -> BadFile:
    """``"M0001"x;...``: text after a closing quote is malformed; that record only is rejected."""
    return _some_records(ctx, "stray_quote_after_field", lambda r: f'"{r.meter_id}"x;{r.ts};{r.kwh:.3f}', "malformed csv record")


def cr_only_line_endings(ctx: Context) -> BadFile:
    """Classic Mac line endings: a lone carriage return ends each line."""
    return BadFile(
        "cr_only_line_endings", ctx.name, _file(ctx, "", [HEADER, *ctx.text_rows()], eol="\r"), ctx.month, _all_ok(ctx)
    )


def utf16_be_with_bom(ctx: Context) -> BadFile:
    data = codecs.BOM_UTF16_BE + ("\r\n".join([HEADER, *ctx.text_rows()]) + "\r\n").encode("utf-16-be")
    return BadFile("utf16_be_with_bom", ctx.name, data, ctx.month, _all_ok(ctx))


def _control_in_rows(ctx: Context, kind: str, char: str, rows_at: list[int], needle: str) -> BadFile:
    texts, lines = ctx.text_rows(), _all_ok(ctx)
    for i in rows_at:
        r = ctx.readings()[i]
        texts[i] = f"{r.meter_id[:2]}{char}{r.meter_id[2:]};{r.ts};{r.kwh:.3f}"
        lines[2 + i] = Line("rejected", None, needle)
    return BadFile(kind, ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def nul_near_start(ctx: Context) -> BadFile:
    """A NUL byte in the first record (inside the first 8 KiB): that record is rejected, not the file."""
    return _control_in_rows(ctx, "nul_near_start", "\x00", [0], "control character U+0000")


def nul_deep(ctx: Context) -> BadFile:
    """A NUL byte in a late record."""
    return _control_in_rows(ctx, "nul_deep", "\x00", [len(ctx.values) - 2], "control character U+0000")


def control_char_in_value(ctx: Context) -> BadFile:
    """A bell and an escape character inside device ids."""
    picks = ctx.some(0.05)
    return _control_in_rows(ctx, "control_char_in_value", "\x07", picks, "control character U+0007")


def decimal_comma_thousands(ctx: Context) -> BadFile:
    """``1.234,500`` in a source that declares ``.`` decimals without grouping: refused, never read as 1.234."""
    texts, lines = ctx.text_rows(), _all_ok(ctx)
    for i in ctx.some(0.2):
        r = ctx.readings()[i]
        texts[i] = f"{r.meter_id};{r.ts};1.{int(r.kwh * 1000) % 1000:03d},{int(r.kwh * 1000) % 10}00"
        lines[2 + i] = Line("rejected", None, "as double")
    return BadFile("decimal_comma_thousands", ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def scientific_notation(ctx: Context) -> BadFile:
    """Readings in scientific notation (``8.02e-01``): valid numbers, read exactly."""
    texts, lines = ctx.text_rows(), _all_ok(ctx)
    for i in ctx.some(0.3):
        r = ctx.readings()[i]
        text = f"{r.kwh:.6e}"
        texts[i] = f"{r.meter_id};{r.ts};{text}"
        lines[2 + i] = Line("ok", Reading(r.meter_id, r.ts, float(text)))
    return BadFile("scientific_notation", ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def excel_serial_dates(ctx: Context) -> BadFile:
    """Timestamps as spreadsheet serial numbers (days since 1899-12-30): refused with the reason."""
    epoch = datetime(1899, 12, 30, tzinfo=UTC)
    texts, lines = ctx.text_rows(), _all_ok(ctx)
    for i in ctx.some(0.1):
        r, t = ctx.readings()[i], ctx.stamps[i]
        texts[i] = f"{r.meter_id};{(t - epoch).total_seconds() / 86400:.6f};{r.kwh:.3f}"
        lines[2 + i] = Line("rejected", None, "a bare number")
    return BadFile("excel_serial_dates", ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def hour_24(ctx: Context) -> BadFile:
    """``24:00:00`` for the end of a day: refused with the reason rather than read as some other hour."""
    texts, lines = ctx.text_rows(), _all_ok(ctx)
    for i in [j for j, t in enumerate(ctx.stamps) if t.hour == 0][:2]:
        r, t = ctx.readings()[i], ctx.stamps[i]
        texts[i] = f"{r.meter_id};{(t - timedelta(days=1)).strftime('%Y-%m-%d')}T24:00:00Z;{r.kwh:.3f}"
        lines[2 + i] = Line("rejected", None, "hour 24")
    return BadFile("hour_24", ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def leap_second(ctx: Context) -> BadFile:
    """A reading stamped ``23:59:60`` (a leap second): refused with the reason."""
    texts, lines = ctx.text_rows(), _all_ok(ctx)
    i = next(j for j, t in enumerate(ctx.stamps) if t.hour == 23)
    r, t = ctx.readings()[i], ctx.stamps[i]
    texts[i] = f"{r.meter_id};{t.strftime('%Y-%m-%d')}T23:59:60Z;{r.kwh:.3f}"
    lines[2 + i] = Line("rejected", None, "leap second")
    return BadFile("leap_second", ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def header_padded_with_spaces(ctx: Context) -> BadFile:
    """Header names with spaces around them: the names are what is declared, so every row is read."""
    header = " device_id ;  timestamp;reading_kwh  "
    return BadFile("header_padded_with_spaces", ctx.name, _file(ctx, "", [header, *ctx.text_rows()]), ctx.month, _all_ok(ctx))


def huge_header_line(ctx: Context) -> BadFile:
    """A header line of many megabytes: a file-level error of bounded size, every row rejected with it."""
    header = HEADER + ";" + "x" * ctx.huge_line_bytes
    return BadFile(
        "huge_header_line",
        ctx.name,
        _file(ctx, "", [header, *ctx.text_rows()]),
        ctx.month,
        _all_rejected(ctx, "rejected with its file"),
        file_error="does not match the declared columns",
    )


def multi_month_export(ctx: Context) -> BadFile:
    """A file named for this month holding this month's rows and the next month's: the other month's
    rows are refused (this source delivers one month per file), with the month they belong to."""
    nxt = [t + timedelta(days=31) for t in ctx.stamps]
    texts = ctx.text_rows() + [
        f"{r.meter_id};{t.strftime(TS_FORMAT)};{r.kwh:.3f}" for r, t in zip(ctx.readings(), nxt, strict=True)
    ]
    lines = _all_ok(ctx)
    for i in range(len(nxt)):
        lines[2 + len(ctx.values) + i] = Line("rejected", None, "delivered for")
    return BadFile("multi_month_export", ctx.name, _file(ctx, "", [HEADER, *texts]), ctx.month, lines)


def same_bytes_two_names(ctx: Context) -> list[BadFile]:
    """One delivery dropped twice under two names (a retried upload): both land (names differ), and
    every reading of the copy is merged into the first by the exact-duplicate check."""
    data = _file(ctx, "", [HEADER, *ctx.text_rows()])
    copy = f"meter_{ctx.device}_copy_{ctx.month}.csv"
    pairs = {2 + i: i for i in range(len(ctx.values))}
    first = BadFile(
        "same_bytes_two_names",
        ctx.name,
        data,
        ctx.month,
        {n: Line("flagged", r, "duplicate", group=pairs[n]) for n, r in zip(pairs, ctx.readings(), strict=True)},
    )
    second = BadFile(
        "same_bytes_two_names",
        copy,
        data,
        ctx.month,
        {n: Line("flagged", r, "duplicate", group=pairs[n]) for n, r in zip(pairs, ctx.readings(), strict=True)},
    )
    return [first, second]


FILE_KINDS: tuple[FileKind, ...] = (
    FileKind("clean_control", "a good file (control: everything accepted)", clean_control, "none"),
    FileKind("empty", "zero bytes", empty),
    FileKind("whitespace_only", "only blank lines", whitespace_only),
    FileKind("header_only", "the header and no readings", header_only),
    FileKind("truncated_last_line", "the transfer stopped inside the last line", truncated_last_line),
    FileKind("wrong_delimiter", "comma-separated instead of semicolons", wrong_delimiter),
    FileKind("decimal_comma", "1,234 instead of 1.234", decimal_comma),
    FileKind("extra_column", "a column the schema does not declare", extra_column),
    FileKind("extra_field_on_lines", "some lines have a fourth field", extra_field_on_lines),
    FileKind("missing_column", "the reading column is missing", missing_column),
    FileKind("missing_field_on_lines", "some lines lack a field", missing_field_on_lines),
    FileKind("reordered_columns", "columns in another order (header says so)", reordered_columns, "none"),
    FileKind("header_case_changed", "header names in another case", header_case_changed),
    FileKind("non_utf8_bytes", "Latin-1 bytes in some lines", non_utf8_bytes),
    FileKind("latin1_file", "the whole file in Latin-1", latin1_file),
    FileKind("utf16_with_bom", "UTF-16 with a byte order mark, CRLF", utf16_with_bom, "none"),
    FileKind("utf8_bom", "UTF-8 with a byte order mark", utf8_bom, "none"),
    FileKind("crlf", "Windows line endings", crlf, "none"),
    FileKind("mixed_line_endings", "CRLF and LF mixed", mixed_line_endings, "none"),
    FileKind("blank_lines_and_padding", "blank lines, spaces and tabs around values", blank_lines_and_padding, "none"),
    FileKind("second_header_mid_file", "the header repeated mid-file (two files concatenated)", second_header_mid_file),
    FileKind("quoted_fields", "every field in double quotes", quoted_fields, "none"),
    FileKind("timestamps_other_zone", "same instants written at +05:30", timestamps_other_zone, "none"),
    FileKind(
        "dst_local_time_with_offsets", "Seattle local time with offsets across a DST change", dst_local_time_with_offsets, "none"
    ),
    FileKind("timestamps_without_zone", "no zone designator (read as the declared UTC)", timestamps_without_zone, "none"),
    FileKind("timestamps_other_format", "dd/mm/yyyy HH:MM", timestamps_other_format),
    FileKind("timestamps_epoch_seconds", "Unix epoch seconds", timestamps_epoch_seconds),
    FileKind("future_timestamps", "some rows 20 years in the future", future_timestamps),
    FileKind("ancient_timestamps", "some rows in 1972", ancient_timestamps),
    FileKind("file_for_other_month", "named for this month, rows from the previous one", file_for_other_month),
    FileKind("unknown_device_id", "readings of a device no customer owns", unknown_device_id, "quality"),
    FileKind("exact_duplicates", "some rows repeated verbatim", exact_duplicates, "quality"),
    FileKind("conflicting_duplicates", "same meter and hour twice, different readings", conflicting_duplicates, "quality"),
    FileKind("negative_readings", "negative consumption", negative_readings, "quality"),
    FileKind("absurd_readings", "gigawatt-hours in one hour", absurd_readings, "quality"),
    FileKind("wh_instead_of_kwh", "a device reporting Wh", wh_instead_of_kwh, "quality"),
    FileKind("nan_and_inf_text", "NaN, inf, Infinity, 1e400 as readings", nan_and_inf_text),
    FileKind("empty_values", "empty device id or reading", empty_values),
    FileKind("binary_file", "an image uploaded instead of a CSV", binary_file),
    FileKind("gzip_file", "a gzip-compressed CSV with a .csv name", gzip_file),
    FileKind("huge_line", "one line of megabytes", huge_line),
    FileKind("name_with_spaces", "spaces and parentheses in the file name", name_with_spaces, "landing"),
    FileKind("name_non_ascii", "non-ASCII letters in the file name", name_non_ascii, "landing"),
    FileKind("name_with_traversal", "..\\..\\ path separators in the file name", name_with_traversal, "landing"),
    FileKind(
        "month_after_range", "a file for the same month of 2031 (after the partition range)", month_after_range, "collector"
    ),
    FileKind(
        "month_before_range", "a file for the same month of 1999 (before the partition range)", month_before_range, "collector"
    ),
    FileKind("quoted_newline_in_field", "a quoted id holding a line break", quoted_newline_in_field),
    FileKind("quoted_delimiter_in_field", "a quoted id holding the delimiter", quoted_delimiter_in_field),
    FileKind("escaped_quotes", "doubled quotes inside quoted values", escaped_quotes),
    FileKind("unclosed_quote", "a quote never closed near the end", unclosed_quote),
    FileKind("stray_quote_after_field", "text after a closing quote", stray_quote_after_field),
    FileKind("cr_only_line_endings", "a lone CR ends each line", cr_only_line_endings, "none"),
    FileKind("utf16_be_with_bom", "UTF-16 big-endian with a byte order mark", utf16_be_with_bom, "none"),
    FileKind("nul_near_start", "a NUL byte in the first record", nul_near_start),
    FileKind("nul_deep", "a NUL byte in a late record", nul_deep),
    FileKind("control_char_in_value", "a control character inside an id", control_char_in_value),
    FileKind("decimal_comma_thousands", "1.234,500 in a dot-decimal source", decimal_comma_thousands),
    FileKind("scientific_notation", "readings written as 8.02e-01", scientific_notation, "none"),
    FileKind("excel_serial_dates", "timestamps as spreadsheet serial numbers", excel_serial_dates),
    FileKind("hour_24", "24:00:00 for midnight", hour_24),
    FileKind("leap_second", "a reading at 23:59:60", leap_second),
    FileKind("header_padded_with_spaces", "spaces around the header names", header_padded_with_spaces, "none"),
    FileKind("huge_header_line", "a header line of megabytes", huge_header_line),
    FileKind("multi_month_export", "this month's rows and the next month's in one file", multi_month_export),
    FileKind("same_bytes_two_names", "the same bytes dropped under two names", same_bytes_two_names, "quality"),
)


# ------------------------------------------------------------------------------------- source kinds
@dataclass(frozen=True)
class SourceKind:
    """A bad response of a source. ``faults``: what the provider is told to do (see the weather server's
    ``inject``) for the next ``count`` requests; ``survive``: the collector must still land the data."""

    name: str
    channel: Literal["http", "sql"]
    description: str
    faults: dict = field(default_factory=dict)
    survive: bool = False
    #: a substring of the collector's error when it must fail
    needle: str = ""


def source_kinds(retries: int = 3, timeout_s: float = 1.0) -> tuple[SourceKind, ...]:
    """Source faults for a collector configured with ``retries`` and ``timeout_s``: ``retries`` faults in
    a row are survived, one more fails clearly."""
    over = retries + 1
    slow = timeout_s * 2
    return (
        SourceKind("http_500_transient", "http", f"{retries} x HTTP 500, then data", {"fail": retries}, True),
        SourceKind("http_500", "http", f"{over} x HTTP 500 (server down)", {"fail": over}, False, "HTTP 500"),
        SourceKind(
            "http_timeout_transient",
            "http",
            f"{retries} x no answer within the timeout, then data",
            {"delay_s": slow, "delay_n": retries},
            True,
        ),
        SourceKind(
            "http_timeout",
            "http",
            f"{over} x no answer within the timeout",
            {"delay_s": slow, "delay_n": over},
            False,
            "timed out",
        ),
        SourceKind("http_truncated_transient", "http", f"{retries} x body cut in half, then data", {"truncate": retries}, True),
        SourceKind(
            "http_truncated_body",
            "http",
            f"{over} x body cut in half (Content-Length not met)",
            {"truncate": over},
            False,
            "truncated",
        ),
        SourceKind(
            "http_html_200_transient",
            "http",
            f"{retries} x HTML maintenance page with status 200, then data",
            {"html": retries},
            True,
        ),
        SourceKind("http_html_200", "http", f"{over} x HTML maintenance page with status 200", {"html": over}, False, "HTML"),
        SourceKind("http_not_found", "http", "a month the provider does not have (404)", {"month": "2031-01"}, False, "404"),
        SourceKind(
            "http_connection_refused", "http", "nothing listens on the port", {"port": "closed"}, False, "Connection refused"
        ),
        SourceKind("db_down", "sql", "the database server does not answer", {"url": "unreachable"}, False, "unreachable"),
        SourceKind("db_missing_file", "sql", "the SQLite file does not exist", {"url": "missing_file"}, False, "does not exist"),
        SourceKind("db_missing_table", "sql", "the query's table does not exist", {"url": "empty_db"}, False, "query failed"),
    )


SOURCE_KINDS = source_kinds()


# --------------------------------------------------------------------------------------- generation
def clean_month(device_index: int, month: str, days: list[int] | None, seed: int) -> tuple[list[datetime], list[float]]:
    """Hourly UTC stamps and clean readings of a simulated meter for ``days`` of ``month``."""
    world = MeterWorld(WorldConfig(meters=device_index, fault_rate=0.0, seed=seed), weather=_weather())
    building = world.buildings[device_index - 1]
    rng = np.random.default_rng([seed, int(month.replace("-", "")), device_index])
    stamps, values, _ = world.month_rows(building, month, rng)
    keep = [i for i, t in enumerate(stamps) if days is None or t.day in days]
    return [stamps[i].to_pydatetime().astimezone(UTC) for i in keep], [float(values[i]) for i in keep]


_WEATHER: pd.DataFrame | None = None


def _weather() -> pd.DataFrame:
    global _WEATHER
    if _WEATHER is None:
        from lakehouse.sim.world import seattle_weather

        _WEATHER = seattle_weather()
    return _WEATHER


@dataclass
class Corpus:
    files: list[BadFile]
    months: list[str]

    def by_kind(self) -> dict[str, list[BadFile]]:
        out: dict[str, list[BadFile]] = {}
        for f in self.files:
            out.setdefault(f.kind, []).append(f)
        return out

    def write(self, out: Path) -> Path:
        """Files into ``out/inbox/meter_readings``, the truth into ``out/truth/corpus.json``; the inbox."""
        inbox = out / "inbox" / "meter_readings"
        inbox.mkdir(parents=True, exist_ok=True)
        for f in self.files:
            tmp = inbox / f".{len(f.name)}.part"
            tmp.write_bytes(f.data)
            tmp.rename(inbox / f.name)  # devices drop complete files only
        truth = out / "truth"
        truth.mkdir(parents=True, exist_ok=True)
        (truth / "corpus.json").write_text(
            json.dumps(
                {
                    "months": self.months,
                    "files": [f.truth() for f in self.files],
                    "kinds": {k.name: {"description": k.description, "caught_by": k.caught_by} for k in FILE_KINDS},
                    "source_kinds": [asdict(k) for k in SOURCE_KINDS],
                },
                indent=1,
                ensure_ascii=False,
            )
        )
        return inbox


def build(
    months: list[str],
    *,
    days: list[int] | None = None,
    kinds: list[str] | None = None,
    seed: int = 11,
    huge_line_bytes: int = 1 << 20,
) -> Corpus:
    """One bad file per kind and month; kind ``k`` (1-based) uses device ``M{k:04d}`` (``days``: the days of
    each month to include, all when ``None``)."""
    selected = [k for k in FILE_KINDS if kinds is None or k.name in kinds]
    files: list[BadFile] = []
    for month in months:
        for index, kind in enumerate(selected, 1):
            device = f"M{index:04d}"
            stamps, values = clean_month(index, month, days, seed)
            rng = np.random.default_rng([seed, int(month.replace("-", "")), index, 7])
            ctx = Context(device, month, stamps, values, rng, huge_line_bytes)
            made = kind.make(ctx)
            for bad in made if isinstance(made, list) else [made]:
                if bad.kind != kind.name:
                    raise AssertionError(f"{kind.name} produced {bad.kind}")
                files.append(bad)
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise AssertionError("two corpus files share a name")
    return Corpus(files, months)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.sim.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--months", default="2012-11", help="comma-separated YYYY-MM")
    parser.add_argument("--days", default="", help="comma-separated days of the month (default: all)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    days = [int(d) for d in args.days.split(",") if d] or None
    corpus = build(args.months.split(","), days=days, seed=args.seed)
    inbox = corpus.write(args.out)
    print(
        f"{len(corpus.files)} bad files of {len(FILE_KINDS)} kinds -> {inbox}; "
        f"{len(SOURCE_KINDS)} source fault kinds in truth/corpus.json",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
