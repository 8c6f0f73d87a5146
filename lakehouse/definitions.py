"""The only merge point: the project's configs → one ``Definitions`` for ``dagster dev`` / ``workspace.yaml``."""

from lakehouse import settings
from lakehouse.factories import build_definitions

defs = build_definitions(settings.load(), months_per_run=settings.backfill_months_per_run())
