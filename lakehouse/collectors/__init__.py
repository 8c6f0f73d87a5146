"""Collectors fetch a source's raw bytes for one month and land them. No Spark, no Dagster here.

:func:`fetch` dispatches on the collector ``type`` of a source spec (``file_drop``, ``http``, ``sql``,
``library``); adding a source of an existing type needs only its YAML file. Every failure is a
:class:`CollectorError` naming the source, the month and the cause. Fetching completes before anything
lands, and :func:`collect` lands each file atomically and exactly once; bytes a provider sent that were
rejected (truncated, an HTML page instead of data) are kept under ``<month>/_rejected/`` for inspection and
never become a landed file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from lakehouse.collectors import file_drop, http, library, sql
from lakehouse.collectors.base import Fetched
from lakehouse.collectors.landing import (
    CollectorError,
    ManifestEntry,
    Month,
    digest,
    land_many,
    read_manifest,
    safe_name,
)
from lakehouse.specs.models import FileDropCollector, Project, SourceSpec
from lakehouse.transforms.records import delivery_months


@dataclass
class CollectResult:
    month: str
    landed: list[ManifestEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    manifest: list[ManifestEntry] = field(default_factory=list)
    #: inbox entries that are not deliveries (symlinks, devices), with the reason; recorded under ``_rejected/``
    refused: list[tuple[str, str]] = field(default_factory=list)


REJECTED = "_rejected"


def fetch(project: Project, source: SourceSpec, month: str) -> list[Fetched]:
    """Every file ``source`` delivers for ``month``, complete: in memory, or a regular inbox file that
    landing streams (nothing is written here)."""
    spec = source.collector
    if spec.type == "file_drop":
        try:
            return list(file_drop.fetch(spec, project.resolve(spec.inbox), month))
        except file_drop.InboxMissing as exc:
            raise CollectorError(f"source {source.name!r} month {month}: {exc} (collector.inbox: {spec.inbox!r})") from None
        except OSError as exc:
            raise CollectorError(f"source {source.name!r} month {month}: cannot read the inbox: {exc}") from None
    if spec.type == "http":
        return list(http.fetch(spec, month, source=source.name))
    if spec.type == "sql":
        return list(sql.fetch(spec, month, root=project.root, source=source.name))
    if spec.type == "library":
        return list(library.fetch(spec, month, source=source.name))
    raise CollectorError(f"source {source.name!r} month {month}: collector type {spec.type!r} is not available")


def keep_rejected(month_dir: Month, name: str, data: bytes) -> str:
    """Keep bytes that arrived but were rejected, under ``_rejected/`` (ignored by Spark and the manifest)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    uri = month_dir.file(REJECTED, f"{stamp}_{safe_name(name)}")
    month_dir.storage.write(uri, data)
    return uri


def _other_months(month_dir: Month) -> list[Month]:
    """The other month folders of the same source's landing zone."""
    source = Month(month_dir.storage, month_dir.uri.rsplit("/", 1)[0])
    return [m for m in source.months() if m.uri != month_dir.uri]


def collect(project: Project, source: SourceSpec, month: str, month_dir: Month) -> CollectResult:
    """Fetch ``source`` for ``month`` and land each file exactly once in ``month_dir``."""
    result = CollectResult(month=month)
    try:
        fetched = fetch(project, source, month)
    except http.RejectedResponse as exc:
        if exc.data:
            kept = keep_rejected(month_dir, exc.name, exc.data)
            raise CollectorError(f"{exc}; the rejected bytes are kept in {kept}") from None
        raise
    drop = source.collector if isinstance(source.collector, FileDropCollector) else None
    inbox = project.resolve(drop.inbox) if drop is not None else None
    if drop is not None and inbox is not None and inbox.is_dir():  # fetch() above reported a missing inbox
        for path, why in file_drop.inbox_entries(drop, inbox, month)[1]:
            kept = keep_rejected(month_dir, f"{path.name}.refused.txt", f"{path}: {why}\n".encode())
            result.refused.append((path.name, f"{why} (recorded in {kept})"))
    months_of = None
    if source.spans_months:
        # a delivery that spans months lands once for the source, not once per month it is fetched for
        elsewhere = {e.sha256 for m in _other_months(month_dir) for e in read_manifest(m) if e.status == "landed"}
        result.skipped += [item.name for item in fetched if digest(item.body)[0] in elsewhere]
        fetched = [item for item in fetched if digest(item.body)[0] not in elsewhere]
        months_of = lambda data: delivery_months(data, source)  # noqa: E731
    items = [(item.name, item.body, item.origin) for item in fetched]
    for item, entry in zip(fetched, land_many(month_dir, items, fmt=source.format, months_of=months_of), strict=True):
        if entry is None:
            result.skipped.append(item.name)
        else:
            result.landed.append(entry)
    result.manifest = read_manifest(month_dir)
    return result
