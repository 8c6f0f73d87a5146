"""Inbox planning: which files of a file-drop inbox one tick of its sensor requests to land, per month.

A tick lists the inbox once (``os.scandir`` + one ``stat`` per entry, no reads) and only looks further at
files changed since the cursor. The cursor is the high-water mark ``(change time, name)`` of the last file
handled — change time = ``max(mtime, ctime)``, and ``ctime`` is set by the kernel on every write or rename,
so a file copied in with an old ``mtime`` still counts as new. Files are handled in that order, at most
:data:`MAX_FILES_PER_TICK` per tick (a backlog drains over a few ticks, each tick stays short), and files
changed in the last ``settle_seconds`` wait for the next tick (a writer may still be busy).

Each new file is hashed (sha256) and skipped when these exact bytes have already landed under that name
(the month's landing manifest is the truth) or were already requested and not landed yet (a small
per-name sha cache in the cursor, pruned once the manifest lists them). The remaining files are grouped
by the month in their name. Names without a month, or with a month outside the partition range, are
skipped and counted. A file for a month that is still running (in the range, but a monthly partition
exists only once its month is over) is remembered in the cursor and requested on the first tick after
the month ends. The cursor assumes the inbox is a local filesystem whose clock does not run backwards.

The Dagster sensor around it is :mod:`lakehouse.factories.sensors`.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lakehouse.collectors.file_drop import file_month
from lakehouse.collectors.landing import read_manifest, safe_name, sha256_file
from lakehouse.specs.models import FileDropCollector, SourceSpec

if TYPE_CHECKING:
    from lakehouse.io.lake import Lake

#: files handled per tick at most; a bigger backlog drains over the next ticks
MAX_FILES_PER_TICK = 10_000
#: requested-but-not-landed files remembered in the cursor at most (older ones fall back on the manifest)
MAX_PENDING = 2_000
SETTLE_SECONDS = 1.0
#: why a tick passes over a file (the keys of :attr:`TickPlan.skipped`)
SKIP_REASONS = (
    "without a month in the name",
    "month outside the partitions",
    "month not over yet",
    "already landed",
    "already requested",
    "vanished",
)


@dataclass
class InboxCursor:
    """Where the previous tick stopped, and what it requested that has not landed yet."""

    changed_ns: int = -1
    name: str = ""
    #: name -> [sha256, month] of files requested but not yet seen in the landing manifest
    pending: dict[str, list[str]] = field(default_factory=dict)
    #: name -> month of files whose month is in the range but not a partition yet (still running)
    deferred: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> InboxCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            changed_ns=int(data["changed_ns"]),
            name=str(data["name"]),
            pending=dict(data.get("pending", {})),
            deferred=dict(data.get("deferred", {})),
        )

    def dump(self) -> str:
        data = {"changed_ns": self.changed_ns, "name": self.name, "pending": self.pending, "deferred": self.deferred}
        return json.dumps(data, separators=(",", ":"))


@dataclass
class TickPlan:
    """What one tick found: files per month to request, the next cursor, and counts for the log."""

    requests: dict[str, list[tuple[str, str]]]
    cursor: InboxCursor
    listed: int = 0
    changed: int = 0
    hashed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    backlog: int = 0

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()) if n) or "none"
        months = ", ".join(f"{m} ({len(f)} file(s))" for m, f in sorted(self.requests.items())) or "none"
        return (
            f"listed {self.listed} inbox files, {self.changed} changed since the cursor, hashed {self.hashed};"
            f" skipped: {skipped}; months requested: {months}"
            + (f"; {self.backlog} more changed file(s) left for the next tick" if self.backlog else "")
        )


def changed_files(spec: FileDropCollector, inbox: Path, after: tuple[int, str]) -> tuple[int, list[tuple[int, str]]]:
    """How many files match the inbox pattern, and those changed after ``after`` as ``(change_ns, name)``."""
    listed = 0
    out: list[tuple[int, str]] = []
    matches = re.compile(fnmatch.translate(spec.pattern)).match  # compiled once per tick, not per name
    try:
        entries = os.scandir(inbox)
    except FileNotFoundError:
        return 0, []
    with entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(".part") or not matches(name):
                continue
            try:
                # a symlink is listed (never followed) so that its landing run records the refusal
                if not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while listing
                continue
            listed += 1
            changed = max(st.st_mtime_ns, st.st_ctime_ns)
            if (changed, name) > after:
                out.append((changed, name))
    out.sort()
    return listed, out


class _Manifests:
    """The files each month's landing manifest lists as landed, read once per month and tick."""

    def __init__(self, lake: Lake, source: str) -> None:
        self._lake, self._source = lake, source
        self._landed: dict[str, set[tuple[str, str]]] = {}

    def landed(self, month: str, name: str, sha: str) -> bool:
        """Whether these bytes (``sha``) have landed under ``name`` in ``month``."""
        if month not in self._landed:
            entries = read_manifest(self._lake.landing_month(self._source, month))
            self._landed[month] = {(e.name, e.sha256) for e in entries if e.status == "landed"}
        return (safe_name(name), sha) in self._landed[month]


@dataclass
class _Tick:
    """One tick's decision file by file: the files to request (``plan.requests``, remembered in ``pending``),
    those whose month is still running (``deferred``), and why the others are skipped (``plan.skipped``)."""

    spec: FileDropCollector
    inbox: Path
    manifests: _Manifests
    has_month: Callable[[str], bool]
    may_become_month: Callable[[str], bool] | None
    pending: dict[str, list[str]]
    deferred: dict[str, str]
    plan: TickPlan

    def consider(self, name: str) -> None:
        month = self._partition(name)
        sha = None if month is None else self._new_bytes(name, month)
        if month is None or sha is None:
            return
        self.pending.pop(name, None)
        self.pending[name] = [sha, month]
        self.plan.requests.setdefault(month, []).append((name, sha))

    def _partition(self, name: str) -> str | None:
        """The month partition the file lands in; None when there is none now (a file of a month still
        running is remembered in ``deferred``)."""
        month = file_month(self.spec, name)
        if month is None:
            self._skip("without a month in the name")
            return None
        if not self.has_month(month):
            if self.may_become_month is not None and self.may_become_month(month):
                self.deferred[name] = month
                self._skip("month not over yet")
                return None
            self._skip("month outside the partitions")
            return None
        self.deferred.pop(name, None)
        return month

    def _new_bytes(self, name: str, month: str) -> str | None:
        """The file's sha256 when these bytes have neither landed nor been requested yet, else None."""
        try:
            sha = sha256_file(self.inbox / name)
        except FileNotFoundError:
            self._skip("vanished")
            return None
        self.plan.hashed += 1
        if self.manifests.landed(month, name, sha):
            self._skip("already landed")
            return None
        if self.pending.get(name, [None])[0] == sha:
            self._skip("already requested")
            return None
        return sha

    def _skip(self, why: str) -> None:
        self.plan.skipped[why] += 1


def plan_tick(
    source: SourceSpec,
    inbox: Path,
    lake: Lake,
    cursor: InboxCursor,
    *,
    has_month: Callable[[str], bool],
    may_become_month: Callable[[str], bool] | None = None,
    now_ns: int | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    limit: int = MAX_FILES_PER_TICK,
) -> TickPlan:
    """Decide one tick of ``source``'s inbox sensor (pure apart from reading the inbox and manifests).

    ``has_month(month)``: the month is a partition now. ``may_become_month(month)``: it is not yet but
    will be (the month is still running); such files are remembered in the cursor and requested once
    their month is a partition. Other months are skipped for good.
    """
    spec = source.collector
    assert isinstance(spec, FileDropCollector)
    now_ns = time.time_ns() if now_ns is None else now_ns
    has_month = functools.cache(has_month)  # asked once per month, not once per file
    listed, changed = changed_files(spec, inbox, (cursor.changed_ns, cursor.name))
    settled = [c for c in changed if c[0] <= now_ns - int(settle_seconds * 1e9)]
    batch, backlog = settled[:limit], len(changed) - min(len(settled), limit)
    manifests = _Manifests(lake, source.name)
    # forget requests whose files have landed since
    pending = {name: v for name, v in cursor.pending.items() if not manifests.landed(v[1], name, v[0])}
    plan = TickPlan(
        requests={}, cursor=cursor, listed=listed, changed=len(changed), skipped=dict.fromkeys(SKIP_REASONS, 0), backlog=backlog
    )
    deferred = dict(cursor.deferred)
    # files of a month that was still running: their turn comes when the month is a partition
    in_batch = {n for _, n in batch}
    due = [name for name, month in deferred.items() if has_month(month) and name not in in_batch]
    for name in due:
        del deferred[name]
    tick = _Tick(spec, inbox, manifests, has_month, may_become_month, pending, deferred, plan)
    for name in [*due, *(n for _, n in batch)]:
        tick.consider(name)
    if len(pending) > MAX_PENDING:  # keep the newest requests
        pending = dict(list(pending.items())[-MAX_PENDING:])
    last = batch[-1] if batch else (cursor.changed_ns, cursor.name)
    plan.cursor = InboxCursor(changed_ns=last[0], name=last[1], pending=pending, deferred=deferred)
    return plan
