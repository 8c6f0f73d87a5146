"""Landing a file: raw bytes kept as received, recorded once in the month's manifest — on disk or on S3.

``landing/<source>/<YYYY-MM>/_manifest/<n>.json`` is version ``n`` of the month's manifest, the full list of
landed files::

    {"name": ..., "sha256": ..., "bytes": ..., "rows": ..., "origin": ..., "received_at": ..., "status": "landed"}

A file is identified by (name, sha256): the same bytes under the same name never land twice. A file that
arrives again under the same name with different bytes supersedes the earlier one, which is copied to
``_superseded/`` (Spark ignores ``_`` folders) and stays listed in the manifest — nothing is lost.

Exactly once without a lock: a landing reads the newest manifest version ``n``, writes its files (each write
atomic), then *creates* version ``n + 1`` with a conditional write (S3 ``If-None-Match``, a hard link on
disk: :meth:`lakehouse.io.storage.Storage.write`). When another landing created ``n + 1`` first, this one
reads it and decides again (files it already wrote are not written twice). A crash before the manifest is
created leaves files it does not list: readers go by the manifest (:func:`landed_files`), and the next
landing of those files records them. One limit remains: two landings of *different* bytes under one name in
one month at the same moment end with the later bytes, listed; the earlier bytes may be missing from
``_superseded/``. A month written by an older version of this module (``_manifest.json``) reads as version 0.

A local file (an inbox delivery) is streamed, never read whole: hashed in chunks to decide whether it
already landed, then copied in chunks and hashed again while copying; when the bytes changed in between
(a device still writing), the copy is aborted and nothing of it lands. Landed names are at most
:data:`MAX_NAME_BYTES` bytes (a longer name is cut and keeps a hash of the original), so a name and its
``_superseded/`` and ``_rejected/`` copies stay within the 255 bytes a file system allows per name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lakehouse.collectors.base import open_regular
from lakehouse.io.storage import Storage
from lakehouse.specs.models import FormatSpec
from lakehouse.transforms.records import count_records

MANIFEST = "_manifest"
LEGACY_MANIFEST = "_manifest.json"
SUPERSEDED = "_superseded"
#: manifest versions a landing tries to create before giving up (each loss means another landing won)
MANIFEST_ATTEMPTS = 20
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: the longest landed name: ``_superseded/<sha12>_<name>``, ``_rejected/<stamp>_<name>`` and an object
#: store's temporary suffix must still fit in the 255 bytes a file system allows per name
MAX_NAME_BYTES = 200
#: bytes read and written at a time when a file is streamed
CHUNK_BYTES = 8 << 20
#: what a landing takes: the bytes, or a local file streamed in chunks
Body = bytes | Path


class CollectorError(RuntimeError):
    """A collector could not fetch a source's data. The message names source, month and cause."""


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    sha256: str
    bytes: int
    rows: int
    origin: str
    received_at: str
    status: str = "landed"  # landed | superseded
    #: a source whose deliveries span months: the months this file's rows may belong to (``None``: any)
    months: list[str] | None = None


def safe_name(name: str) -> str:
    """A landing file name: the base name only, reduced to ``[A-Za-z0-9._-]`` (no ``..``, no paths).

    When the name had to change, a short hash of the original name is added before the extension, so
    two different names never collapse into one (``a b.csv`` and ``a_b.csv``, ``x/f.csv`` and ``y/f.csv``
    stay two files; without it the second would supersede the first as if it were a new version). A name
    longer than :data:`MAX_NAME_BYTES` is cut to fit, with the same hash.
    """
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    cleaned = _SAFE.sub("_", base).strip("._")
    cleaned = cleaned or "file"  # nothing usable in the name ("..", ""): still one file per name
    if cleaned == name and len(cleaned) <= MAX_NAME_BYTES:
        return cleaned
    stem, dot, ext = cleaned.rpartition(".")
    tag = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    if not dot or not stem or not ext.isalnum() or len(ext) > 16:
        stem, ext = cleaned, ""
    suffix = f"-{tag}" + (f".{ext}" if ext else "")
    return stem[: MAX_NAME_BYTES - len(suffix)] + suffix


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(body: Body) -> tuple[str, int]:
    """The SHA-256 and size of ``body`` (a local file is read in chunks, refusing links)."""
    if isinstance(body, bytes):
        return sha256_bytes(body), len(body)
    h, size = hashlib.sha256(), 0
    with open_regular(body) as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _copy(body: Body, sha256: str, size: int) -> bytes | Iterator[bytes]:
    """What the storage writes for ``body``: the bytes, or a local file's chunks, hashed while they are
    copied; the write is aborted (nothing lands) when the file is no longer the one ``sha256`` names."""
    if isinstance(body, bytes):
        return body

    def chunks() -> Iterator[bytes]:
        h, copied = hashlib.sha256(), 0
        with open_regular(body) as fh:
            while block := fh.read(CHUNK_BYTES):
                copied += len(block)
                if copied > size:
                    break
                h.update(block)
                yield block
        if copied != size or h.hexdigest() != sha256:
            raise CollectorError(f"{body}: changed while it was landed (a writer still busy?); nothing of it landed")

    return chunks()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a local file outside the lake (an inbox file a sensor looks at)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Month:
    """A landing folder on the lake's storage: a month (``landing/<source>/<YYYY-MM>``), or a source's
    folder (``landing/<source>``) whose :meth:`child` folders are its months."""

    storage: Storage
    uri: str

    def file(self, *parts: str) -> str:
        return self.storage.join(self.uri, *parts)

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    def child(self, name: str) -> Month:
        return Month(self.storage, self.file(name))

    def months(self) -> list[Month]:
        """The month folders under a source's folder (``_`` and ``.`` folders excluded)."""
        return [self.child(n) for n in self.storage.folders(self.uri) if not n.startswith(("_", "."))]


def _versions(month: Month) -> list[tuple[int, str]]:
    found = []
    for uri, _ in month.storage.list(month.file(MANIFEST)):
        stem = uri.rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit():
            found.append((int(stem), uri))
    return sorted(found)


def _read_version(month: Month) -> tuple[int, list[ManifestEntry]]:
    """The newest manifest version of ``month`` and its entries (0 and the legacy file's, or nothing)."""
    found = _versions(month)
    if found:
        number, uri = found[-1]
        return number, [ManifestEntry(**e) for e in json.loads(month.storage.read(uri))]
    try:
        legacy = month.storage.read(month.file(LEGACY_MANIFEST))
    except FileNotFoundError:
        return 0, []
    return 0, [ManifestEntry(**e) for e in json.loads(legacy)]


def read_manifest(month: Month) -> list[ManifestEntry]:
    return _read_version(month)[1]


def manifest_version(month: Month) -> int:
    """The number of ``month``'s newest manifest version (0 when it has none): it changes whenever a file
    lands or is superseded, so a step can tell whether the manifest it read is still current."""
    found = _versions(month)
    return found[-1][0] if found else 0


def _create_manifest(month: Month, number: int, entries: list[ManifestEntry]) -> bool:
    """Create manifest version ``number``; False when another landing created it first."""
    ordered = sorted(entries, key=lambda e: (e.name, e.status, e.received_at))
    body = json.dumps([asdict(e) for e in ordered], indent=1).encode()
    return month.storage.write(month.file(MANIFEST, f"{number:08d}.json"), body, create=True)


def land(month: Month, name: str, data: Body, *, origin: str, fmt: FormatSpec | None = None) -> ManifestEntry | None:
    """Land ``data`` (bytes, or a local file streamed) as ``name`` in ``month`` unless these exact bytes are
    already there.

    Returns the new manifest entry, or ``None`` when the file had already landed (exactly once).
    """
    return land_many(month, [(name, data, origin)], fmt=fmt)[0]


def land_many(
    month: Month,
    items: Iterable[tuple[str, Body, str]],
    *,
    fmt: FormatSpec | None = None,
    months_of: Callable[[bytes], list[str] | None] | None = None,
) -> list[ManifestEntry | None]:
    """Land each ``(name, body, origin)`` of ``items`` in ``month`` exactly once, with one new manifest
    version; a body is bytes or a local file, streamed.

    The manifest is read once and created once per attempt, after every file is in place: landing a month of
    N files costs N file writes and one manifest write. Returns, per item, its new entry or ``None`` when
    those bytes had already landed under that name.
    ``rows`` of an entry: the records the file holds in ``fmt`` (default: csv with a header), counted
    without the parser (:func:`lakehouse.transforms.records.count_records`); ``months`` of an entry:
    ``months_of(data)`` (a source whose deliveries span months; such a delivery is read whole to route it).
    """
    fmt = fmt or FormatSpec()
    staged = [(safe_name(raw), body, origin, *digest(body)) for raw, body, origin in items]
    written: set[tuple[str, str]] = set()  # (name, sha256) this call already wrote
    for _ in range(MANIFEST_ATTEMPTS):
        number, entries = _read_version(month)
        out: list[ManifestEntry | None] = []
        changed = False
        for name, body, origin, sha256, size in staged:
            current = [e for e in entries if e.name == name and e.status == "landed"]
            if any(e.sha256 == sha256 for e in current) and ((name, sha256) in written or month.storage.exists(month.file(name))):
                out.append(None)
                continue
            for old in current:
                if old.sha256 == sha256:
                    # listed but its file is gone (e.g. removed by hand): write it again, keep one entry
                    entries.remove(old)
                    continue
                _keep_superseded(month, name, old)
                entries[entries.index(old)] = ManifestEntry(**{**asdict(old), "status": "superseded"})
            if (name, sha256) not in written:
                month.storage.write(month.file(name), _copy(body, sha256, size))
                written.add((name, sha256))
            entry = ManifestEntry(
                name=name,
                sha256=sha256,
                bytes=size,
                rows=count_records(body if isinstance(body, bytes) else functools.partial(open_regular, body), fmt),
                origin=origin,
                received_at=datetime.now(UTC).isoformat(timespec="seconds"),
                months=months_of(read_body(body)) if months_of is not None else None,
            )
            entries.append(entry)
            out.append(entry)
            changed = True
        if not changed or _create_manifest(month, number + 1, entries):
            return out
    raise CollectorError(f"{month.uri}: {MANIFEST_ATTEMPTS} other landings created the manifest first; nothing was recorded")


def _keep_superseded(month: Month, name: str, old: ManifestEntry) -> None:
    """Keep the bytes of ``old`` under ``_superseded/`` before its name is reused.

    A copy, not a move: ``name`` keeps a complete file until the new bytes replace it in one write, so a
    crash in between never leaves the month without it. Idempotent after a crash.
    """
    src = month.file(name)
    dest = month.file(SUPERSEDED, f"{old.sha256[:12]}_{name}")
    if month.storage.exists(dest):
        return  # already kept (a crash after this step)
    try:
        h = hashlib.sha256()
        for block in month.storage.read_chunks(src):
            h.update(block)
        if h.hexdigest() != old.sha256:
            return  # the old bytes are no longer at ``name``
    except FileNotFoundError:
        return
    month.storage.copy(src, dest)


def read_body(body: Body) -> bytes:
    """``body`` whole in memory (for readers that need it at once)."""
    if isinstance(body, bytes):
        return body
    with open_regular(body) as fh:
        return fh.read()


def landed_files(month: Month) -> list[str]:
    """The URIs of the current files of a month (superseded ones excluded)."""
    return [month.file(e.name) for e in read_manifest(month) if e.status == "landed"]


def landed_entries(month: Month) -> list[tuple[str, ManifestEntry]]:
    """(URI, entry) of the current files of a month."""
    return [(month.file(e.name), e) for e in read_manifest(month) if e.status == "landed"]


def spanning_entries(source: Month, month: str) -> list[tuple[str, ManifestEntry]]:
    """(URI, entry) of the files landed under other months of ``source`` (its landing folder) whose rows may
    belong to ``month`` (a source whose deliveries span months; see ``ManifestEntry.months``)."""
    out = []
    for other in source.months():
        if other.name != month:
            out += [
                (other.file(e.name), e)
                for e in read_manifest(other)
                if e.status == "landed" and (e.months is None or month in e.months)
            ]
    return out


def received_times(source: Month, month: str, *, spans_months: bool = False) -> dict[str, str]:
    """When each file that may hold rows of ``month`` was received, by its ``_source_file`` name (the
    order ``keep: first`` follows). A source whose deliveries span months names files ``<month>/<name>``."""
    if not spans_months:
        return {e.name: e.received_at for e in read_manifest(source.child(month)) if e.status == "landed"}
    return {f"{m.name}/{e.name}": e.received_at for m in source.months() for e in read_manifest(m) if e.status == "landed"}
