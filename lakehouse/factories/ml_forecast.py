"""The assets of a ``consumption_forecast`` pipeline: features → labels → split (+ leakage and range
checks) → one asset per model → champion (+ gates) → monthly predictions.

The computation is in :mod:`lakehouse.ml` (plain functions the ``reproduce`` command calls too); these
functions declare the assets and turn results into Dagster metadata and check results.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa

from lakehouse.factories.common import LakeResource, monthly, months_of, spec_version, table_key
from lakehouse.factories.ml_common import PipelineAssets, frame_table, md_images, plain_number
from lakehouse.io.lake import Lake
from lakehouse.ml import champion
from lakehouse.ml import pipeline as fp
from lakehouse.ml.lineage import code_version, normalized_hash
from lakehouse.ml.models import load_model, ref_of, resolve, version_name
from lakehouse.specs.ml import ForecastPipeline
from lakehouse.specs.models import Project

LEAK_CHECK, RANGE_CHECK = "no_validation_leak", "drivers_within_training_range"
GATE_CHECK, DRIFT_CHECK = "not_worse_than_current", "no_severe_drift"


@dataclass(frozen=True)
class _Forecast(PipelineAssets):
    """A model's versions are ``ml/<prefix>_<model>/models/vNNNN``, the champion pointer
    ``ml/<prefix>_champion/champion.json``."""

    params: fp.ForecastParams

    @property
    def tables(self) -> champion.Tables:
        return champion.Tables(f"{self.prefix}_features", f"{self.prefix}_labels", f"{self.prefix}_split")

    def models_folder(self, lake: Lake, name: str) -> str:
        return lake.uri("ml", f"{self.prefix}_{name}", "models")

    def pointer(self, lake: Lake) -> str:
        return lake.uri("ml", f"{self.prefix}_champion", "champion.json")


def build_consumption_forecast(project: Project, spec: ForecastPipeline) -> list[dg.AssetsDefinition]:
    """Every asset of one forecasting pipeline (each factory call builds its own assets)."""
    f = _Forecast(project, spec, spec.prefix, spec.params)
    models = [_model_asset(f, name) for name in f.params.models]
    return [
        _features_asset(f),
        _labels_asset(f),
        _split_asset(f),
        *models,
        _champion_asset(f, [m.key for m in models]),
        _predictions_asset(f),
    ]


def _features_asset(f: _Forecast) -> dg.AssetsDefinition:
    p, spec = f.params, f.spec
    return _from_input_asset(
        f,
        "features",
        f"Features per {' and '.join([*p.columns.entity, 'day'])} from every month of {spec.input}: drivers and "
        "HDD/CDD, the columns the pipeline carries, and target history (lags, rolling means, energy signature) "
        "from earlier days only.",
        lambda daily: fp.features_from(daily, p),
        {"features": p.raw.get("features", {}), "labels": p.raw.get("labels", {})},
        lambda feats: {"features": [c for c in feats.columns if c not in (*p.columns.key, "month")]},
    )


def _labels_asset(f: _Forecast) -> dg.AssetsDefinition:
    p = f.params

    def excluded(labels: pd.DataFrame) -> dict[str, Any]:
        reasons = labels.loc[~labels["label_ok"], "reason"].value_counts().to_dict()
        return {
            "label_ok": int(labels["label_ok"].sum()),
            "excluded_by_reason": dg.MetadataValue.json({k: int(v) for k, v in reasons.items()}),
        }

    return _from_input_asset(
        f,
        "labels",
        f"Labels: each day's `{p.columns.target}`, and whether it is a trustworthy label (its drivers present and "
        "every declared label rule holding); an excluded day names the rule it broke.",
        lambda daily: fp.labels_from(daily, p),
        {"labels": p.raw.get("labels", {})},
        excluded,
    )


def _from_input_asset(
    f: _Forecast,
    part: str,
    description: str,
    compute: Callable[[pd.DataFrame], pd.DataFrame],
    params: dict[str, Any],
    figures: Callable[[pd.DataFrame], dict[str, Any]],
) -> dg.AssetsDefinition:
    """An ``ml/<prefix>_<part>`` table computed from every month of the input, with its lineage."""
    spec = f.spec

    @dg.asset(key=f.key(part), ins=f.all_months, description=description, kinds={"pandas", "delta"}, **f.common)
    def _table(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        daily, version = fp.read_input(root, spec.input)
        out = compute(daily)
        lineage = {
            "inputs": fp.input_lineage(spec.input, version, sorted(daily["month"].unique())),
            "code_version": code_version(),
            "params": params,
            "hash": normalized_hash(out, f.params.columns.key),
        }
        out_version = fp.write_table(root, f"{f.prefix}_{part}", out, lineage)
        return dg.MaterializeResult(
            metadata={
                "rows": len(out),
                "dagster/row_count": len(out),
                **figures(out),
                "delta_version": out_version,
                "input_delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            }
        )

    return _table


def _split_asset(f: _Forecast) -> dg.AssetsDefinition:
    p, spec, t = f.params, f.spec, f.tables
    k_split = f.key("split")

    @dg.asset(
        key=k_split,
        deps=[f.key("features"), f.key("labels")],
        description="Time-based split: the last months validate, earlier months train (every validation day "
        "after every training day). The blocking check proves no validation day reached a training feature.",
        kinds={"pandas", "delta"},
        check_specs=[
            dg.AssetCheckSpec(
                LEAK_CHECK,
                asset=k_split,
                blocking=True,
                description="Training features recomputed from the history cut at the first validation day are "
                "identical to the stored ones; no training day on/after the cut; no row in both sets.",
            ),
            dg.AssetCheckSpec(
                RANGE_CHECK,
                asset=k_split,
                description="Every validation row's drivers (temperature, HDD/CDD, declared drivers) lie within the "
                "training range (warns: models, trees above all, extrapolate poorly).",
            ),
        ],
        **f.common,
    )
    def _split(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        labels, lab_lineage, lab_version = fp.read_table(root, t.labels)
        feats, feat_lineage, feat_version = fp.read_table(root, t.features)
        split, info = fp.split_from(labels, p)
        src = feat_lineage["inputs"][spec.input]["delta_version"]
        if lab_lineage["inputs"][spec.input]["delta_version"] != src:
            raise dg.Failure(
                f"features (from {spec.input} v{src}) and labels (v{lab_lineage['inputs'][spec.input]['delta_version']}) "
                "were computed from different versions: materialize both again"
            )
        lineage = {
            "inputs": {
                spec.input: {"delta_version": src},
                f"ml/{t.features}": {"delta_version": feat_version},
                f"ml/{t.labels}": {"delta_version": lab_version},
            },
            "code_version": code_version(),
            "params": {"split": p.raw.get("split", {})},
            "cut": info,
            "hash": normalized_hash(split, p.columns.key),
        }
        version = fp.write_table(root, t.split, split, lineage)
        # the proof: recompute the training features in a world where the validation days never happened
        daily, _ = fp.read_input(root, spec.input, version=src)
        report = fp.leakage_from(daily, feats, split, info["cut_date"], p)
        context.log.info(f"leakage check: {report}")
        ranges = fp.extrapolation_from(feats, split, p)
        return dg.MaterializeResult(
            metadata={
                **{k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in info.items()},
                "delta_version": version,
                "lineage": dg.MetadataValue.json(lineage),
            },
            check_results=[_leak_result(report, info["cut_date"]), _range_result(ranges)],
        )

    return _split


def _leak_result(report, cut_date: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=LEAK_CHECK,
        passed=report.passed,
        metadata={
            "train_rows_checked": report.train_rows_checked,
            "leaking_rows": report.leaking_rows,
            "leaking_features": dg.MetadataValue.json(report.leaking_features),
            "overlap_rows": report.overlap_rows,
            "train_days_on_or_after_cut": report.train_after_cut,
            "cut_date": cut_date,
            "samples": dg.MetadataValue.json(json.loads(json.dumps(report.samples, default=str))),
        },
    )


def _range_result(ranges: dict[str, dict[str, Any]]) -> dg.AssetCheckResult:
    outside = {d: r["validation_rows_outside"] for d, r in ranges.items() if r["validation_rows_outside"]}
    return dg.AssetCheckResult(
        check_name=RANGE_CHECK,
        passed=not outside,
        severity=dg.AssetCheckSeverity.WARN,
        description=("validation rows outside the training range: " + ", ".join(f"{d}: {n}" for d, n in outside.items()))
        if outside
        else "every validation driver lies within the training range",
        metadata={"ranges": dg.MetadataValue.json(ranges), "rows_outside": dg.MetadataValue.json(outside)},
    )


def _model_asset(f: _Forecast, name: str) -> dg.AssetsDefinition:
    """One trained model of the pipeline (a separate function: each call builds exactly one asset)."""
    p, spec = f.params, f.spec
    cfg = p.models[name]

    @dg.asset(
        key=f.key(name),
        deps=[f.key("split")],
        group_name="ml",
        tags={"zone": "ml", "pipeline": spec.name},
        code_version=spec_version(spec),
        description=f"`{cfg.type}` model `{name}` trained on the training rows, scored on the validation rows"
        + (f" with {p.cv.folds}-fold {p.cv.kind} CV on the training rows (the same folds for every model)." if cfg.cv else ".")
        + " Versioned folder under the lake with model, lineage, metrics and plots.",
        kinds={"pytorch"} if cfg.type == "torch_mlp" else {"sklearn"},
    )
    def _model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        done = fp.train_version(root, cfg, p, spec.name, spec.input, f.tables, f.models_folder(root, name), context.run.run_id)
        context.log.info(f"ml/{f.prefix}_{name}: {done.run.metrics} -> {done.folder}")
        shown = {k: v for k, v in done.lineage.items() if k != "cv_folds"}
        return dg.MaterializeResult(
            metadata={
                **{k: plain_number(v) for k, v in done.run.metrics.items()},
                "per_month": frame_table(done.run.per_month, 3),
                **({"cv": frame_table(pd.DataFrame(done.run.cv), 3)} if done.run.cv else {}),
                "plots": md_images(root, done.plots),
                **{f"plot_{k}": dg.MetadataValue.path(path) for k, path in done.plots.items()},
                "model_dir": ref_of(root.storage, done.folder),
                "model_version": version_name(done.folder),
                "lineage": dg.MetadataValue.json(json.loads(json.dumps(shown, default=str))),
            }
        )

    return _model


def _champion_asset(f: _Forecast, model_keys: list[dg.AssetKey]) -> dg.AssetsDefinition:
    p = f.params
    k_champion = f.key("champion")
    drift_table = p.champion.drift_table

    @dg.asset(
        key=k_champion,
        deps=[*model_keys, *([table_key(drift_table)] if drift_table else [])],
        description=f"The model to deploy: the candidate with the lowest {p.champion_metric} (every candidate "
        "scored on the same rows, or the same CV folds). Promoted only when it is not worse than the current "
        "champion on the same rows and no severe drift was detected.",
        kinds={"python"},
        check_specs=[
            dg.AssetCheckSpec(
                GATE_CHECK,
                asset=k_champion,
                blocking=True,
                description="The new champion's validation RMSE is not worse than the current one's.",
            ),
            dg.AssetCheckSpec(
                DRIFT_CHECK,
                asset=k_champion,
                blocking=True,
                description="No severe drift (PSI) in the months the champion is validated on or serves.",
            ),
        ],
        **f.common,
    )
    def _champion(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        try:
            choice = champion.choose(root, p, lambda name: f.models_folder(root, name), f.pointer(root), f.tables)
        except champion.ChoiceError as exc:
            raise dg.Failure(str(exc)) from None
        for note in choice.notes:
            context.log.warning(note)
        pick = choice.pick
        if choice.promoted:
            champion.write_pointer(
                root.storage,
                f.pointer(root),
                {
                    "model": pick.name,
                    "model_dir": ref_of(root.storage, pick.model_dir),  # relative to the lake: a moved lake finds it
                    "rmse": float(pick.metrics["rmse"]),
                    "metric": p.champion_metric,
                    "score": pick.rmse,
                    "metrics": pick.metrics,
                    "run_id": context.run.run_id,
                },
            )
        return _champion_result(root, choice, p.champion_metric, p.champion.tolerance)

    return _champion


def _champion_result(root: Lake, choice: champion.Choice, metric: str, tolerance: float) -> dg.MaterializeResult:
    pick, gate = choice.pick, choice.gate
    shown = ("rmse", "mae", "r2", "cv_rmse", "cv_r2")
    table = pd.DataFrame(
        [
            {"model": c.name, "version": version_name(c.model_dir), **{k: c.metrics.get(k, float("nan")) for k in shown}}
            for c in choice.candidates
        ]
    )
    drift = {k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in choice.drift.items()}
    return dg.MaterializeResult(
        metadata={
            "champion": pick.name,
            "model_dir": ref_of(root.storage, pick.model_dir),
            "rmse": float(pick.metrics["rmse"]),
            "metric": metric,
            "score": pick.rmse,
            "promoted": choice.promoted,
            "current_champion_rmse": choice.current_rmse if choice.current_rmse is not None else "none",
            "candidates": frame_table(table, 4),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=GATE_CHECK,
                passed=gate.passed,
                description=gate.reason,
                metadata={
                    "candidate_rmse": gate.candidate_rmse,
                    "current_rmse": gate.current_rmse if gate.current_rmse is not None else "none",
                    "tolerance": tolerance,
                },
            ),
            dg.AssetCheckResult(check_name=DRIFT_CHECK, passed=choice.drift_ok, metadata=drift),
        ],
    )


def _predictions_asset(f: _Forecast) -> dg.AssetsDefinition:
    spec = f.spec

    @dg.asset(
        key=f.key("predictions"),
        deps=[f.key("champion")],
        ins=f.months_back(13),
        partitions_def=monthly(f.project),
        backfill_policy=dg.BackfillPolicy.single_run(),
        description="Day-ahead consumption predictions of the current champion for each meter and day of the "
        "month (features from the 13 months before it). `sample` says whether the month was training, "
        "validation or new data for the model; `has_history` is false in a meter's first weeks (no energy "
        "signature yet, the prediction is a fallback).",
        kinds={"python", "delta"},
        **f.common,
    )
    def _predictions(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        root = lake.lake
        current = champion.read_pointer(root.storage, f.pointer(root))
        if current is None:
            raise dg.Failure("no champion has been promoted yet: materialize the champion first")
        model_dir = resolve(root.storage, current["model_dir"])
        model, lineage = load_model(root.storage, model_dir)
        version, by_month = fp.predictions(root, spec.input, model, lineage, version_name(model_dir), months_of(context))
        for month, out in by_month:
            v = root.overwrite_month("ml", f"{f.prefix}_predictions", pa.Table.from_pandas(out, preserve_index=False), month)
            # the month's own figures; the range's are in the run's log
            context.add_asset_metadata(
                {
                    "rows": len(out),
                    "dagster/row_count": len(out),
                    "rmse": fp.rmse_of(out),
                    "sample": out["sample"].iloc[0],
                    "delta_version": v,
                },
                partition_key=month,
            )
        context.log.info(f"ml/{f.prefix}_predictions: {sum(len(out) for _, out in by_month)} rows over {len(by_month)} month(s)")
        return dg.MaterializeResult(
            metadata={"model": lineage["model"], "model_dir": ref_of(root.storage, model_dir), "input_delta_version": version}
        )

    return _predictions
