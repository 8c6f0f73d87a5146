"""How many records a delivery holds, counted when it lands, without the parser.

The landing manifest records this count for every file, so the formatted zone's accounting (every
record formatted or quarantined) is checked against a number the parser did not produce: a file the
parser reads wrong, or drops, shows up as a difference instead of balancing against its own output.
A file that cannot be read at all counts its non-blank lines (the parser rejects each of them with it).
"""

from __future__ import annotations

import io
import re

from lakehouse.specs.models import FormatSpec, SourceSpec
from lakehouse.transforms.decode import Unreadable, count_lines, decode_text, decompress


def _csv_record_pattern(fmt: FormatSpec) -> re.Pattern[str]:
    """One csv record up to its line break. A field may open with a quote, and then runs to the closing
    quote across line breaks (a doubled quote, or an escaped character, stays inside); a quote anywhere
    else in a field is a character like any other."""
    q, d = re.escape(fmt.quote or ""), re.escape(fmt.delimiter)
    if fmt.escape:
        e = re.escape(fmt.escape)
        field = f"(?:{q}(?:[^{q}{e}]|{e}.)*(?:{q}|\\Z))?(?:[^{d}\\r\\n{e}]|{e}.)*"
    else:
        field = f"(?:{q}(?:[^{q}]|{q}{q})*(?:{q}|\\Z))?[^{d}\\r\\n]*"
    return re.compile(f"({field}(?:{d}{field})*)(?:\\r\\n|\\r|\\n|\\Z)", re.DOTALL)


def count_csv(text: str, fmt: FormatSpec) -> int:
    """Non-blank records of csv ``text`` (a record may span lines inside quotes), minus the header."""
    if fmt.quote is None or fmt.quote not in text:
        records = sum(1 for line in io.StringIO(text, newline="") if line.strip())
    else:
        records, pos = 0, 0
        pattern = _csv_record_pattern(fmt)
        while pos < len(text):
            match = pattern.match(text, pos)
            if match is None or match.end() == pos:  # cannot happen for a valid pattern; never loop forever
                break
            records += bool(match.group(1).strip())
            pos = match.end()
    return max(0, records - (1 if fmt.header else 0))


def count_records(data: bytes, fmt: FormatSpec) -> int:
    """The records of a delivery in ``fmt``: csv records (minus the header), JSON lines, elements of the
    JSON array, Parquet rows; for a file that cannot be read as ``fmt``, its non-blank lines."""
    try:
        if fmt.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return pq.ParquetFile(pa.BufferReader(decompress(data, fmt))).metadata.num_rows
            except (pa.ArrowException, OSError):
                raise Unreadable("not Parquet") from None
        payload = decode_text(data, fmt)
        text = payload.text or ""
        if fmt.kind == "csv":
            return count_csv(text, fmt)
        if fmt.kind == "jsonl":
            return sum(1 for line in io.StringIO(text, newline="") if line.strip())
        from lakehouse.transforms.parse import json_records

        return len(json_records(payload, fmt))
    except Unreadable:
        return count_lines(data)


def _shift(month: str, by: int) -> str:
    year, mm = divmod(int(month[:4]) * 12 + int(month[5:]) - 1 + by, 12)
    return f"{year:04d}-{mm + 1:02d}"


def delivery_months(data: bytes, source: SourceSpec) -> list[str] | None:
    """The months the rows of a delivery may belong to (a superset), for a source whose deliveries span
    months; ``None`` when they cannot be told without the cast (a time column with a declared pattern):
    every formatted month then reads the delivery.

    Read from the first seven characters of the time column's ISO text; a timestamp's offset may move it
    into a neighbouring month, so those are included too.
    """
    import pyarrow.compute as pc

    from lakehouse.transforms.parse import parse_file

    column = source.column(source.partitioning.column or "")
    if column.format:
        return None
    table = parse_file("delivery", data, source.format, [c.raw_name for c in source.columns])
    prefixes = pc.unique(pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(table.column(column.raw_name)), 0, 7)).to_pylist()
    months = {p for p in prefixes if p and re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", p)}
    if column.type == "timestamp":
        months |= {_shift(m, by) for m in months for by in (-1, 1)}
    return sorted(months)
