"""The consumption-forecasting pipeline as plain functions over frames: the Dagster assets and the
``reproduce`` command call the same code, so a reproduction is the same computation on the same data.

Parameters (``configs/ml/<pipeline>.yaml`` → ``params``)::

    seed: 0
    features: {...}          FeatureConfig
    labels: {...}            LabelConfig
    split: {...}             SplitConfig
    cv: {folds: 10}
    models:
      gbm: {type: sklearn_gbm, features: [...], cv: true, params: {...}}
      mlp: {type: torch_mlp, features: [...], params: {...}}
    champion: {tolerance: 0.0, drift_table: ml/meter_drift, drift_features: [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakehouse.io.lake import Lake
from lakehouse.ml import evaluate, forecast, train
from lakehouse.ml.lineage import code_version, frame_hash

LINEAGE_KEY = "lakehouse.lineage"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    type: str
    features: tuple[str, ...]
    params: dict[str, Any]
    cv: bool = False
    #: a feature column the model corrects (learns target / baseline) instead of predicting from scratch
    baseline: str | None = None

    @property
    def columns(self) -> list[str]:
        return train.input_columns(self.features, self.baseline)

    @classmethod
    def of(cls, name: str, raw: dict[str, Any]) -> ModelConfig:
        raw = dict(raw)
        unknown = sorted(set(raw) - {"type", "features", "params", "cv", "baseline"})
        if unknown:
            raise ValueError(f"model {name!r}: unknown key(s) {unknown}")
        if raw.get("type") not in train.MODEL_TYPES:
            raise ValueError(f"model {name!r}: type must be one of {train.MODEL_TYPES}, got {raw.get('type')!r}")
        if not raw.get("features"):
            raise ValueError(f"model {name!r}: 'features' lists the feature columns it uses")
        return cls(
            name, raw["type"], tuple(raw["features"]), dict(raw.get("params", {})), bool(raw.get("cv", False)), raw.get("baseline")
        )


@dataclass(frozen=True)
class ForecastParams:
    seed: int
    features: forecast.FeatureConfig
    labels: forecast.LabelConfig
    split: forecast.SplitConfig
    cv_folds: int
    models: dict[str, ModelConfig]
    champion: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def of(cls, params: dict[str, Any]) -> ForecastParams:
        known = {"seed", "features", "labels", "split", "cv", "models", "champion", "prefix"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")
        models = {n: ModelConfig.of(n, m) for n, m in (params.get("models") or {}).items()}
        if not models:
            raise ValueError("params.models must declare at least one model")
        return cls(
            seed=int(params.get("seed", 0)),
            features=forecast.FeatureConfig.of(params.get("features")),
            labels=forecast.LabelConfig.of(params.get("labels")),
            split=forecast.SplitConfig.of(params.get("split")),
            cv_folds=int((params.get("cv") or {}).get("folds", 10)),
            models=models,
            champion=dict(params.get("champion") or {}),
            raw=dict(params),
        )


# ------------------------------------------------------------------------------- stored ML tables
def write_table(lake: Lake, table: str, df: pd.DataFrame, lineage: dict[str, Any]) -> int:
    """Replace ``ml/<table>`` with ``df``; the lineage goes into the Delta commit. The new version."""
    import pyarrow as pa

    data = pa.Table.from_pandas(df, preserve_index=False)
    return lake.replace("ml", table, data, commit_metadata={LINEAGE_KEY: json.dumps(lineage, default=str)})


def read_table(lake: Lake, table: str, version: int | None = None) -> tuple[pd.DataFrame, dict[str, Any], int]:
    """``ml/<table>`` at ``version`` (latest if None), its lineage, and the version read."""
    version = lake.version("ml", table) if version is None else version
    if version is None:
        raise LookupError(f"ml/{table} does not exist yet: materialize it first")
    df = lake.read_arrow("ml", table, version=version).to_pandas()
    info = lake.commit_info("ml", table, version)
    lineage = json.loads(info.get(LINEAGE_KEY, "{}"))
    return df, lineage, version


def read_input(lake: Lake, table: str, version: int | None = None) -> tuple[pd.DataFrame, int]:
    zone, name = table.split("/")
    version = lake.version(zone, name) if version is None else version
    if version is None:
        raise LookupError(f"{table} does not exist yet: materialize it first")
    return lake.read_arrow(zone, name, version=version).to_pandas(), version


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(forecast.KEY).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- steps
def features_from(daily: pd.DataFrame, p: ForecastParams) -> pd.DataFrame:
    return _sort(forecast.build_features(daily, p.features, p.labels))


def labels_from(daily: pd.DataFrame, p: ForecastParams) -> pd.DataFrame:
    return _sort(forecast.build_labels(daily, p.labels))


def split_from(labels: pd.DataFrame, p: ForecastParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    split, info = forecast.time_split(labels, p.split)
    return _sort(split), info


def input_lineage(table: str, version: int, months: list[str]) -> dict[str, Any]:
    return {table: {"delta_version": version, "months": [months[0], months[-1]] if months else []}}


@dataclass
class Dataset:
    """Training and validation rows, aligned: features, target, months."""

    train: pd.DataFrame
    valid: pd.DataFrame
    y_train: np.ndarray
    y_valid: np.ndarray


def dataset(features: pd.DataFrame, labels: pd.DataFrame, split: pd.DataFrame) -> Dataset:
    """Join on the key; training rows in time order (date, then meter) for early stopping and CV."""
    f = features.copy()
    f["date"] = pd.to_datetime(f["date"]).dt.date
    rows = split[["meter_id", "date", "split"]].copy()
    rows["date"] = pd.to_datetime(rows["date"]).dt.date
    lab = labels[["meter_id", "date", forecast.LABEL]].copy()
    lab["date"] = pd.to_datetime(lab["date"]).dt.date
    df = rows.merge(f, on=forecast.KEY, how="inner").merge(lab, on=forecast.KEY, how="inner")
    df = df.sort_values(["date", "meter_id"]).reset_index(drop=True)
    tr, va = df[df["split"] == "train"].reset_index(drop=True), df[df["split"] == "validation"].reset_index(drop=True)
    if tr.empty or va.empty:
        raise ValueError(f"empty split: {len(tr)} training and {len(va)} validation rows")
    return Dataset(tr, va, tr[forecast.LABEL].to_numpy(float), va[forecast.LABEL].to_numpy(float))


@dataclass
class ModelRun:
    model: Any
    metrics: dict[str, float]
    per_month: pd.DataFrame
    cv: list[dict[str, Any]]
    validation: pd.DataFrame  # meter_id, date, month, actual_kwh, predicted_kwh
    in_sample: pd.DataFrame  # month, residual, split (for the residual plot)


def fit_model(cfg: ModelConfig, data: Dataset, p: ForecastParams) -> ModelRun:
    """Train ``cfg`` on the training rows, optionally cross-validate, score the validation rows."""
    cols = cfg.columns
    cv = []
    if cfg.cv:
        cv = train.time_series_cv(
            cfg.type, data.train, data.y_train, list(cfg.features), cfg.params, p.seed, folds=p.cv_folds, baseline=cfg.baseline
        ).folds
    model = train.fit(cfg.type, data.train, data.y_train, list(cfg.features), cfg.params, p.seed, cfg.baseline)
    pred = model.predict(data.valid[cols])
    metrics = evaluate.regression_metrics(data.y_valid, pred)
    metrics.update({"train_rows": int(len(data.train)), "validation_rows": int(len(data.valid))})
    if cv:
        rmse = np.array([f["rmse"] for f in cv])
        metrics.update({"cv_folds": len(cv), "cv_rmse_mean": float(rmse.mean()), "cv_rmse_std": float(rmse.std())})
    validation = pd.DataFrame(
        {
            "meter_id": data.valid["meter_id"],
            "date": data.valid["date"],
            "month": data.valid["month"],
            "actual_kwh": data.y_valid,
            "predicted_kwh": pred,
        }
    )
    fitted = model.predict(data.train[cols])
    in_sample = pd.concat(
        [
            pd.DataFrame({"month": data.train["month"], "residual": fitted - data.y_train, "split": "train"}),
            pd.DataFrame({"month": data.valid["month"], "residual": pred - data.y_valid, "split": "validation"}),
        ],
        ignore_index=True,
    )
    return ModelRun(model, metrics, evaluate.per_month(data.valid["month"], data.y_valid, pred), cv, validation, in_sample)


def write_plots(run: ModelRun, cfg: ModelConfig, data: Dataset, folder: Path, seed: int) -> tuple[dict[str, Path], pd.Series]:
    """Predicted vs actual, residuals by month, permutation feature importance: PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = cfg.columns
    importance = evaluate.permutation_importance(run.model, data.valid[cols], data.y_valid, seed=seed)
    return {
        "predicted_vs_actual": evaluate.plot_predicted_vs_actual(
            run.validation["actual_kwh"].to_numpy(), run.validation["predicted_kwh"].to_numpy(),
            folder / "predicted_vs_actual.png", f"{cfg.name}: validation days",
        ),
        "residuals_by_month": evaluate.plot_residuals_by_month(run.in_sample, folder / "residuals_by_month.png", f"{cfg.name}: residuals"),
        "feature_importance": evaluate.plot_importance(importance, folder / "feature_importance.png", f"{cfg.name}: permutation importance"),
    }, importance


def model_lineage(
    cfg: ModelConfig, p: ForecastParams, pipeline: str, source: str, versions: dict[str, Any], hashes: dict[str, str], run: ModelRun
) -> dict[str, Any]:
    """``inputs`` maps every table the model depends on to ``{"delta_version": n}`` (table maintenance keeps
    those versions readable); ``source`` names the one features, labels and split are computed from."""
    return {
        "pipeline": pipeline,
        "model": cfg.name,
        "model_type": cfg.type,
        "source": source,
        "inputs": versions,
        "data_hashes": hashes,
        "code_version": code_version(),
        "params": p.raw,
        "seed": p.seed,
        "metrics": run.metrics,
        "cv_folds": run.cv,
    }
