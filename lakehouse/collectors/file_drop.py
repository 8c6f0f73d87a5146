"""File drop: devices push text files into an inbox directory; each file's month comes from its name.

Only regular files no larger than ``max_bytes`` are deliveries; symlinks, devices, pipes and oversized
files are refused with the reason (recorded under the month's ``_rejected/``). A delivery is never read
here: landing streams it from the inbox in chunks.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

from lakehouse.collectors.base import Fetched, open_regular
from lakehouse.specs.models import FileDropCollector


def file_month(spec: FileDropCollector, name: str) -> str | None:
    """The month a file belongs to, from its name (``None`` when the name carries none)."""
    m = re.search(spec.month_regex, name)
    return m.group(1) if m else None


class InboxMissing(FileNotFoundError):
    """The inbox directory does not exist: a wrong path or an unmounted share, not an empty month."""


def refusal(path: Path, max_bytes: int | None = None) -> str | None:
    """Why an inbox entry is not a delivery (``None`` for a regular file within ``max_bytes``): a symlink
    would land whatever it points to (``/proc/self/environ``, a file outside the inbox), a device or a pipe
    never ends, an oversized file would fill the lake."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "removed while the inbox was read"
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link, not a delivered file (links are never followed)"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"{info.st_size:,} bytes, more than collector.max_bytes {max_bytes:,} (nothing of it landed)"
    return None


def inbox_entries(spec: FileDropCollector, inbox: Path, month: str | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Inbox entries matching the pattern (and ``month``), sorted by name: the regular files, and the
    entries refused with the reason (symlinks, devices, folders). Partial uploads are skipped."""
    if not inbox.is_dir():
        raise InboxMissing(f"the inbox {inbox} does not exist")
    files, refused = [], []
    for path in sorted(inbox.glob(spec.pattern)):
        if path.name.startswith(".") or path.name.endswith(".part"):
            continue
        if month is not None and file_month(spec, path.name) != month:
            continue
        why = refusal(path, spec.max_bytes)
        if why is None:
            files.append(path)
        elif path.is_symlink() or not path.is_dir():
            refused.append((path, why))
    return files, refused


def inbox_files(spec: FileDropCollector, inbox: Path, month: str | None = None) -> list[Path]:
    """The regular files of :func:`inbox_entries`."""
    return inbox_entries(spec, inbox, month)[0]


def fetch(spec: FileDropCollector, inbox: Path, month: str) -> Iterator[Fetched]:
    """The month's deliveries as files to stream (each opened with :func:`open_regular` when it lands)."""
    for path in inbox_files(spec, inbox, month):
        with open_regular(path):  # a link or a device planted since the listing fails now, before landing
            pass
        yield Fetched(name=path.name, data=None, origin=f"file://{path}", path=path)
