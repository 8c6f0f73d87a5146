"""File drop: devices push text files into an inbox directory; each file's month comes from its name."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from lakehouse.collectors.base import Fetched
from lakehouse.specs.models import FileDropCollector


def file_month(spec: FileDropCollector, name: str) -> str | None:
    """The month a file belongs to, from its name (``None`` when the name carries none)."""
    m = re.search(spec.month_regex, name)
    return m.group(1) if m else None


class InboxMissing(FileNotFoundError):
    """The inbox directory does not exist: a wrong path or an unmounted share, not an empty month."""


def refusal(path: Path) -> str | None:
    """Why an inbox entry is not a delivery (``None`` for a regular file): a symlink would land whatever
    it points to (``/proc/self/environ``, a file outside the inbox), a device or a pipe never ends."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "removed while the inbox was read"
    if stat.S_ISLNK(mode):
        return "a symbolic link, not a delivered file (links are never followed)"
    if not stat.S_ISREG(mode):
        return "not a regular file"
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
        why = refusal(path)
        if why is None:
            files.append(path)
        elif path.is_symlink() or not path.is_dir():
            refused.append((path, why))
    return files, refused


def inbox_files(spec: FileDropCollector, inbox: Path, month: str | None = None) -> list[Path]:
    """The regular files of :func:`inbox_entries`."""
    return inbox_entries(spec, inbox, month)[0]


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, refusing a symlink or a non-regular file at the moment it is opened (a file
    swapped for a link after the listing is not followed either)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{path.name}: not a regular file")
        return fh.read()


def fetch(spec: FileDropCollector, inbox: Path, month: str) -> Iterator[Fetched]:
    for path in inbox_files(spec, inbox, month):
        yield Fetched(name=path.name, data=read_regular(path), origin=f"file://{path}")
