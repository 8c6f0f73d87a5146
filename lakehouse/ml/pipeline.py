"""The forecasting pipeline as plain functions over frames: the Dagster assets and the ``reproduce``
command call the same code, so a reproduction is the same computation on the same data.

Parameters (``lakehouse/defs/ml/<pipeline>/defs.yaml`` → ``params``)::

    seed: 0
    columns: {entity: [...], time: ..., target: ..., temperature: ..., drivers: [...], categorical: [...]}
    features: {...}          FeatureConfig (hdd_base_c, cdd_base_c, columns carried, lags, rolling, signature)
    labels: {...}            LabelConfig
    split: {...}             SplitConfig
    cv: {kind: time_series | kfold, folds: 10, seed: 0}
    models:
      ridge: {type: sklearn_ridge, features: [hdd, ...], cv: true, params: {alpha: 1.0}}
      gbm: {type: sklearn_gbm, features: [...], cv: true, params: {...}}
      mlp: {type: torch_mlp, features: [...], params: {...}}
    champion: {metric: rmse | cv_rmse, tolerance: 0.0, drift_table: ml/<prefix>_drift, drift_features: [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakehouse.io.lake import Lake
from lakehouse.ml import evaluate, forecast, train
from lakehouse.ml.lineage import code_version
from lakehouse.ml.models import save_model
from lakehouse.ml.train import single_threaded
from lakehouse.specs.ml import ForecastParams, ModelConfig
from lakehouse.specs.tables import TableRef

LINEAGE_KEY = "lakehouse.lineage"


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
    zone, name = TableRef.of(table)
    version = lake.version(zone, name) if version is None else version
    if version is None:
        raise LookupError(f"{table} does not exist yet: materialize it first")
    return lake.read_arrow(zone, name, version=version).to_pandas(), version


def _sort(df: pd.DataFrame, p: ForecastParams) -> pd.DataFrame:
    return df.sort_values(p.columns.key).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- steps
def features_from(daily: pd.DataFrame, p: ForecastParams) -> pd.DataFrame:
    return _sort(forecast.build_features(daily, p.features, p.labels, p.columns), p)


def labels_from(daily: pd.DataFrame, p: ForecastParams) -> pd.DataFrame:
    return _sort(forecast.build_labels(daily, p.labels, p.columns), p)


def split_from(labels: pd.DataFrame, p: ForecastParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    split, info = forecast.time_split(labels, p.split, p.columns)
    return _sort(split, p), info


def leakage_from(daily: pd.DataFrame, features: pd.DataFrame, split: pd.DataFrame, cut_date: str, p: ForecastParams):
    return forecast.leakage_report(daily, features, split, cut_date, lambda d: features_from(d, p), p.columns)


def extrapolation_from(features: pd.DataFrame, split: pd.DataFrame, p: ForecastParams) -> dict[str, dict[str, Any]]:
    return forecast.extrapolation(features, split, p.drivers, p.columns)


def input_lineage(table: str, version: int, months: list[str]) -> dict[str, Any]:
    return {table: {"delta_version": version, "months": [months[0], months[-1]] if months else []}}


@dataclass
class Dataset:
    """Training and validation rows, aligned: features, target, months."""

    train: pd.DataFrame
    valid: pd.DataFrame
    y_train: np.ndarray
    y_valid: np.ndarray


def dataset(features: pd.DataFrame, labels: pd.DataFrame, split: pd.DataFrame, p: ForecastParams) -> Dataset:
    """Join on the key; training rows in time order (time, then entity) for early stopping and CV."""
    key, t = p.columns.key, p.columns.time
    f = features.copy()
    f[t] = pd.to_datetime(f[t]).dt.date
    rows = split[[*key, "split"]].copy()
    rows[t] = pd.to_datetime(rows[t]).dt.date
    lab = labels[[*key, forecast.LABEL]].copy()
    lab[t] = pd.to_datetime(lab[t]).dt.date
    df = rows.merge(f, on=key, how="inner").merge(lab, on=key, how="inner")
    df = df.sort_values([t, *p.columns.entity]).reset_index(drop=True)
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
    validation: pd.DataFrame  # <key>, month, actual, predicted
    in_sample: pd.DataFrame  # month, residual, split (for the residual plot)


def fit_model(cfg: ModelConfig, data: Dataset, p: ForecastParams) -> ModelRun:
    """Train ``cfg`` on the training rows, optionally cross-validate, score the validation rows."""
    cols = cfg.columns
    cats = p.columns.categorical
    cv = []
    metrics: dict[str, Any] = {}
    model = train.fit(cfg.type, data.train, data.y_train, list(cfg.features), cfg.params, p.seed, cfg.baseline, cats)
    pred = model.predict(data.valid[cols])
    metrics.update(evaluate.regression_metrics(data.y_valid, pred))
    metrics.update({"train_rows": int(len(data.train)), "validation_rows": int(len(data.valid))})
    if cfg.cv:
        result = train.cross_validate(
            cfg.type,
            data.train,
            data.y_train,
            list(cfg.features),
            cfg.params,
            p.seed,
            p.cv,
            p.columns.key,
            p.columns.time,
            cfg.baseline,
            cats,
        )
        cv = result.folds
        metrics.update({"cv_kind": p.cv.kind, **result.summary(data.y_train)})
    validation = data.valid[[*p.columns.key, "month"]].copy()
    validation["actual"] = data.y_valid
    validation["predicted"] = pred
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
            run.validation["actual"].to_numpy(),
            run.validation["predicted"].to_numpy(),
            folder / "predicted_vs_actual.png",
            f"{cfg.name}: validation days",
        ),
        "residuals_by_month": evaluate.plot_residuals_by_month(
            run.in_sample, folder / "residuals_by_month.png", f"{cfg.name}: residuals"
        ),
        "feature_importance": evaluate.plot_importance(
            importance, folder / "feature_importance.png", f"{cfg.name}: permutation importance"
        ),
    }, importance


def model_lineage(
    cfg: ModelConfig,
    p: ForecastParams,
    pipeline: str,
    source: str,
    versions: dict[str, Any],
    hashes: dict[str, str | None],
    run: ModelRun,
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


@dataclass
class Trained:
    """A model trained, scored and saved as a new version: its run, lineage, folder and plot files."""

    run: ModelRun
    lineage: dict[str, Any]
    folder: str
    plots: dict[str, str]


def train_version(
    lake: Lake, cfg: ModelConfig, p: ForecastParams, pipeline: str, source: str, tables: Any, folder: str, run_id: str
) -> Trained:
    """Train ``cfg`` on the split's rows (the features and labels versions the split was made from), score
    it, and save model, lineage, metrics, validation predictions and plots as a new version under ``folder``."""
    split, split_lineage, split_version = read_table(lake, tables.split)
    feat_version = split_lineage["inputs"][f"ml/{tables.features}"]["delta_version"]
    lab_version = split_lineage["inputs"][f"ml/{tables.labels}"]["delta_version"]
    feats, feat_lineage, _ = read_table(lake, tables.features, feat_version)
    labels, lab_lineage, _ = read_table(lake, tables.labels, lab_version)
    data = dataset(feats, labels, split, p)
    with single_threaded():
        run = fit_model(cfg, data, p)
    versions = {
        source: split_lineage["inputs"][source],
        f"ml/{tables.features}": {"delta_version": feat_version},
        f"ml/{tables.labels}": {"delta_version": lab_version},
        f"ml/{tables.split}": {"delta_version": split_version},
    }
    hashes: dict[str, str | None] = {
        "features": feat_lineage.get("hash"),
        "labels": lab_lineage.get("hash"),
        "split": split_lineage.get("hash"),
    }
    lineage = model_lineage(cfg, p, pipeline, source, versions, hashes, run)
    lineage["split"] = split_lineage.get("cut", {})
    lineage["run_id"] = run_id
    plot_files: dict[str, str] = {}

    def extra(out: Path) -> None:
        (out / "metrics.json").write_text(json.dumps(run.metrics, indent=1))
        run.per_month.to_csv(out / "per_month.csv", index=False)
        t = p.columns.time
        run.validation.assign(**{t: run.validation[t].astype(str)}).to_csv(out / "validation_predictions.csv", index=False)
        with single_threaded():
            paths, importance = write_plots(run, cfg, data, out / "plots", p.seed)
        importance.rename("rmse_increase").to_csv(out / "feature_importance.csv")
        plot_files.update({k: path.name for k, path in paths.items()})

    saved = save_model(lake.storage, folder, run.model, lineage, extra)
    return Trained(run, lineage, saved, {k: f"{saved}/plots/{f}" for k, f in plot_files.items()})


def predictions(
    lake: Lake, source: str, model: Any, lineage: dict[str, Any], model_version: str, months: list[str]
) -> tuple[int | None, list[tuple[str, pd.DataFrame]]]:
    """The input's version read and each month's day-ahead predictions of ``model`` (``<key>, month,
    predicted, has_history, actual, label_ok, model, model_version, sample``; months without input are
    left out), features from the 13 months before the first month."""
    run_params = ForecastParams.model_validate(lineage["params"])
    cols = run_params.models[lineage["model"]].columns
    zone, table = TableRef.of(source)
    first = (pd.Period(months[0], freq="M") - 13).strftime("%Y-%m")
    window = [m for m in lake.months(zone, table) if first <= m <= months[-1]]
    version = lake.version(zone, table)
    daily = lake.read_arrow(zone, table, months=window, version=version).to_pandas()
    feats = features_from(daily, run_params)
    labels = labels_from(daily, run_params)
    train_months = set(lineage.get("split", {}).get("train_months", []))
    valid_months = set(lineage.get("split", {}).get("validation_months", []))
    key = run_params.columns.key
    out_months = []
    for month in months:
        f = feats[feats["month"] == month]
        if f.empty:
            continue
        lab = labels[labels["month"] == month][[*key, forecast.LABEL, "label_ok"]]
        with single_threaded():
            pred = model.predict(f[cols])
        out = f[[*key, "month"]].copy()
        out["predicted"] = pred
        # a series' first weeks have no energy signature (or history) yet: such predictions are marked
        history = [c for c in ("sig_pred", *(f"lag_{k}" for k in run_params.features.lags)) if c in f.columns][:1]
        out["has_history"] = f[history[0]].notna().to_numpy() if history else True
        out = out.merge(lab, on=key, how="left").rename(columns={forecast.LABEL: "actual"})
        out["model"] = lineage["model"]
        out["model_version"] = model_version
        out["sample"] = "train" if month in train_months else "validation" if month in valid_months else "new"
        out_months.append((month, out))
    return version, out_months


def rmse_of(out: pd.DataFrame) -> float:
    """RMSE of a predictions frame over its usable labels (label_ok, with history); NaN when none."""
    ok = out[out["label_ok"].fillna(False).astype(bool) & out["has_history"]]
    return float(np.sqrt(np.mean((ok["predicted"] - ok["actual"]) ** 2))) if len(ok) else float("nan")
