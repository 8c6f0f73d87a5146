"""How many records a delivery holds, counted when it lands, without the parser.

The landing manifest records this count for every file, so the formatted zone's accounting (every
record formatted or quarantined) is checked against a number the parser did not produce: a file the
parser reads wrong, or drops, shows up as a difference instead of balancing against its own output.
A file that cannot be read at all counts its non-blank lines (the parser rejects each of them with it).

Counting streams: a delivery is read in chunks (decompressed and decoded incrementally), so landing a
file of gigabytes holds a few MiB of it at a time. A csv file whose text holds its quote character is
read a second time, with the record pattern; a ``json`` document is read whole (its array is parsed).
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from lakehouse.specs.models import FormatSpec, SourceSpec
from lakehouse.transforms.decode import (
    GZIP_MAGIC,
    SNIFF_BYTES,
    Unreadable,
    count_lines,
    decode_text,
    decompressed,
    text_encoding,
)

#: bytes read at a time
CHUNK_BYTES = 8 << 20
#: a delivery to count: its bytes, or a function that opens it for reading (a file streamed from disk)
Body = bytes | Callable[[], BinaryIO]


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


def count_csv(text: str | Iterable[str], fmt: FormatSpec) -> int:
    """Non-blank records of csv text, whole or in chunks (a record may span lines inside quotes), minus
    the header. Text without the quote character is counted by lines."""
    if fmt.quote is None or (isinstance(text, str) and fmt.quote not in text):
        records = count_lines(text)
    else:
        records = _count_records([text] if isinstance(text, str) else text, _csv_record_pattern(fmt))
    return max(0, records - (1 if fmt.header else 0))


def _count_records(texts: Iterable[str], pattern: re.Pattern[str]) -> int:
    """Non-blank records of the concatenated ``texts`` matched one after the other by ``pattern``; the
    record a chunk ends in (it may go on) is carried into the next."""
    count, carry = 0, ""
    texts = iter(texts)
    chunk = next(texts, None)
    while chunk is not None:
        parts, added = [carry, chunk], len(chunk)
        following = next(texts, None)
        # a record longer than a chunk (a quote never closed) waits for as much text again before it is
        # matched anew: each character is matched a few times, not once per chunk
        while following is not None and added < len(carry):
            parts.append(following)
            added += len(following)
            following = next(texts, None)
        buffer, final, pos = "".join(parts), following is None, 0
        while pos < len(buffer):
            match = pattern.match(buffer, pos)
            if match is None or match.end() == pos:  # cannot happen for a valid pattern; never loop forever
                pos = len(buffer)
                break
            if match.end() == len(buffer) and not final:
                break  # the record may go on in the next chunk
            count += bool(match.group(1).strip())
            pos = match.end()
        carry, chunk = buffer[pos:], following
    return count


def count_records(body: Body, fmt: FormatSpec) -> int:
    """The records of a delivery in ``fmt``: csv records (minus the header), JSON lines, elements of the
    JSON array, Parquet rows; for a file that cannot be read as ``fmt``, its non-blank lines."""
    opener = (lambda: io.BytesIO(body)) if isinstance(body, bytes) else body
    try:
        if fmt.kind == "parquet":
            return _parquet_rows(opener, fmt)
        if fmt.kind == "json":
            with opener() as fh:
                payload = decode_text(fh.read(), fmt)
            from lakehouse.transforms.parse import json_records

            return len(json_records(payload, fmt))
        if fmt.kind == "jsonl":
            return count_lines(_texts(opener, fmt))
        quoted = False

        def watch() -> Iterator[str]:
            nonlocal quoted
            for text in _texts(opener, fmt):
                quoted = quoted or (fmt.quote is not None and fmt.quote in text)
                yield text

        lines = count_lines(watch())
        if not quoted:
            return max(0, lines - (1 if fmt.header else 0))
        return count_csv(_texts(opener, fmt), fmt)  # a second pass, record by record
    except Unreadable:
        with opener() as fh:
            return count_lines(_chunks(fh))


def _parquet_rows(opener: Callable[[], BinaryIO], fmt: FormatSpec) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with opener() as fh:
        head = fh.read(2)
        fh.seek(0)
        try:
            if fmt.compression == "none" or (fmt.compression == "auto" and head != GZIP_MAGIC):
                if head == GZIP_MAGIC:
                    raise Unreadable("gzip-compressed data, expected uncompressed")
                return pq.ParquetFile(fh).metadata.num_rows  # the footer only
            data = b"".join(decompressed(_chunks(fh), fmt))
            return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        except (pa.ArrowException, OSError):
            raise Unreadable("not Parquet") from None


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while block := fh.read(CHUNK_BYTES):
        yield block


def _texts(opener: Callable[[], BinaryIO], fmt: FormatSpec) -> Iterator[str]:
    """The decoded text of a delivery, chunk by chunk (decompressed, byte order mark dropped, invalid
    bytes kept as lone surrogates as :func:`lakehouse.transforms.decode.decode_text` does)."""
    with opener() as fh:
        data = decompressed(_chunks(fh), fmt)
        head = b""
        for block in data:
            head += block
            if len(head) > SNIFF_BYTES + 4:
                break
        skip, encoding = text_encoding(head[: SNIFF_BYTES + 4], fmt)
        errors = "strict" if encoding.startswith(("utf-16", "utf-32")) else "surrogateescape"
        decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
        offset = 0
        try:
            for block in _chain(head[skip:], data):
                yield decoder.decode(block)
                offset += len(block)
            yield decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # utf-16/32 cannot escape: the file is not in its encoding
            raise Unreadable(f"not valid {encoding} (byte {offset + exc.start})") from None


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


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
