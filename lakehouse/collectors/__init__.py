"""Collectors fetch a source's raw bytes for one month and land them. No Spark, no Dagster here.

:func:`collect` dispatches on the collector ``type`` of a source spec; adding a source of an existing
type needs only its YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lakehouse.collectors import file_drop
from lakehouse.collectors.base import Fetched
from lakehouse.collectors.landing import CollectorError, ManifestEntry, land, read_manifest
from lakehouse.specs.models import Project, SourceSpec


@dataclass
class CollectResult:
    month: str
    landed: list[ManifestEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    manifest: list[ManifestEntry] = field(default_factory=list)


def fetch(project: Project, source: SourceSpec, month: str) -> list[Fetched]:
    spec = source.collector
    if spec.type == "file_drop":
        return list(file_drop.fetch(spec, project.resolve(spec.inbox), month))
    raise CollectorError(f"source {source.name!r}: collector type {spec.type!r} is not available")


def collect(project: Project, source: SourceSpec, month: str, month_dir: Path) -> CollectResult:
    """Fetch ``source`` for ``month`` and land each file exactly once in ``month_dir``."""
    result = CollectResult(month=month)
    for item in fetch(project, source, month):
        entry = land(month_dir, item.name, item.data, origin=item.origin, header=source.format.header)
        if entry is None:
            result.skipped.append(item.name)
        else:
            result.landed.append(entry)
    result.manifest = read_manifest(month_dir)
    return result
