"""The only merge point: ``configs/lakehouse.yaml`` and its declarations (the components of ``lakehouse/defs``,
cross-references checked as they load) → one ``Definitions`` under project-wide policy, for ``workspace.yaml``
and ``dg`` (``[tool.dg.project]`` in pyproject.toml)."""

from lakehouse import settings
from lakehouse.factories import build_definitions

defs = build_definitions(settings.load(), months_per_run=settings.backfill_months_per_run())
