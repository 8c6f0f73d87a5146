"""Specs → Dagster objects, one module per zone. :func:`build_definitions` assembles a project."""

from __future__ import annotations

import dagster as dg

from lakehouse.factories.common import resources
from lakehouse.factories.exploitation import build_view_asset
from lakehouse.factories.formatted import build_formatted_asset
from lakehouse.factories.landing import build_landing_asset
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


def build_definitions(project: Project) -> dg.Definitions:
    """Every asset, resource and automation of ``project``.

    Runs execute in one process (``in_process_executor``): a Spark session costs 15-19 s to start, so all
    Spark steps of a run share one (or a Spark Connect server, see ``spark.remote``).
    """
    landing = build_landing_automation(project)  # inbox sensors + monthly schedules of the sources
    return dg.Definitions(
        assets=build_assets(project),
        jobs=landing.jobs,
        schedules=landing.schedules,
        sensors=landing.sensors,
        resources=resources(project),
        executor=dg.in_process_executor,
    )
