"""Validation metrics and plots (PNG files, embeddable in Dagster markdown metadata)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    if len(y) == 0:
        raise ValueError("no rows to evaluate")
    return {
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "mae": float(mean_absolute_error(y, pred)),
        "r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
    }


def per_month(months: pd.Series, y: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """``month, rows, rmse, mae, bias`` (bias = mean of prediction - actual)."""
    df = pd.DataFrame({"month": np.asarray(months), "err": np.asarray(pred, dtype=float) - np.asarray(y, dtype=float)})
    g = df.groupby("month")["err"]
    return pd.DataFrame(
        {
            "rows": g.size(),
            "rmse": g.apply(lambda e: float(np.sqrt(np.mean(e**2)))),
            "mae": g.apply(lambda e: float(np.mean(np.abs(e)))),
            "bias": g.mean(),
        }
    ).reset_index()


def permutation_importance(
    model, X: pd.DataFrame, y: np.ndarray, *, seed: int, repeats: int = 3, max_rows: int = 3000
) -> pd.Series:
    """Increase of RMSE when one input column is shuffled (mean over ``repeats``), on at most ``max_rows``."""
    rng = np.random.default_rng(seed)
    if len(X) > max_rows:
        idx = np.sort(rng.choice(len(X), size=max_rows, replace=False))
        X, y = X.iloc[idx].reset_index(drop=True), np.asarray(y)[idx]
    else:
        X = X.reset_index(drop=True)
    base = regression_metrics(y, model.predict(X))["rmse"]
    out = {}
    for col in X.columns:
        deltas = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[col] = X[col].to_numpy()[rng.permutation(len(X))]
            deltas.append(regression_metrics(y, model.predict(shuffled))["rmse"] - base)
        out[col] = float(np.mean(deltas))
    return pd.Series(out).sort_values(ascending=False)


# --------------------------------------------------------------------------------------------- plots
def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_predicted_vs_actual(y: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=80)
    ax.scatter(y, pred, s=4, alpha=0.3)
    hi = float(max(np.max(y), np.max(pred)))
    ax.plot([0, hi], [0, hi], color="black", lw=1)
    ax.set_xlabel("actual kWh/day")
    ax.set_ylabel("predicted kWh/day")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_residuals_by_month(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """``frame``: ``month, residual, split`` — one box per month, validation months highlighted."""
    plt = _figure()
    months = sorted(frame["month"].unique())
    data = [frame.loc[frame["month"] == m, "residual"].to_numpy() for m in months]
    fig, ax = plt.subplots(figsize=(max(6, len(months) * 0.22), 4), dpi=80)
    box = ax.boxplot(data, showfliers=False, patch_artist=True)
    valid = set(frame.loc[frame["split"] == "validation", "month"])
    for patch, m in zip(box["boxes"], months, strict=True):
        patch.set_facecolor("tab:orange" if m in valid else "lightgrey")
    ax.axhline(0, color="black", lw=0.8)
    step = max(1, len(months) // 16)
    ax.set_xticks(range(1, len(months) + 1)[::step], months[::step], rotation=60, fontsize=7)
    ax.set_ylabel("predicted - actual, kWh/day")
    ax.set_title(title + " (orange: validation months)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_importance(importance: pd.Series, path: Path, title: str, top: int = 15) -> Path:
    plt = _figure()
    imp = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1.2), dpi=80)
    ax.barh(imp.index, imp.to_numpy())
    ax.set_xlabel("RMSE increase when shuffled (kWh/day)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def embed_png(png: bytes, alt: str) -> str:
    """Markdown showing the PNG inline (the Dagster UI renders data-URI images in markdown metadata)."""
    data = base64.b64encode(png).decode()
    return f"![{alt}](data:image/png;base64,{data})"
