"""ML assets from ``lakehouse/defs/ml/<pipeline>/defs.yaml``; ``kind`` selects the builder.

``consumption_forecast``    features → labels → split (+ leakage check) → one asset per model → champion
                            (+ gates) → monthly predictions (:mod:`lakehouse.factories.ml_forecast`)
``meter_anomaly``           drift (+ warning check) → anomaly detector → monthly flagged meter-days
                            (:mod:`lakehouse.factories.ml_anomaly`)

Assets that learn from history depend on every month of their input (``AllPartitionMapping``) and read
Delta directly, recording the version they read; derived tables are written with their lineage in the
Delta commit, models as versioned folders under ``ml/<pipeline>/models/``. The computation lives in
:mod:`lakehouse.ml`; these modules declare the assets and turn results into metadata.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg

from lakehouse.factories.ml_anomaly import build_meter_anomaly
from lakehouse.factories.ml_forecast import build_consumption_forecast
from lakehouse.specs.ml import PipelineSpec
from lakehouse.specs.models import Project

BUILDERS: dict[str, Callable[[Project, Any], list[dg.AssetsDefinition]]] = {
    "consumption_forecast": build_consumption_forecast,
    "meter_anomaly": build_meter_anomaly,
}


def build_pipeline_assets(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    try:
        builder = BUILDERS[spec.kind]
    except KeyError:
        raise ValueError(f"ml pipeline {spec.name!r}: unknown kind {spec.kind!r}; known: {sorted(BUILDERS)}") from None
    return builder(project, spec)
