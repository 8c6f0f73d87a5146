"""Specs → Dagster objects, one module per zone. :func:`build_definitions` assembles a project from its
components (:mod:`lakehouse.components`) and applies project-wide policy."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from pathlib import Path

import dagster as dg

from lakehouse.factories.automation import apply_policy, automation_sensor, run_tags
from lakehouse.factories.common import resources
from lakehouse.factories.maintenance import build_maintenance
from lakehouse.specs.models import Project

#: the package's own defs folder (``[tool.dg.project]``); any other folder is loaded as a module of its own
PACKAGE_DEFS = Path(__file__).resolve().parent.parent / "defs"


def _defs_module(defs_dir: Path) -> types.ModuleType:
    """The module Dagster's component tree walks: ``lakehouse.defs``, or one standing for another folder."""
    if defs_dir.resolve() == PACKAGE_DEFS:
        return importlib.import_module("lakehouse.defs")
    name = f"lakehouse_defs_{abs(hash(str(defs_dir)))}"
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__file__ = str(defs_dir / "__init__.py")
    module.__path__ = [str(defs_dir)]
    sys.modules[name] = module
    return module


def build_assets(project: Project) -> dg.Definitions:
    """The definitions of every component of the project's defs folder (its sources, views and pipelines)."""
    from lakehouse.components import building  # components import the zone factories

    tree = dg.ComponentTree(defs_module=_defs_module(project.defs_dir), project_root=project.root)
    # as Dagster's own load_from_defs_folder does: the tree's code references are beta, not the project's choice
    with building(project), warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.build_defs()


def build_definitions(project: Project, *, months_per_run: int | None = None) -> dg.Definitions:
    """Every asset, resource and automation of ``project``: its components' definitions under project-wide policy.

    Runs execute in one process (``in_process_executor``): a Spark session is slow to start, so all
    Spark steps of a run share one (or a Spark Connect server, see ``spark.remote``).

    Project-wide policy (automation conditions, freshness, backfill policy) is applied here, once, by
    :func:`lakehouse.factories.automation.apply_policy`; ``months_per_run`` switches zone backfills from
    one run per asset range to runs of that many months.
    """
    components = build_assets(project)
    built = [a for a in components.assets or [] if isinstance(a, dg.AssetsDefinition)]
    assets = apply_policy(project, built, months_per_run=months_per_run)
    maintenance_job, maintenance_schedule = build_maintenance(
        [k for a in assets for k in a.keys],
        tags=run_tags(project),
        staged_orphan_age_h=project.lakehouse.limits.staged_orphan_age_h,
    )
    return dg.Definitions(
        assets=assets,
        jobs=[maintenance_job, *(components.jobs or [])],
        schedules=[maintenance_schedule, *(components.schedules or [])],
        sensors=[automation_sensor(project), *(components.sensors or [])],
        resources=resources(project),
        executor=dg.in_process_executor,
        # the component tree and the component types' catalogue, for the UI and `dg`
        metadata=components.metadata,
        component_tree=components.component_tree,
    )
