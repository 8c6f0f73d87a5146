"""Daily regression of the walking skeleton: calendar and past-target features, time-based split,
training and metrics. Pure and seeded; the input's columns (entity, time, target) come from the YAML."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from lakehouse.ml.forecast import Columns

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
