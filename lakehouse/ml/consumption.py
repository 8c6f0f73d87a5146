"""Daily regression of the walking skeleton: calendar and past-target features, time-based split,
training and metrics. Pure and seeded; the input's columns (entity, time, target) come from the YAML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from lakehouse.io.lake import Lake
from lakehouse.specs.ml import Columns, RegressionParams
from lakehouse.specs.tables import TableRef

FEATURES = ["day_of_year_sin", "day_of_year_cos", "day_of_week", "lag_1", "lag_7", "rolling_7"]


def daily_features(daily: pd.DataFrame, cols: Columns) -> pd.DataFrame:
    """Per entity and day: calendar terms and the past target (lags and a rolling mean of earlier days only)."""
    if daily.empty:
        raise ValueError("no daily rows: materialize the pipeline's input first")
    target = cols.target
    df = daily.sort_values(cols.key).copy()
    date = pd.to_datetime(df[cols.time])
    doy = date.dt.dayofyear
    df["day_of_year_sin"] = np.sin(2 * np.pi * doy / 365.25)
    df["day_of_year_cos"] = np.cos(2 * np.pi * doy / 365.25)
    df["day_of_week"] = date.dt.weekday
    g = df.groupby(list(cols.entity))[target] if cols.entity else df.groupby(np.zeros(len(df)))[target]
    df["lag_1"] = g.shift(1)
    df["lag_7"] = g.shift(7)
    df["rolling_7"] = g.transform(lambda s: s.shift(1).rolling(7, min_periods=3).mean())
    return df.dropna(subset=["lag_1", "lag_7", "rolling_7"]).reset_index(drop=True)


def time_split(df: pd.DataFrame, validation_months: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the earlier months, validate on the last ``validation_months`` (no shuffling)."""
    months = sorted(df["month"].unique())
    if len(months) <= validation_months:
        raise ValueError(f"need more than {validation_months} months to validate on, got {len(months)}")
    cut = months[-validation_months]
    return df[df["month"] < cut], df[df["month"] >= cut]


@dataclass
class Trained:
    model: HistGradientBoostingRegressor
    metrics: dict[str, float]


def train_regressor(train: pd.DataFrame, valid: pd.DataFrame, params: dict, target: str, seed: int = 0) -> Trained:
    model = HistGradientBoostingRegressor(random_state=seed, **params)
    model.fit(train[FEATURES], train[target])
    pred = model.predict(valid[FEATURES])
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(valid[target], pred))),
        "mae": float(mean_absolute_error(valid[target], pred)),
        "r2": float(r2_score(valid[target], pred)),
        "train_rows": int(len(train)),
        "validation_rows": int(len(valid)),
    }
    return Trained(model, metrics)


@dataclass
class Saved:
    """A trained regressor saved as a new version: metrics, lineage, folder, plots and the naive baseline."""

    trained: Trained
    lineage: dict[str, Any]
    folder: str
    plots: dict[str, str]
    baseline_rmse: float
    input_version: int


def train_version(lake: Lake, name: str, source: str, params: RegressionParams, folder: str, run_id: str) -> Saved:
    """Train on every month of ``source`` but the last ``validation_months``, score, plot, save a version."""
    from lakehouse.ml import evaluate
    from lakehouse.ml.lineage import code_version
    from lakehouse.ml.models import save_model

    cols = params.columns
    zone, table = TableRef.of(source)
    version = lake.version(zone, table)
    if version is None:
        raise LookupError(f"{source} does not exist yet: materialize it first")
    daily = lake.read_arrow(zone, table, version=version).to_pandas()
    train, valid = time_split(daily_features(daily, cols), params.validation_months)
    trained = train_regressor(train, valid, dict(params.model), cols.target, seed=params.seed)
    lineage = {
        "inputs": {source: {"delta_version": version, "months": sorted(daily["month"].unique().tolist())}},
        "code_version": code_version(),
        "run_id": run_id,
        "params": params.model_dump(mode="json"),
        "metrics": trained.metrics,
    }
    y_valid = valid[cols.target].to_numpy()
    pred_valid = trained.model.predict(valid[FEATURES])
    residuals = pd.concat(
        [
            pd.DataFrame(
                {
                    "month": part["month"].to_numpy(),
                    "split": split,
                    "residual": trained.model.predict(part[FEATURES]) - part[cols.target].to_numpy(),
                }
            )
            for split, part in (("train", train), ("validation", valid))
        ]
    )

    def plots(out: Path) -> None:
        (out / "plots").mkdir()
        evaluate.plot_predicted_vs_actual(
            y_valid, pred_valid, out / "plots" / "predicted_vs_actual.png", f"{name}: validation days"
        )
        evaluate.plot_residuals_by_month(residuals, out / "plots" / "residuals_by_month.png", f"{name}: residuals")

    saved = save_model(lake.storage, folder, trained.model, lineage, plots)
    images = {p: f"{saved}/plots/{p}.png" for p in ("predicted_vs_actual", "residuals_by_month")}
    baseline_rmse = float(np.sqrt(np.mean((valid["lag_1"].to_numpy() - y_valid) ** 2)))
    return Saved(trained, lineage, saved, images, baseline_rmse, version)
