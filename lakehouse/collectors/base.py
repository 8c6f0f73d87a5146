"""What every collector yields: raw bytes (or a local file), the name to land them under, and where they
came from."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Fetched:
    name: str
    #: the bytes, for collectors that receive them in memory (HTTP, SQL, library); ``None`` with ``path``
    data: bytes | None
    #: where the bytes came from (a file path or URL without credentials)
    origin: str
    #: a local file (a file drop) that landing streams in chunks, never reading it whole
    path: Path | None = None

    @property
    def body(self) -> bytes | Path:
        """What landing takes: the bytes, or the file to stream."""
        return self.path if self.path is not None else (self.data or b"")


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, refusing a symlink or a non-regular file at the moment it is opened (a
    file swapped for a link after a listing is not followed either)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise OSError(f"{path.name}: not a regular file")
    return fh


def template_values(month: str, params: dict[str, str] | None = None) -> dict[str, str]:
    """The fields a collector's templates may use for ``month`` (see ``MONTH_FIELDS`` in the specs), plus
    ``params``."""
    year, mm = month.split("-")
    after = f"{int(year) + 1:04d}-01" if mm == "12" else f"{year}-{int(mm) + 1:02d}"
    return {**(params or {}), "month": month, "year": year, "mm": mm, "start": f"{month}-01", "end": f"{after}-01"}
