"""Landing a file: raw bytes kept as received, written atomically, recorded once in the month's manifest.

``landing/<source>/<YYYY-MM>/_manifest.json`` lists every landed file::

    {"name": ..., "sha256": ..., "bytes": ..., "rows": ..., "origin": ..., "received_at": ..., "status": "landed"}

A file is identified by (name, sha256): the same bytes under the same name never land twice. A file that
arrives again under the same name with different bytes supersedes the earlier one, which moves to
``_superseded/`` (Spark ignores ``_`` folders) and stays listed in the manifest — nothing is lost.

Crash safety: each file is written to a temp file and renamed, then the manifest is replaced the same way
(once per collect, :func:`land_many`), under an exclusive lock on the month (``.lock``), so concurrent
landings of one month never lose an entry. A crash before the manifest's rename leaves files it does not
list: readers go by the manifest (:func:`landed_files`), and the next landing of those files records them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lakehouse.specs.models import FormatSpec
from lakehouse.transforms.records import count_records

MANIFEST = "_manifest.json"
SUPERSEDED = "_superseded"
LOCK = ".lock"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


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
    stay two files; without it the second would supersede the first as if it were a new version).
    """
    base = Path(name.replace("\\", "/")).name
    cleaned = _SAFE.sub("_", base).strip("._")
    cleaned = cleaned or "file"  # nothing usable in the name ("..", ""): still one file per name
    if cleaned == name:
        return cleaned
    stem, dot, ext = cleaned.rpartition(".")
    tag = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    if not dot or not stem or not ext.isalnum():
        return f"{cleaned}-{tag}"
    return f"{stem}-{tag}.{ext}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(month_dir: Path) -> list[ManifestEntry]:
    path = month_dir / MANIFEST
    if not path.exists():
        return []
    return [ManifestEntry(**e) for e in json.loads(path.read_text(encoding="utf-8"))]


def write_manifest(month_dir: Path, entries: list[ManifestEntry]) -> None:
    ordered = sorted(entries, key=lambda e: (e.name, e.status, e.received_at))
    atomic_write(month_dir / MANIFEST, json.dumps([asdict(e) for e in ordered], indent=1).encode())


@contextlib.contextmanager
def month_lock(month_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``month_dir`` for this process (``flock``; released when the process dies)."""
    month_dir.mkdir(parents=True, exist_ok=True)
    with open(month_dir / LOCK, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def land(month_dir: Path, name: str, data: bytes, *, origin: str, fmt: FormatSpec | None = None) -> ManifestEntry | None:
    """Land ``data`` as ``name`` in ``month_dir`` unless these exact bytes are already there.

    Returns the new manifest entry, or ``None`` when the file had already landed (exactly once).
    """
    return land_many(month_dir, [(name, data, origin)], fmt=fmt)[0]


def land_many(
    month_dir: Path,
    items: Iterable[tuple[str, bytes, str]],
    *,
    fmt: FormatSpec | None = None,
    months_of: Callable[[bytes], list[str] | None] | None = None,
) -> list[ManifestEntry | None]:
    """Land each ``(name, data, origin)`` of ``items`` in ``month_dir`` exactly once, under one lock.

    The manifest is read once and replaced once, after every file is in place: landing a month of N files
    costs N file writes and one manifest write (not N, which made a 1,440-file month quadratic). A crash
    before the manifest is replaced leaves files it does not list; the rerun lands them again and lists them.
    Returns, per item, its new entry or ``None`` when those bytes had already landed under that name.
    ``rows`` of an entry: the records the file holds in ``fmt`` (default: csv with a header), counted
    without the parser (:func:`lakehouse.transforms.records.count_records`); ``months`` of an entry:
    ``months_of(data)`` (a source whose deliveries span months).
    """
    fmt = fmt or FormatSpec()
    out: list[ManifestEntry | None] = []
    with month_lock(month_dir):
        entries = read_manifest(month_dir)
        changed = False
        for raw_name, data, origin in items:
            name = safe_name(raw_name)
            digest = sha256_bytes(data)
            current = [e for e in entries if e.name == name and e.status == "landed"]
            if any(e.sha256 == digest for e in current) and (month_dir / name).is_file():
                out.append(None)
                continue
            for old in current:
                if old.sha256 == digest:
                    # listed but its file is gone (e.g. removed by hand): write it again, keep one entry
                    entries.remove(old)
                    continue
                _keep_superseded(month_dir, name, old)
                entries[entries.index(old)] = ManifestEntry(**{**asdict(old), "status": "superseded"})
            atomic_write(month_dir / name, data)
            entry = ManifestEntry(
                name=name,
                sha256=digest,
                bytes=len(data),
                rows=count_records(data, fmt),
                origin=origin,
                received_at=datetime.now(UTC).isoformat(timespec="seconds"),
                months=months_of(data) if months_of is not None else None,
            )
            entries.append(entry)
            out.append(entry)
            changed = True
        if changed:
            write_manifest(month_dir, entries)
    return out


def _keep_superseded(month_dir: Path, name: str, old: ManifestEntry) -> None:
    """Keep the bytes of ``old`` under ``_superseded/`` before its name is reused.

    A hard link (or copy), not a move: ``name`` keeps a complete file until the new bytes replace it in
    one rename, so a crash in between never leaves the month without it. Idempotent after a crash.
    """
    src = month_dir / name
    dest = month_dir / SUPERSEDED / f"{old.sha256[:12]}_{name}"
    if dest.exists() or not src.is_file() or sha256_file(src) != old.sha256:
        return  # already kept (a crash after this step), or the old bytes are no longer at ``name``
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        atomic_write(dest, src.read_bytes())


def landed_files(month_dir: Path) -> list[Path]:
    """The current files of a month (superseded ones excluded)."""
    return [month_dir / e.name for e in read_manifest(month_dir) if e.status == "landed"]


def spanning_files(source_dir: Path, month: str) -> list[Path]:
    """Files landed under other months of ``source_dir`` whose rows may belong to ``month`` (a source
    whose deliveries span months; see ``ManifestEntry.months``)."""
    out = []
    for month_dir in sorted(p for p in source_dir.iterdir() if p.is_dir() and p.name != month) if source_dir.is_dir() else []:
        out += [month_dir / e.name for e in read_manifest(month_dir)
                if e.status == "landed" and (e.months is None or month in e.months)]
    return out


def received_times(source_dir: Path, month: str, *, spans_months: bool = False) -> dict[str, str]:
    """When each file that may hold rows of ``month`` was received, by its ``_source_file`` name (the
    order ``keep: first`` follows). A source whose deliveries span months names files ``<month>/<name>``."""
    if not spans_months:
        return {e.name: e.received_at for e in read_manifest(source_dir / month) if e.status == "landed"}
    return {f"{m.name}/{e.name}": e.received_at for m in sorted(source_dir.iterdir()) if m.is_dir()
            for e in read_manifest(m) if e.status == "landed"} if source_dir.is_dir() else {}
