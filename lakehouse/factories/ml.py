"""ML assets from ``configs/ml/<pipeline>.yaml``; ``kind`` selects the builder."""


from collections.abc import Callable

import dagster as dg

from lakehouse import __version__
from lakehouse.factories.common import LakeResource, key
from lakehouse.ml import consumption
from lakehouse.ml.models import save_model
from lakehouse.specs.models import PipelineSpec, Project


def build_consumption_model(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    zone, table = spec.input.split("/")
    validation_months = int(spec.params.get("validation_months", 3))
    model_params = dict(spec.params.get("model", {}))
    seed = int(spec.params.get("seed", 0))

    @dg.asset(
        key=key("ml", spec.name),
        ins={"daily": dg.AssetIn(key=key(zone, table), partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing)},
        group_name="ml",
        description=spec.description or f"Regressor trained on every month of {spec.input}.",
        kinds={"sklearn", "python"},
        tags={"zone": "ml"},
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        version = root.version(zone, table)
        daily = root.read_arrow(zone, table, version=version).to_pandas()
        features = consumption.daily_features(daily)
        train, valid = consumption.time_split(features, validation_months)
        trained = consumption.train_regressor(train, valid, model_params, seed=seed)
        lineage = {
            "inputs": {spec.input: {"delta_version": version, "months": sorted(daily["month"].unique().tolist())}},
            "code_version": __version__,
            "run_id": context.run_id,
            "params": spec.params,
            "metrics": trained.metrics,
        }
        folder = save_model(root.table_path("ml", spec.name) / "models", trained.model, lineage)
        context.log.info(f"ml/{spec.name}: {trained.metrics} -> {folder}")
        return dg.MaterializeResult(
            metadata={
                **{k: float(v) if isinstance(v, float) else v for k, v in trained.metrics.items()},
                "model_path": dg.MetadataValue.path(str(folder)),
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            }
        )

    return [_model]


BUILDERS: dict[str, Callable[[Project, PipelineSpec], list[dg.AssetsDefinition]]] = {
    "consumption_regression": build_consumption_model,
}


def build_pipeline_assets(project: Project, spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    try:
        builder = BUILDERS[spec.kind]
    except KeyError:
        raise ValueError(f"ml pipeline {spec.name!r}: unknown kind {spec.kind!r}; known: {sorted(BUILDERS)}") from None
    return builder(project, spec)
