"""Raw bytes → what a reader can work with: decompressed, transcoded, and judged text or binary.

Shared by the parser (:mod:`lakehouse.transforms.parse`) and the landing record count
(:mod:`lakehouse.transforms.records`), so both see the same bytes; each then reads them in its own way.
"""

from __future__ import annotations

import codecs
import itertools
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lakehouse.specs.models import FormatSpec

GZIP_MAGIC = b"\x1f\x8b"
#: byte order marks, longest first (a UTF-32 LE mark starts like a UTF-16 LE one)
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: signatures of common binary formats delivered by mistake in place of text
BINARY_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (or an xlsx/docx file)",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x7fELF": "an executable",
    b"PAR1": "a Parquet file",
    b"\xd0\xcf\x11\xe0": "an OLE document (e.g. an xls file)",
}
#: how much of the start of a file decides whether it is binary (like git)
SNIFF_BYTES = 8192
#: above this share of control bytes in the sniffed start, a file is binary rather than text with a few bad bytes
BINARY_CONTROL_SHARE = 0.10
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"
#: the longest message a quarantine cell keeps
MAX_MESSAGE_CHARS = 2000


class Unreadable(ValueError):
    """The file as a whole cannot be read as the declared format (the message says why)."""


@dataclass(frozen=True)
class Payload:
    """A delivery's bytes ready to read: decompressed, and for text formats transcoded to ``text``."""

    data: bytes
    #: the decoded text (text formats); bytes that are not valid in the encoding are kept as lone
    #: surrogates (``surrogateescape``) so the reader can reject exactly the records that hold them
    text: str | None
    encoding: str


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, saying how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}… ({len(message) - limit:,} more characters cut)"


def _norm(encoding: str) -> str:
    return codecs.lookup(encoding).name


def decompress(data: bytes, fmt: FormatSpec) -> bytes:
    """The delivery's bytes with the declared (or, for ``auto``, detected) compression undone."""
    if not data.startswith(GZIP_MAGIC) and fmt.compression != "gzip":
        return data
    return b"".join(decompressed([data], fmt))


#: compressed bytes fed to zlib at a time, and the most it returns at a time (a streamed delivery stays
#: a few MiB in memory however far it expands)
_FEED = 1 << 20
_OUT = 8 << 20


def decompressed(chunks: Iterable[bytes], fmt: FormatSpec) -> Iterator[bytes]:
    """The chunks of a delivery with the declared (or, for ``auto``, detected) compression undone, never
    more than ``format.max_decompressed_bytes`` in all; raises :class:`Unreadable` naming the problem."""
    cap = fmt.max_decompressed_bytes
    chunks = iter(chunks)
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(GZIP_MAGIC):
            break
    gz = head.startswith(GZIP_MAGIC)
    if fmt.compression == "none" or (fmt.compression == "auto" and not gz):
        if gz:
            raise Unreadable("gzip-compressed data, expected uncompressed (declare format.compression: gzip or auto)")
        if head:
            yield head
        yield from chunks
        return
    if not gz:
        raise Unreadable("not gzip-compressed data (format.compression: gzip)")
    size, stream = 0, zlib.decompressobj(wbits=31)
    try:
        for data in _pieces(itertools.chain((head,), chunks)):
            while data:
                if stream.eof:  # a gzip file may hold several members, one after the other
                    data, stream = stream.unused_data + data, zlib.decompressobj(wbits=31)
                out = stream.decompress(data, min(_OUT, cap + 1 - size))
                size += len(out)
                if size > cap:
                    raise Unreadable(f"gzip data expands beyond {cap:,} bytes (format.max_decompressed_bytes)")
                if out:
                    yield out
                data = stream.unconsumed_tail
                if stream.eof and stream.unused_data and not data:
                    data, stream = stream.unused_data, zlib.decompressobj(wbits=31)
        if not stream.eof:
            raise Unreadable("gzip data is truncated (the stream does not end)")
    except zlib.error as exc:
        raise Unreadable(f"invalid gzip data: {exc}") from None


def _pieces(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` cut to at most :data:`_FEED` bytes each."""
    for chunk in chunks:
        for i in range(0, len(chunk), _FEED):
            yield chunk[i : i + _FEED]


def binary_reason(data: bytes) -> str | None:
    """Why ``data`` (without a byte order mark) is binary rather than text, or ``None`` for text.

    A known signature, or many control bytes near the start: a file of text with a NUL byte or two is
    text, whose affected records are rejected one by one.
    """
    for magic, what in BINARY_MAGIC.items():
        if data.startswith(magic):
            return f"binary data ({what}), expected text"
    head = data[:SNIFF_BYTES]
    if not head:
        return None
    controls = len(head) - len(head.translate(None, _CONTROL))
    if controls >= 4 and controls / len(head) > BINARY_CONTROL_SHARE:
        nul = head.find(b"\x00")
        where = f", NUL byte at offset {nul}" if nul >= 0 else ""
        return f"binary data ({controls} control bytes in the first {len(head):,}{where}), expected text"
    return None


def text_encoding(head: bytes, fmt: FormatSpec) -> tuple[int, str]:
    """The length of the byte order mark at the start of ``head`` (the first :data:`SNIFF_BYTES` of a
    decompressed text delivery, or all of it) and the encoding to read it in: a mark wins over the declared
    encoding. Binary content, or UTF-16/32 without a mark, is :class:`Unreadable`."""
    encoding = _norm(fmt.encoding)
    skip = 0
    for bom, name in BOMS:
        if head.startswith(bom):
            skip, encoding = len(bom), name
            break
    else:
        if encoding.startswith(("utf-16", "utf-32")) and encoding in ("utf-16", "utf-32"):
            raise Unreadable(f"declared {fmt.encoding} without a byte order mark: declare utf-16-le or utf-16-be")
    if not encoding.startswith(("utf-16", "utf-32")):
        problem = binary_reason(head[skip:])
        if problem:
            raise Unreadable(problem)
    return skip, encoding


def decode_text(data: bytes, fmt: FormatSpec) -> Payload:
    """The text of a text-format delivery (``csv``, ``jsonl``, ``json``).

    A byte order mark wins over the declared encoding (and is dropped); binary content is
    :class:`Unreadable`. Bytes invalid in the encoding stay as lone surrogates.
    """
    data = decompress(data, fmt)
    skip, encoding = text_encoding(data[: SNIFF_BYTES + 4], fmt)
    data = data[skip:]
    try:
        text = data.decode(encoding, errors="surrogateescape")
    except UnicodeDecodeError as exc:  # utf-16/32 cannot escape: the file is not in its encoding
        raise Unreadable(f"not valid {encoding} (byte {exc.start})") from None
    return Payload(data, text, encoding)


#: what a text value must not hold: C0 controls but tab and line breaks, DEL, and the lone surrogates that
#: stand for bytes invalid in the encoding
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\udc80-\udcff]")


def invalid_text(value: str, encoding: str) -> str | None:
    """Why ``value`` (a decoded record or field) holds something text must not: bytes invalid in the
    encoding, or a control character. ``None`` when it is clean."""
    found = _NOT_TEXT.search(value)
    if found is None:
        return None
    code, at = ord(found.group()), found.start() + 1
    if code >= 0xDC80:
        return f"not valid {encoding} at character {at}: byte 0x{code - 0xDC00:02x}"
    return f"control character U+{code:04X} at character {at}"


def count_lines(data: bytes | str | Iterable[bytes] | Iterable[str]) -> int:
    """Non-blank physical lines (``\\n``, ``\\r\\n`` or a lone ``\\r`` end a line) of a file's bytes or
    text, given whole or in chunks. A ``\\r\\n`` cut between two chunks counts as two breaks, which only
    adds a blank line."""
    chunks = [data] if isinstance(data, (bytes, str)) else data
    count, open_line = 0, False  # whether the line the previous chunk ended in has a non-blank character
    for chunk in chunks:
        parts: list[str] | list[bytes]
        if isinstance(chunk, str):
            parts = chunk.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        else:
            parts = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        first = open_line or bool(parts[0].strip())
        if len(parts) == 1:
            open_line = first
            continue
        count += first + sum(1 for part in parts[1:-1] if part.strip())
        open_line = bool(parts[-1].strip())
    return count + open_line
