"""Landing a file: raw bytes kept as received, written atomically, recorded once in the month's manifest.

``landing/<source>/<YYYY-MM>/_manifest.json`` lists every landed file::

    {"name": ..., "sha256": ..., "bytes": ..., "rows": ..., "origin": ..., "received_at": ..., "status": "landed"}

A file is identified by (name, sha256): the same bytes under the same name never land twice. A file that
arrives again under the same name with different bytes supersedes the earlier one, which moves to
``_superseded/`` (Spark ignores ``_`` folders) and stays listed in the manifest — nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

MANIFEST = "_manifest.json"
SUPERSEDED = "_superseded"
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


def safe_name(name: str) -> str:
    """A landing file name: the base name only, reduced to ``[A-Za-z0-9._-]`` (no ``..``, no paths)."""
    base = Path(name.replace("\\", "/")).name
    cleaned = _SAFE.sub("_", base).strip("._") or "file"
    return cleaned


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def count_rows(data: bytes, header: bool) -> int:
    """Data lines in a text file (non-empty lines, minus the header)."""
    lines = sum(1 for line in data.splitlines() if line.strip())
    return max(0, lines - (1 if header else 0))


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


def land(month_dir: Path, name: str, data: bytes, *, origin: str, header: bool = True) -> ManifestEntry | None:
    """Land ``data`` as ``name`` in ``month_dir`` unless these exact bytes are already there.

    Returns the new manifest entry, or ``None`` when the file had already landed (exactly once).
    """
    name = safe_name(name)
    digest = sha256_bytes(data)
    entries = read_manifest(month_dir)
    current = [e for e in entries if e.name == name and e.status == "landed"]
    if any(e.sha256 == digest for e in current):
        return None
    for old in current:
        src = month_dir / name
        if src.exists():
            dest = month_dir / SUPERSEDED / f"{old.sha256[:12]}_{name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        entries[entries.index(old)] = ManifestEntry(**{**asdict(old), "status": "superseded"})
    atomic_write(month_dir / name, data)
    entry = ManifestEntry(
        name=name,
        sha256=digest,
        bytes=len(data),
        rows=count_rows(data, header),
        origin=origin,
        received_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_manifest(month_dir, [*entries, entry])
    return entry


def landed_files(month_dir: Path) -> list[Path]:
    """The current files of a month (superseded ones excluded)."""
    return [month_dir / e.name for e in read_manifest(month_dir) if e.status == "landed"]
