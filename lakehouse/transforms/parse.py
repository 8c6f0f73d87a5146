"""A delivery → rows of strings, then strings → the canonical typed table. Nothing is dropped.

Parsing (:func:`parse_file`: csv with a real dialect, JSON lines, JSON documents, Parquet, any of them
gzip-compressed) runs in Spark's tasks (:func:`lakehouse.io.formatting.read_raw`) so every row keeps its
file name and line; a record that cannot be read becomes a row with ``_error`` set and its text in ``_raw``.
Casting (:func:`cast_checked`) accepts each value only in its declared form (ISO dates and times, numbers
in the source's locale, strings matching their pattern) and rejects the rest with a message that names
the column, the value and why.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from lakehouse.specs.models import ColumnSpec, FormatSpec, SourceSpec
from lakehouse.transforms.decode import Payload, Unreadable, bounded, decode_text, decompress, invalid_text

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

FILE_COL = "_source_file"
LINE_COL = "_source_line"
RAW_COL = "_raw"
ERROR_COL = "_error"
LINEAGE_COLUMNS = (FILE_COL, LINE_COL)


def raw_schema(raw_names: list[str]) -> pa.Schema:
    return pa.schema(
        [pa.field(n, pa.string()) for n in raw_names]
        + [
            pa.field(FILE_COL, pa.string()),
            pa.field(LINE_COL, pa.int64()),
            pa.field(RAW_COL, pa.string()),
            pa.field(ERROR_COL, pa.string()),
        ]
    )


#: the longest raw text kept in a quarantine record (a huge record is cut, its line number stays)
MAX_RAW_CHARS = 2000
#: the longest field Python's csv reader accepts (a quote never closed takes the rest of the file into one)
MAX_FIELD_CHARS = 1 << 30


#: control bytes (which reject a record, or are whitespace ``str.strip`` removes) and DEL: a file holding none
#: of them, and no space at a value's edge (:func:`_space_at_an_edge`), needs no stripping, has no
#: blank-looking lines and nothing to reject for its bytes
_NOT_CLEAN = bytes(range(0x20)).replace(b"\n", b"") + b"\x7f"
_FAST_ENCODINGS = ("utf8", "utf8sig", "ascii", "usascii")


def clean_layout(data: bytes, fmt: FormatSpec, raw_names: Sequence[str]) -> tuple[list[str], int] | None:
    """A clean file's column names in file order and the bytes its header takes; ``None`` when the file
    needs the full parser.

    Clean means: an uncompressed csv in ASCII, every line terminated by ``\n``, no blank line, no control
    byte (tabs included), a space only inside a value (none next to a delimiter or a line's end: the
    parser trims values), no quote or escape character, a header naming exactly the declared
    columns (once each), no repeated header, at least one data line. On such a file the parser
    (:func:`parse_file`) would emit one row per line, values as written, line ``i + 2`` (``i + 1`` without
    a header), no ``_raw``, no ``_error`` — which :func:`read_clean` returns, many times faster, when every
    line also has the declared number of fields. Anything else goes to the parser, so rows, line numbers
    and quarantine messages are the same on both paths.
    """
    if (
        fmt.kind != "csv"
        or fmt.compression != "none"
        or not fmt.delimiter.isascii()
        or fmt.encoding.lower().replace("-", "").replace("_", "") not in _FAST_ENCODINGS
        or not data.endswith(b"\n")
        or data.startswith(b"\n")
        or b"\n\n" in data
        or not data.isascii()
        or len(data.translate(None, _NOT_CLEAN)) != len(data)
        or _space_at_an_edge(data, fmt.delimiter)
        or any(c is not None and c.encode() in data for c in (fmt.quote, fmt.escape))
    ):
        return None
    if not fmt.header:
        return list(raw_names), 0
    end = data.index(b"\n")
    first = data[:end]
    header = first.decode("ascii").split(fmt.delimiter)
    if len(header) != len(raw_names) or set(header) != set(raw_names) or (b"\n" + first + b"\n") in data:
        return None
    if end + 1 == len(data):
        return None  # header only: the full parser reports it
    return header, end + 1


def _space_at_an_edge(data: bytes, delimiter: str) -> bool:
    """Whether a value of ``data`` may start or end with a space (what the parser would trim)."""
    d = delimiter.encode()
    return data.startswith(b" ") or any(edge in data for edge in (b" " + d, d + b" ", b" \n", b"\n "))


def read_clean(
    files: Sequence[tuple[str, bytes]], names: Sequence[str], fmt: FormatSpec, raw_names: Sequence[str]
) -> pa.Table | None:
    """The rows of clean files (``(name, body)``: the bytes after the header, see :func:`clean_layout`)
    whose columns stand in the same order ``names``, read by one pyarrow CSV call; ``None`` when a line has
    another number of fields (pyarrow refuses the read) — then each file must be taken on its own."""
    import numpy as np
    import pyarrow.csv as pcsv

    counts = np.array([body.count(b"\n") for _, body in files], dtype=np.int64)
    if not len(files) or not counts.all():
        return None
    data = b"".join(body for _, body in files)
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=list(names), use_threads=False, block_size=max(1 << 20, len(data) + 1)),
            parse_options=pcsv.ParseOptions(
                delimiter=fmt.delimiter,
                quote_char=False,
                double_quote=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None  # a line with the wrong number of fields, or anything else pyarrow refuses
    n = table.num_rows
    if n != int(counts.sum()):
        return None
    owner = np.repeat(np.arange(len(files)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    first_line = 2 if fmt.header else 1
    arrays = [table.column(c).combine_chunks() for c in raw_names] + [
        pa.array([name for name, _ in files], pa.string()).take(pa.array(owner)),
        pa.array(np.arange(n, dtype=np.int64) - starts + first_line),
        pa.nulls(n, pa.string()),
        pa.nulls(n, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=raw_schema(list(raw_names)))


def _parse_fast(name: str, data: bytes, fmt: FormatSpec, raw_names: list[str]) -> pa.Table | None:
    """The rows of a clean file (:func:`clean_layout`), read by pyarrow; ``None`` when the file needs the
    full parser."""
    layout = clean_layout(data, fmt, raw_names)
    if layout is None:
        return None
    names, header_bytes = layout
    return read_clean([(name, data[header_bytes:])], names, fmt, raw_names)


class _Rows:
    """The rows of one file as the parser emits them: raw string values, lineage, raw text, error."""

    def __init__(self, name: str, raw_names: Sequence[str]) -> None:
        self.name, self.raw_names = name, list(raw_names)
        self.cols: dict[str, list[str | None]] = {n: [] for n in self.raw_names}
        self.lines: list[int] = []
        self.raws: list[str | None] = []
        self.errors: list[str | None] = []

    def ok(self, line: int, values: Sequence[str | None]) -> None:
        for n, v in zip(self.raw_names, values, strict=True):
            self.cols[n].append(v)
        self._lineage(line, None, None)

    def reject(self, line: int, raw: str | None, error: str) -> None:
        for n in self.raw_names:
            self.cols[n].append(None)
        self._lineage(line, raw, error)

    def _lineage(self, line: int, raw: str | None, error: str | None) -> None:
        if raw is not None:
            # bytes invalid in the encoding (lone surrogates) are shown as \xNN
            raw = bounded(
                raw[: MAX_RAW_CHARS * 2].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), MAX_RAW_CHARS
            )
        self.lines.append(line)
        self.raws.append(raw)
        self.errors.append(None if error is None else bounded(error))

    @property
    def records(self) -> int:
        return sum(1 for n in self.lines if n > 0)

    def table(self) -> pa.Table:
        n = len(self.lines)
        arrays = [pa.array(self.cols[c], pa.string()) for c in self.raw_names] + [
            pa.array([self.name] * n, pa.string()),
            pa.array(self.lines, pa.int64()),
            pa.array(self.raws, pa.string()),
            pa.array(self.errors, pa.string()),
        ]
        return pa.Table.from_arrays(arrays, schema=raw_schema(self.raw_names))


def parse_file(name: str, data: bytes, fmt: FormatSpec, raw_names: list[str]) -> pa.Table:
    """Parse one delivery into string columns ``raw_names`` plus lineage (file, line) and ``_raw`` /
    ``_error``. Nothing is dropped: every record becomes exactly one row, parsed or rejected.

    ``_source_line`` is the line a record starts on (1-based, the header counts) for ``csv`` and
    ``jsonl``, and the record's position (1-based) in a ``json`` array or a ``parquet`` file. File-level
    findings (empty, header only, a header that does not fit) are rows with line 0. A file that cannot
    be read at all (binary, invalid gzip, invalid JSON, not Parquet) is a line-0 row saying why, and each
    of its non-blank lines is rejected with it — the count the landing manifest records for it
    (:func:`lakehouse.transforms.records.count_records`).
    """
    if fmt.kind == "csv" and fmt.compression == "none":
        fast = _parse_fast(name, data, fmt, raw_names)
        if fast is not None:
            return fast
    rows = _Rows(name, raw_names)
    try:
        if fmt.kind == "parquet":
            _read_parquet(rows, decompress(data, fmt), raw_names)
        else:
            payload = decode_text(data, fmt)
            {"csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json}[fmt.kind](rows, payload, fmt, raw_names)
    except Unreadable as exc:
        rows = _Rows(name, raw_names)
        _reject_unreadable(rows, data, f"{name}: {exc}")
    return rows.table()


def _reject_unreadable(rows: _Rows, data: bytes, error: str) -> None:
    rows.reject(0, None, error)
    n = 0
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        n += 1
        if line.strip():
            rows.reject(n, line[:MAX_RAW_CHARS].decode("utf-8", "backslashreplace"), f"rejected with its file: {error}")


def _csv_reader(lines: Iterator[str], fmt: FormatSpec):
    csv.field_size_limit(MAX_FIELD_CHARS)
    return csv.reader(
        lines,
        delimiter=fmt.delimiter,
        quotechar=fmt.quote or '"',
        quoting=csv.QUOTE_NONE if fmt.quote is None else csv.QUOTE_MINIMAL,
        escapechar=fmt.escape,
        doublequote=fmt.escape is None,
        strict=True,
    )


def csv_records(text: str, fmt: FormatSpec) -> Iterator[tuple[int, list[str] | None, str, str | None]]:
    """The non-blank records of csv ``text``: (first line, fields or ``None``, raw text, error).

    Python's ``csv`` reads the dialect (quotes, doubled quotes, escapes; ``\\n``, ``\\r\\n`` and a lone ``\\r``
    end a line; line breaks inside quotes belong to the field). A record it cannot read (an unclosed or
    misplaced quote) comes back with its error; the reader goes on with the next line. The last record
    must end with a line break: without one the transfer may have stopped inside it.
    """
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = _csv_reader(feed(), fmt)
    line = 0
    while True:
        consumed.clear()
        try:
            fields, error = next(reader), None
        except StopIteration:
            return
        except csv.Error as exc:
            fields, error = None, f"malformed csv record: {exc}"
        raw = "".join(consumed)
        start = line + 1
        line += len(consumed)
        if not raw.strip():
            continue
        if error is None and not raw.endswith(("\n", "\r")):
            fields, error = None, f"last line {line} has no line terminator: the file looks truncated"
        yield start, fields, raw.rstrip("\r\n"), error


def _names(names: list[str], limit: int = 300) -> str:
    """Names as a message shows them: each cut to 40 characters, the list to ``limit``."""
    return bounded(repr([n if len(n) <= 40 else n[:40] + "…" for n in names]), limit)


def _same_name(a: str, b: str, fmt: FormatSpec) -> bool:
    return a == b if fmt.header_match == "exact" else a.casefold() == b.casefold()


def _read_csv(rows: _Rows, payload: Payload, fmt: FormatSpec, raw_names: list[str]) -> None:
    records = csv_records(payload.text or "", fmt)
    header_map: list[int] | None = list(range(len(raw_names)))
    width = len(raw_names)
    header: list[str] | None = None
    file_error: str | None = None
    if fmt.header:
        first = next(records, None)
        if first is None:
            rows.reject(0, None, f"{rows.name}: empty file, expected a header line")
            return
        line, fields, raw, error = first
        error = error or invalid_text(raw, payload.encoding)
        if error:
            file_error = f"header line {line}: {error}"
        else:
            header = [h.strip() for h in fields or []]
            header_map = [next((i for i, h in enumerate(header) if _same_name(h, n, fmt)), -1) for n in raw_names]
            missing = [n for n, i in zip(raw_names, header_map, strict=True) if i < 0]
            unknown = [h for h in header if not any(_same_name(h, n, fmt) for n in raw_names)]
            repeated = sorted({h for h in header if sum(_same_name(h, o, fmt) for o in header) > 1})
            if missing or unknown or repeated:
                file_error = (
                    f"header line {line} does not match the declared columns {raw_names}"
                    f" with delimiter {fmt.delimiter!r} ({fmt.header_match} names)"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {_names(unknown)}" if unknown else "")
                    + (f"; repeated {_names(repeated)}" if repeated else "")
                    + f"; the header reads {_names(header)}"
                )
            width = len(header)
        if file_error:
            rows.reject(0, raw, f"{rows.name}: {file_error}")
            header_map = None
    for line, fields, raw, error in records:
        if error is None:
            error = invalid_text(raw, payload.encoding)
        if error:
            rows.reject(line, raw, error)
        elif header_map is None:
            rows.reject(line, raw, f"rejected with its file: {file_error}")
        elif header is not None and [f.strip() for f in fields or []] == header:
            rows.reject(line, raw, "repeated header line")
        elif len(fields or []) != width:
            detail = f" ({len(raw):,} characters)" if len(raw) > MAX_RAW_CHARS else ""
            rows.reject(line, raw, f"expected {width} fields separated by {fmt.delimiter!r}, got {len(fields or [])}{detail}")
        else:
            rows.ok(line, [fields[i].strip() for i in header_map])  # type: ignore[index]
    if header_map is not None and not rows.records:
        rows.reject(
            0, None, f"{rows.name}: header only, no data lines" if fmt.header else f"{rows.name}: empty file, no data lines"
        )


def _json_value(record: dict, path: str) -> tuple[bool, object]:
    """The value at ``path`` in ``record``: the key itself, else a dotted path into nested objects."""
    if path in record:
        return True, record[path]
    node: object = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _json_text(value: object) -> str | None:
    """A JSON scalar as the text the canonical cast reads (``ValueError`` for objects and arrays)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a value, got a JSON {'object' if isinstance(value, dict) else 'array'}")


def _json_record(rows: _Rows, line: int, record: object, raw: str, encoding: str, raw_names: list[str]) -> None:
    if not isinstance(record, dict):
        rows.reject(line, raw, f"record is a JSON {type(record).__name__}, expected an object")
        return
    values = []
    for n in raw_names:
        _, value = _json_value(record, n)
        try:
            text = _json_text(value)
        except ValueError as exc:
            rows.reject(line, raw, f"column {n}: {exc}")
            return
        problem = invalid_text(text, encoding) if text is not None else None
        if problem:
            rows.reject(line, raw, f"column {n}: {problem}")
            return
        values.append(text)
    rows.ok(line, values)


def _read_jsonl(rows: _Rows, payload: Payload, fmt: FormatSpec, raw_names: list[str]) -> None:
    for i, raw in enumerate(io.StringIO(payload.text or "", newline=""), start=1):
        body = raw.rstrip("\r\n")
        if not body.strip():
            continue
        problem = invalid_text(body, payload.encoding)
        if problem:
            rows.reject(i, body, problem)
            continue
        if not raw.endswith(("\n", "\r")):
            rows.reject(i, body, f"last line {i} has no line terminator: the file looks truncated")
            continue
        try:
            record = json.loads(body)
        except json.JSONDecodeError as exc:
            rows.reject(i, body, f"invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        _json_record(rows, i, record, body, payload.encoding, raw_names)
    if not rows.records:
        rows.reject(0, None, f"{rows.name}: empty file, no records")


def json_records(payload: Payload, fmt: FormatSpec) -> list:
    """The records of a ``json`` document: the array itself, or the one at ``records_path``."""
    problem = invalid_text(payload.text or "", payload.encoding)
    if problem and "control character U+000" not in problem:  # raw control characters are invalid JSON anyway
        raise Unreadable(problem)
    try:
        doc = json.loads(payload.text or "")
    except json.JSONDecodeError as exc:
        raise Unreadable(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if fmt.records_path:
        for part in fmt.records_path.split("."):
            if not isinstance(doc, dict) or part not in doc:
                raise Unreadable(f"no records at {fmt.records_path!r} (no key {part!r})")
            doc = doc[part]
    if not isinstance(doc, list):
        where = f"at {fmt.records_path!r}" if fmt.records_path else "at the top level"
        raise Unreadable(f"expected an array of records {where}, got a JSON {type(doc).__name__}")
    return doc


def _read_json(rows: _Rows, payload: Payload, fmt: FormatSpec, raw_names: list[str]) -> None:
    for i, record in enumerate(json_records(payload, fmt), start=1):
        raw = json.dumps(record, ensure_ascii=False)
        _json_record(rows, i, record, raw, payload.encoding, raw_names)
    if not rows.records:
        rows.reject(0, None, f"{rows.name}: no records")


def parquet_table(data: bytes) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise Unreadable(f"not a readable Parquet file: {exc}") from None


def _read_parquet(rows: _Rows, data: bytes, raw_names: list[str]) -> None:
    import pyarrow.compute as pc

    table = parquet_table(data)
    missing = [n for n in raw_names if n not in table.column_names]
    nested = [n for n in raw_names if n in table.column_names and pa.types.is_nested(table.schema.field(n).type)]
    if missing or nested:
        error = (
            f"columns {table.column_names} do not hold the declared {raw_names}"
            + (f"; missing {missing}" if missing else "")
            + (f"; not scalar {nested}" if nested else "")
        )
        rows.reject(0, None, f"{rows.name}: {error}")
        for i in range(table.num_rows):
            rows.reject(i + 1, None, f"rejected with its file: {error}")
        return
    texts = []
    for n in raw_names:
        column = table.column(n)
        if pa.types.is_timestamp(column.type):
            column = pc.strftime(column, "%Y-%m-%dT%H:%M:%S" + ("Z" if column.type.tz else ""))  # %S has the fraction
        elif pa.types.is_floating(column.type):
            column = pa.array([None if v is None else repr(v) for v in column.to_pylist()], pa.string())
        texts.append(pc.cast(column, pa.string()).to_pylist())
    for i, values in enumerate(zip(*texts, strict=True), start=1):
        problem = next(
            (f"column {n}: {p}" for n, v in zip(raw_names, values, strict=True) if v and (p := invalid_text(v, "utf-8"))), None
        )
        if problem:
            rows.reject(i, json.dumps(dict(zip(raw_names, values, strict=True)), ensure_ascii=False), problem)
        else:
            rows.ok(i, values)
    if not rows.records:
        rows.reject(0, None, f"{rows.name}: no rows")


def lineage_name(path: str, spans_months: bool) -> str:
    """The ``_source_file`` of a landed file: its name, or ``<landing month>/<name>`` for a source whose
    deliveries span months (one month's rows may then come from files landed under other months)."""
    parts = path.rstrip("/").split("/")
    return "/".join(parts[-2:]) if spans_months else parts[-1]


#: the forms a value of each type must take when the column declares no ``format`` (Java regex, whole
#: value): Spark's own casts also read ``12:00`` as today's noon, ``41275`` as the year 41275, ``0x1p3``
#: as 8.0 and a timestamp as a date, none of which a delivery means
SHAPES = {
    "int": r"^[+-]?[0-9]+$",
    "bigint": r"^[+-]?[0-9]+$",
    "double": r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$",
    "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
    "timestamp": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$",
    "boolean": r"^(?i)(true|false)$",
}
#: why a value of a date/time column was refused, when the reason is a common one (checked in order)
_TIME_HINTS = (
    (r"^[+-]?[0-9]+(\.[0-9]+)?$", "a bare number (an Excel serial date or epoch seconds?): declare the column's format"),
    (r"[T ]24:", "hour 24 is not a time of day: write 00:00 of the next day"),
    (r":60(\.[0-9]*)?(Z|[+-]|$)", "a leap second (:60) cannot be stored"),
)


def _number_text(text: Column, fmt: FormatSpec) -> tuple[Column, Column | None]:
    """A number written in the source's locale as Spark reads it (``1.234,5`` → ``1234.5``), and why a
    value does not fit the locale (``None`` for the default ``.`` without grouping)."""
    import re

    from pyspark.sql import functions as F

    if fmt.decimal == "." and fmt.thousands is None:
        return text, None
    d = re.escape(fmt.decimal)
    exp = r"([eE][+-]?[0-9]+)?"
    forms = [rf"^[+-]?([0-9]+({d}[0-9]*)?|{d}[0-9]+){exp}$"]
    if fmt.thousands is not None:
        forms.append(rf"^[+-]?[0-9]{{1,3}}({re.escape(fmt.thousands)}[0-9]{{3}})+({d}[0-9]*)?{exp}$")
    fits = F.lit(False)
    for form in forms:
        fits = fits | text.rlike(form)
    plain = text if fmt.thousands is None else F.replace(text, F.lit(fmt.thousands), F.lit(""))
    if fmt.decimal != ".":
        plain = F.replace(plain, F.lit(fmt.decimal), F.lit("."))
    locale = f"decimal {fmt.decimal!r}" + (
        f" and thousands {fmt.thousands!r}" if fmt.thousands else " and no thousands separator"
    )
    stray = [c for c in ".,' _" if c not in (fmt.decimal, fmt.thousands)]
    reason = F.when(
        _contains_any(text, stray),
        F.lit(f"ambiguous under {locale}: a separator the locale does not declare"),
    ).otherwise(F.lit(f"not a number under {locale}"))
    return F.when(fits, plain), F.when(~fits, reason)


def _contains_any(text: Column, chars: list[str]) -> Column:
    from pyspark.sql import functions as F

    out = F.lit(False)
    for c in chars:
        out = out | F.contains(text, F.lit(c))
    return out


def _typed(column: ColumnSpec, fmt: FormatSpec) -> tuple[Column, Column]:
    """Spark expressions for ``column``: the raw string cast to ``column.type`` (NULL when it cannot be
    read), and why it could not (NULL when the value is empty or was read)."""
    from pyspark.sql import functions as F

    raw = F.col(f"`{column.raw_name}`")
    text = F.when(F.trim(raw) == "", F.lit(None)).otherwise(F.trim(raw))
    kind = column.type
    hint: Column | None = None
    if kind in ("date", "timestamp") and column.format:
        value = F.try_to_timestamp(text, F.lit(column.format)) if kind == "timestamp" else F.try_to_date(text, column.format)
    else:
        source_text = text
        if kind in ("int", "bigint", "double"):
            text, hint = _number_text(text, fmt)
        shaped = text if kind == "string" else F.when(text.rlike(SHAPES[kind]), text)
        if kind == "double":
            value = shaped.try_cast("double")
            # NaN and infinities are not readings
            value = F.when(F.isnan(value) | (F.abs(value) == float("inf")), F.lit(None)).otherwise(value)
        elif kind == "boolean":
            value = F.lower(shaped).try_cast("boolean")
        else:
            value = shaped.try_cast(kind)
        if kind in ("date", "timestamp"):
            hint = F.lit(None)
            for pattern, why in reversed(_TIME_HINTS):
                hint = F.when(source_text.rlike(pattern), F.lit(why)).otherwise(hint)
        text = source_text
    message = F.format_string(f"column {column.name}: cannot read '%s' as {kind}", F.substring(text, 1, 200))
    if hint is not None:
        message = F.when(hint.isNotNull(), F.concat(message, F.lit(" ("), hint, F.lit(")"))).otherwise(message)
    problem = F.when(text.isNotNull() & value.isNull(), message)
    if column.pattern is not None:
        mismatch = value.isNotNull() & ~value.rlike(f"^(?:{column.pattern})$")
        problem = F.when(
            mismatch,
            F.format_string(
                f"column {column.name}: '%s' does not match the pattern %s", F.substring(text, 1, 200), F.lit(column.pattern)
            ),
        ).otherwise(problem)
        value = F.when(~mismatch, value)
    return value, problem


def _month_problem(
    source: SourceSpec, row_month: Column, delivered: Column, months: tuple[str, str | None] | None
) -> Column | None:
    """Why a row's time column (``row_month``) places it where it may not be: outside the source's
    ``months`` for deliveries that span months, else in another month than the one ``delivered``."""
    from pyspark.sql import functions as F

    part_col = source.partitioning.column or ""
    if source.spans_months:
        start, end = months if months is not None else (None, None)
        outside = (row_month < F.lit(start)) if start else F.lit(False)
        if end:
            outside = outside | (row_month >= F.lit(end))
        return F.when(
            F.col(part_col).isNotNull() & outside,
            F.format_string(
                f"{part_col} %s belongs to month %s, outside the source's months {start}..{end or ''}",
                F.col(part_col).cast("string"),
                row_month,
            ),
        )
    if source.partitioning.kind == "time_column":
        return F.when(
            F.col(part_col).isNotNull() & (row_month != delivered),
            F.format_string(
                f"{part_col} %s belongs to month %s, delivered for %s", F.col(part_col).cast("string"), row_month, delivered
            ),
        )
    return None


def cast_checked(
    raw: DataFrame, source: SourceSpec, month: str | Column, months: tuple[str, str | None] | None = None
) -> DataFrame:
    """Every parsed row, cast: the canonical columns, lineage, ``month``, and ``error`` / ``record`` (the
    cause and the row as received), both NULL on rows that are accepted.

    ``month`` is the month the files were delivered for (``YYYY-MM``), or a column of ``raw`` giving it per
    row when several months are cast at once (see :func:`lakehouse.io.formatting.read_raw`'s ``delivered``).

    One frame for both outcomes, so a caller can compute it in one Spark job (no cache, no second pass
    over the files) and split it on ``error``.
    A row is rejected when it could not be parsed, a value does not cast to its declared type, a
    non-nullable value is empty, or its time column places it in another month than the one delivered.

    A source whose deliveries span months (``spans_months``) instead keeps the rows its time column
    places in ``month`` and the rejected rows of the files landed under ``month``; a row of a month outside
    ``months`` (the source's partition range: start, end exclusive) is rejected.
    """
    from pyspark.sql import functions as F

    typed_columns = {c.name: _typed(c, source.format) for c in source.columns}
    typed = raw.select(
        *[value.alias(name) for name, (value, _) in typed_columns.items()],
        *[problem.alias(f"__why_{name}") for name, (_, problem) in typed_columns.items()],
        *[F.col(f"`{c.raw_name}`").alias(f"__raw_{c.name}") for c in source.columns],
        FILE_COL,
        LINE_COL,
        RAW_COL,
        ERROR_COL,
        (F.lit(month) if isinstance(month, str) else month).alias("__delivered"),
    )
    delivered = F.col("__delivered")
    problems = [F.col(ERROR_COL)]
    for c in source.columns:
        why = F.col(f"__why_{c.name}")
        problems.append(why)
        if not c.nullable:
            problems.append(
                F.when(F.col(ERROR_COL).isNull() & why.isNull() & F.col(c.name).isNull(), F.lit(f"column {c.name}: empty"))
            )
    part_col = source.partitioning.column or ""
    row_month = F.date_format(F.col(part_col), "yyyy-MM") if part_col else None
    if row_month is not None and (misplaced := _month_problem(source, row_month, delivered, months)) is not None:
        problems.append(misplaced)
    checked = typed.withColumn("__problem", F.concat_ws("; ", *problems))
    if source.spans_months and row_month is not None:
        # a row is this month's when its time column says so; what cannot be placed (rejected rows, file
        # findings) belongs to the month its file landed under, so each is counted once
        landed_under = F.substring(F.col(FILE_COL), 1, 7)
        checked = checked.filter(F.when(F.col("__problem") == "", row_month == delivered).otherwise(landed_under == delivered))
    record = F.to_json(F.struct(*[F.col(f"__raw_{c.name}").alias(c.raw_name) for c in source.columns]))
    rejected = F.col("__problem") != ""
    return checked.select(
        *[c.name for c in source.columns],
        FILE_COL,
        LINE_COL,
        delivered.alias("month"),
        F.when(rejected, F.col("__problem")).alias("error"),
        F.when(rejected, F.coalesce(F.col(RAW_COL), record)).alias("record"),
    )
