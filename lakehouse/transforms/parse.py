"""Raw text → rows of strings, then strings → the canonical typed table. Nothing is dropped.

Parsing happens on Spark executors (``binaryFile`` + ``mapInArrow``) so every row keeps its file name
and line number; a line that cannot be parsed becomes a row with ``_error`` set and its text in ``_raw``.
Casting (:func:`cast_to_canonical`) splits the rows into the formatted table and rejected rows, each
rejected row carrying a message that names the column, the value and the expected type.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from lakehouse.specs.models import ColumnSpec, FormatSpec, SourceSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

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


GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
#: like git: NUL bytes in the first 8 KiB mark a binary file (text never holds NUL)
BINARY_SNIFF_BYTES = 8192
#: the longest raw text kept in a quarantine record (a huge line is cut, its line number stays)
MAX_RAW_CHARS = 2000


def sniff(data: bytes) -> tuple[bytes, str | None]:
    """The bytes to split into lines, and why the file is not text at all (``None`` when it is).

    A UTF-16 file that says so with its byte order mark is transcoded to UTF-8; gzip and other binary
    content (NUL bytes near the start) are file-level problems. :func:`split_lines` and the landing
    manifest's row count use the same rules, so "rows landed" and "rows parsed" always agree.
    """
    if data[:2] in UTF16_BOMS:
        try:
            return data.decode("utf-16").encode("utf-8"), None
        except UnicodeDecodeError as exc:
            return b"", f"starts with a UTF-16 byte order mark but is not valid UTF-16 (byte {exc.start})"
    if data.startswith(GZIP_MAGIC):
        return b"", "gzip-compressed data, expected text (decompress before delivery)"
    nul = data.find(b"\x00", 0, BINARY_SNIFF_BYTES)
    if nul >= 0:
        return b"", f"binary data (NUL byte at offset {nul}), expected text"
    return data, None


def split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Lines split on ``\\n`` (a trailing ``\\r`` stays), and whether the last line lacks its terminator."""
    lines = data.split(b"\n")
    unterminated = bool(lines) and lines[-1] != b""
    if not unterminated:
        lines.pop()
    return lines, unterminated


def count_data_lines(data: bytes, header: bool) -> int:
    """The rows :func:`parse_text` reports with a line number (``> 0``) for ``data``: non-blank lines,
    minus the header. The landing manifest records this number."""
    text, problem = sniff(data)
    if problem:
        return 0
    lines, _ = split_lines(text)
    nonblank = sum(1 for b in lines if b.strip())
    return max(0, nonblank - (1 if header else 0))


#: bytes that Python's ``str.strip`` / ``bytes.strip`` remove (besides the line feed): a file holding none
#: of them needs no stripping and has no blank-looking lines, so the fast path gives the same rows
_STRIP_BYTES = (b" ", b"\t", b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\x1f", b"\x00")
_FAST_ENCODINGS = ("utf8", "utf8sig", "ascii", "usascii")


def clean_layout(data: bytes, fmt: FormatSpec, raw_names: Sequence[str]) -> tuple[list[str], int] | None:
    """A clean file's column names in file order and the bytes its header takes; ``None`` when the file
    needs the line parser.

    Clean means: ASCII, every line terminated by ``\n``, no blank line, no whitespace or control byte to
    strip, a header naming exactly the declared columns (once each), no repeated header, at least one data
    line. On such a file the line parser would emit one row per data line, values as written, line
    ``i + 2`` (``i + 1`` without a header), no ``_raw``, no ``_error`` — which :func:`read_clean` returns,
    ~20× faster, when every line also has the declared number of fields. Anything else (and every file
    with a problem to report) goes to the line parser, so line numbers and quarantine messages are unchanged.
    """
    if (
        len(fmt.delimiter) != 1
        or not fmt.delimiter.isascii()
        or fmt.encoding.lower().replace("-", "").replace("_", "") not in _FAST_ENCODINGS
        or not data.endswith(b"\n")
        or data.startswith(b"\n")
        or b"\n\n" in data
        or not data.isascii()
        or any(b in data for b in _STRIP_BYTES)
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
        return None  # header only: the line parser reports it
    return header, end + 1


def read_clean(files: Sequence[tuple[str, bytes]], names: Sequence[str], fmt: FormatSpec, raw_names: Sequence[str]) -> pa.Table | None:
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
                delimiter=fmt.delimiter, quote_char=False, double_quote=False, escape_char=False,
                newlines_in_values=False, ignore_empty_lines=False,
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
    line parser."""
    layout = clean_layout(data, fmt, raw_names)
    if layout is None:
        return None
    names, header_bytes = layout
    return read_clean([(name, data[header_bytes:])], names, fmt, raw_names)


def parse_text(name: str, data: bytes, fmt: FormatSpec, raw_names: list[str]) -> pa.Table:
    """Parse one delimited text file into string columns ``raw_names`` plus lineage and error columns.

    Line numbers are 1-based and count the header. Every non-blank line after the header becomes exactly
    one row (parsed, or with ``_error`` set). File-level findings (not text, empty, no header, missing
    columns, no data lines) produce a row with ``_source_line = 0``; when the header is unusable every data
    line of that file is rejected with the cause. A last line without its line terminator is rejected as
    truncated: a cut value (``12.5`` from ``12.53``) would otherwise pass as a valid reading.
    """
    fast = _parse_fast(name, data, fmt, raw_names)
    if fast is not None:
        return fast
    cols: dict[str, list] = {n: [] for n in raw_names}
    files: list[str] = []
    lines: list[int] = []
    raws: list[str | None] = []
    errors: list[str | None] = []

    def emit(line_no: int, values: list[str | None] | None, raw: str | None, error: str | None) -> None:
        for i, n in enumerate(raw_names):
            cols[n].append(values[i] if values is not None else None)
        files.append(name)
        lines.append(line_no)
        raws.append(raw[:MAX_RAW_CHARS] if raw is not None else None)
        errors.append(error)

    encoding = fmt.encoding
    if data[:2] in UTF16_BOMS:
        encoding = "utf-8"  # sniff transcodes it
    data, problem = sniff(data)
    if problem:
        emit(0, None, None, f"{name}: {problem}")
        return _table(cols, files, lines, raws, errors, raw_names)
    if data.startswith(b"\xef\xbb\xbf") and encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        data = data[3:]
    raw_lines, unterminated = split_lines(data)
    last_idx = len(raw_lines) - 1 if unterminated else -1

    def decode(b: bytes) -> tuple[str | None, str | None]:
        if b.endswith(b"\r"):
            b = b[:-1]
        try:
            return b.decode(encoding), None
        except UnicodeDecodeError as exc:
            return None, f"not valid {encoding} at byte {exc.start}: {b[max(0, exc.start - 8) : exc.start + 8]!r}"

    header_map: list[int] | None = None
    start = 0
    file_error: str | None = None
    if fmt.header:
        first = next((i for i, b in enumerate(raw_lines) if b.strip()), None)
        if first is None:
            emit(0, None, None, f"{name}: empty file, expected a header line")
            return _table(cols, files, lines, raws, errors, raw_names)
        text, err = decode(raw_lines[first])
        start = first + 1
        if err:
            file_error = f"header line {first + 1}: {err}"
        else:
            header = [h.strip() for h in text.split(fmt.delimiter)]
            missing = [n for n in raw_names if n not in header]
            unknown = [h for h in header if h not in raw_names]
            if missing or unknown:
                file_error = (
                    f"header line {first + 1} {header} does not match the declared columns {raw_names}"
                    f" with delimiter {fmt.delimiter!r}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {unknown}" if unknown else "")
                )
            else:
                header_map = [header.index(n) for n in raw_names]
        if file_error:
            emit(0, None, text, f"{name}: {file_error}")
    else:
        header_map = list(range(len(raw_names)))
    expected = len(header_map) if header_map is not None else len(raw_names)
    width = max(expected, (max(header_map) + 1) if header_map else 0)
    header_text = None if not fmt.header or file_error else raw_lines[start - 1].rstrip(b"\r")

    for idx in range(start, len(raw_lines)):
        b = raw_lines[idx]
        line_no = idx + 1
        if not b.strip():
            continue
        text, err = decode(b)
        if err:
            emit(line_no, None, b[: MAX_RAW_CHARS * 4].decode(encoding, errors="backslashreplace"), err)
            continue
        if file_error:
            emit(line_no, None, text, f"rejected with its file: {file_error}")
            continue
        if header_text is not None and b.rstrip(b"\r") == header_text:
            emit(line_no, None, text, "repeated header line")
            continue
        if idx == last_idx:
            emit(line_no, None, text, f"last line {line_no} has no line terminator: the file looks truncated")
            continue
        parts = text.split(fmt.delimiter)
        if len(parts) != width:
            detail = f" ({len(text):,} characters)" if len(text) > MAX_RAW_CHARS else ""
            emit(line_no, None, text, f"expected {width} fields separated by {fmt.delimiter!r}, got {len(parts)}{detail}")
            continue
        emit(line_no, [parts[i].strip() for i in header_map], None, None)
    if header_map is not None and not any(n > 0 for n in lines):
        emit(0, None, None, f"{name}: header only, no data lines" if fmt.header else f"{name}: empty file, no data lines")
    return _table(cols, files, lines, raws, errors, raw_names)


def _table(cols, files, lines, raws, errors, raw_names) -> pa.Table:
    arrays = [pa.array(cols[n], pa.string()) for n in raw_names] + [
        pa.array(files, pa.string()),
        pa.array(lines, pa.int64()),
        pa.array(raws, pa.string()),
        pa.array(errors, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=raw_schema(raw_names))


def read_raw(spark: SparkSession, files: str | Sequence[str], source: SourceSpec) -> DataFrame:
    """Landed files as rows of strings (one Spark task parses whole files).

    ``files``: the exact files to read (the month's manifest, see
    :func:`lakehouse.collectors.landing.landed_files`), or a folder (every file Spark sees in it).
    """
    fmt = source.format
    raw_names = [c.raw_name for c in source.columns]
    schema = raw_schema(raw_names)
    paths = [files] if isinstance(files, str) else [str(f) for f in files]
    if not paths:
        return empty_raw(spark, source)

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = batch.column("content").to_pylist()
            for path, content in zip(paths, contents, strict=True):
                yield from parse_text(os.path.basename(path), content, fmt, raw_names).to_batches()

    # Spark skips zero-byte files when it plans the scan: parse those here, or they would vanish unreported
    empty = [p for p in paths if not p.startswith(("file:", "hdfs:", "s3")) and os.path.isfile(p) and os.path.getsize(p) == 0]
    found = [p for p in paths if p not in empty]
    parts = []
    if empty:
        parts.append(spark.createDataFrame(pa.concat_tables(parse_text(os.path.basename(p), b"", fmt, raw_names) for p in empty)))
    if found:
        from pyspark.sql.pandas.types import from_arrow_schema

        binary = spark.read.format("binaryFile").load(found if len(found) > 1 else found[0])
        parts.append(binary.select("path", "content").mapInArrow(parse_batches, from_arrow_schema(schema)))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _typed(column: ColumnSpec):
    """A Spark expression casting the raw string column to ``column.type``; NULL when it cannot."""
    from pyspark.sql import functions as F

    raw = F.col(f"`{column.raw_name}`")
    text = F.when(F.trim(raw) == "", F.lit(None)).otherwise(F.trim(raw))
    if column.type == "timestamp":
        return F.try_to_timestamp(text, F.lit(column.format)) if column.format else text.try_cast("timestamp")
    if column.type == "date":
        return F.try_to_date(text, column.format) if column.format else text.try_cast("date")  # format: a str here
    if column.type == "double":
        value = text.try_cast("double")
        # NaN and infinities are not readings
        return F.when(F.isnan(value) | (F.abs(value) == float("inf")), F.lit(None)).otherwise(value)
    if column.type == "boolean":
        return F.lower(text).try_cast("boolean")
    return text.try_cast(column.type)


def cast_checked(raw: DataFrame, source: SourceSpec, month: str | Column) -> DataFrame:
    """Every parsed row, cast: the canonical columns, lineage, ``month``, and ``error`` / ``record`` (the
    cause and the row as received), both NULL on rows that are accepted.

    ``month`` is the month the files were delivered for (``YYYY-MM``), or a column giving it per row
    (e.g. taken from the file name) when several months are cast at once.

    One frame for both outcomes, so a caller can compute it in one Spark job (no cache, no second pass
    over the files) and split it on ``error``; :func:`cast_to_canonical` splits it in Spark.
    A row is rejected when it could not be parsed, a value does not cast to its declared type, a
    non-nullable value is empty, or its time column places it in another month than the one delivered.
    """
    from pyspark.sql import functions as F

    delivered = F.lit(month) if isinstance(month, str) else month
    typed = raw.select(
        *[_typed(c).alias(c.name) for c in source.columns],
        *[F.col(f"`{c.raw_name}`").alias(f"__raw_{c.name}") for c in source.columns],
        FILE_COL,
        LINE_COL,
        RAW_COL,
        ERROR_COL,
    )
    problems = [F.col(ERROR_COL)]
    for c in source.columns:
        rawc = F.col(f"__raw_{c.name}")
        bad_cast = rawc.isNotNull() & (F.trim(rawc) != "") & F.col(c.name).isNull()
        problems.append(
            F.when(
                bad_cast,
                F.format_string(f"column {c.name}: cannot read '%s' as {c.type}", F.substring(rawc, 1, 200)),
            )
        )
        if not c.nullable:
            problems.append(
                F.when(F.col(ERROR_COL).isNull() & ~bad_cast & F.col(c.name).isNull(), F.lit(f"column {c.name}: empty"))
            )
    part_col = source.partitioning.column
    if source.partitioning.kind == "time_column" and part_col:
        row_month = F.date_format(F.col(part_col), "yyyy-MM")
        problems.append(
            F.when(
                F.col(part_col).isNotNull() & (row_month != delivered),
                F.format_string(f"{part_col} %s belongs to month %s, delivered for %s", F.col(part_col).cast("string"), row_month, delivered),
            )
        )
    checked = typed.withColumn("__problem", F.concat_ws("; ", *problems))
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


def cast_to_canonical(raw: DataFrame, source: SourceSpec, month: str) -> tuple[DataFrame, DataFrame]:
    """Split parsed rows into (canonical rows of ``month``, rejected rows with ``error`` and ``record``).

    The rules are :func:`cast_checked`'s.
    """
    from pyspark.sql import functions as F

    checked = cast_checked(raw, source, month)
    good = checked.filter(F.col("error").isNull()).select(*[c.name for c in source.columns], FILE_COL, LINE_COL, "month")
    bad = checked.filter(F.col("error").isNotNull()).select("month", FILE_COL, LINE_COL, "record", "error")
    return good, bad


def empty_raw(spark: SparkSession, source: SourceSpec) -> DataFrame:
    return spark.createDataFrame(raw_schema([c.raw_name for c in source.columns]).empty_table())
