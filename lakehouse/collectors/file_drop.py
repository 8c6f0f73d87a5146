"""File drop: devices push text files into an inbox directory; each file's month comes from its name."""

from __future__ import annotations

import re
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


def inbox_files(spec: FileDropCollector, inbox: Path, month: str | None = None) -> list[Path]:
    """Inbox files matching the pattern (and ``month``), sorted by name. Partial uploads are skipped."""
    if not inbox.is_dir():
        raise InboxMissing(f"the inbox {inbox} does not exist")
    out = []
    for path in inbox.glob(spec.pattern):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(".part"):
            continue
        if month is None or file_month(spec, path.name) == month:
            out.append(path)
    return sorted(out)


def fetch(spec: FileDropCollector, inbox: Path, month: str) -> Iterator[Fetched]:
    for path in inbox_files(spec, inbox, month):
        yield Fetched(name=path.name, data=path.read_bytes(), origin=f"file://{path}")
