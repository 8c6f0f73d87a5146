"""Specs → Dagster objects, one module per zone. :func:`build_definitions` assembles a project."""

from __future__ import annotations

import dagster as dg

from lakehouse.factories.automation import apply_policy, automation_sensor, run_tags
from lakehouse.factories.common import resources
from lakehouse.factories.exploitation import build_view_asset
from lakehouse.factories.formatted import build_formatted_asset
from lakehouse.factories.landing import build_landing_asset
from lakehouse.factories.maintenance import build_maintenance
from lakehouse.factories.ml import build_pipeline_assets
from lakehouse.factories.sensors import build_landing_automation
from lakehouse.factories.trusted import build_trusted_asset
from lakehouse.specs.models import Project


def build_assets(project: Project) -> list[dg.AssetsDefinition]:
    assets: list[dg.AssetsDefinition] = []
    for source in project.sources:
        assets.append(build_landing_asset(project, source))
        assets.append(build_formatted_asset(project, source))
        assets.append(build_trusted_asset(project, source))
    for view in project.views:
        assets.append(build_view_asset(project, view))
    for pipeline in project.pipelines:
        assets.extend(build_pipeline_assets(project, pipeline))
    return assets


def build_definitions(project: Project, *, months_per_run: int | None = None) -> dg.Definitions:
    """Every asset, resource and automation of ``project``.

    Runs execute in one process (``in_process_executor``): a Spark session is slow to start, so all
    Spark steps of a run share one (or a Spark Connect server, see ``spark.remote``).

    Project-wide policy (automation conditions, freshness, backfill policy) is applied here, once, by
    :func:`lakehouse.factories.automation.apply_policy`; ``months_per_run`` switches zone backfills from
    one run per asset range to runs of that many months.
    """
    assets = apply_policy(project, build_assets(project), months_per_run=months_per_run)
    maintenance_job, maintenance_schedule = build_maintenance(
        [k for a in assets for k in a.keys],
        tags=run_tags(project),
        staged_orphan_age_h=project.lakehouse.limits.staged_orphan_age_h,
    )
    landing = build_landing_automation(project)  # inbox sensors + monthly schedules of the sources
    return dg.Definitions(
        assets=assets,
        jobs=[maintenance_job, *landing.jobs],
        schedules=[maintenance_schedule, *landing.schedules],
        sensors=[automation_sensor(project), *landing.sensors],
        resources=resources(project),
        executor=dg.in_process_executor,
    )
