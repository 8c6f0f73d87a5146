"""ML assets from ``configs/ml/<pipeline>.yaml``; ``kind`` selects the builder.

``consumption_forecast``    features → labels → split (+ leakage check) → one asset per model → champion
                            (+ gates) → monthly predictions (:mod:`lakehouse.factories.ml_forecast`)
``meter_anomaly``           drift (+ warning check) → anomaly detector → monthly flagged meter-days
                            (:mod:`lakehouse.factories.ml_anomaly`)
``consumption_regression``  one regressor on calendar and past-target features, checked against "same as
                            yesterday" (below)

Assets that learn from history depend on every month of their input (``AllPartitionMapping``) and read
Delta directly, recording the version they read; derived tables are written with their lineage in the
Delta commit, models as versioned folders under ``ml/<pipeline>/models/``. The computation lives in
:mod:`lakehouse.ml`; these modules declare the assets and turn results into metadata.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg

from lakehouse.factories.common import LakeResource, escape_md, key, spec_version, table_key
from lakehouse.factories.ml_anomaly import build_meter_anomaly
from lakehouse.factories.ml_common import md_images
from lakehouse.factories.ml_forecast import build_consumption_forecast
from lakehouse.ml import consumption
from lakehouse.ml.models import ref_of, version_name
from lakehouse.specs.ml import PipelineSpec, RegressionPipeline
from lakehouse.specs.models import Project

BASELINE_CHECK = "beats_yesterday"


def build_consumption_model(project: Project, spec: RegressionPipeline) -> list[dg.AssetsDefinition]:
    """The regressor's one asset: trained on every month of its input, a new model version per run."""
    asset_key = key("ml", spec.name)

    @dg.asset(
        key=asset_key,
        ins={"daily": dg.AssetIn(key=table_key(spec.input), partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing)},
        group_name="ml",
        description=escape_md(spec.description) or f"Regressor trained on every month of {spec.input}.",
        kinds={"sklearn", "python"},
        tags={"zone": "ml"},
        code_version=spec_version(spec),
        check_specs=[
            dg.AssetCheckSpec(
                BASELINE_CHECK,
                asset=asset_key,
                description="The model's validation RMSE is below that of the naive forecast 'same as yesterday' "
                "(lag_1) on the same validation days; a model that does not beat it warns.",
            )
        ],
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        s = consumption.train_version(
            root, spec.name, spec.input, spec.params, root.uri("ml", spec.name, "models"), context.run.run_id
        )
        metrics = s.trained.metrics
        context.log.info(f"ml/{spec.name}: {metrics} (yesterday's value: rmse {s.baseline_rmse:.3f}) -> {s.folder}")
        return dg.MaterializeResult(
            metadata={
                **{k: float(v) if isinstance(v, float) else v for k, v in metrics.items()},
                "baseline_rmse": s.baseline_rmse,
                "plots": md_images(root, s.plots),
                **{f"plot_{name}": dg.MetadataValue.path(path) for name, path in s.plots.items()},
                "model_dir": ref_of(root.storage, s.folder),
                "model_version": version_name(s.folder),
                "input_delta_version": s.input_version,
                "lineage": dg.MetadataValue.json(s.lineage),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=BASELINE_CHECK,
                    passed=metrics["rmse"] < s.baseline_rmse,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=f"validation RMSE {metrics['rmse']:.3f} vs {s.baseline_rmse:.3f} for yesterday's value",
                    metadata={"rmse": metrics["rmse"], "baseline_rmse": s.baseline_rmse},
                )
            ],
        )

    return [_model]


BUILDERS: dict[str, Callable[[Project, Any], list[dg.AssetsDefinition]]] = {
    "consumption_regression": build_consumption_model,
    "consumption_forecast": build_consumption_forecast,
    "meter_anomaly": build_meter_anomaly,
}


def build_pipeline_assets(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    try:
        builder = BUILDERS[spec.kind]
    except KeyError:
        raise ValueError(f"ml pipeline {spec.name!r}: unknown kind {spec.kind!r}; known: {sorted(BUILDERS)}") from None
    return builder(project, spec)
