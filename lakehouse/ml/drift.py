"""Month-to-month data drift: PSI and the Kolmogorov-Smirnov statistic of key features.

Heating data is seasonal: January never looks like July. Each month is therefore compared with the same
calendar month one year earlier when the data has it (weather and consumption of a normal January vs
another January), else with the previous month. Levels: ``warn`` from ``warn_psi``, ``severe`` from
``severe_psi`` (PSI rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from lakehouse.specs.ml import DriftConfig


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (quantile bins of the reference)."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    eps = 1e-4
    r, c = np.clip(r, eps, None), np.clip(c, eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def reference_month(month: str, available: Sequence[str]) -> str | None:
    """The same month a year earlier if present, else the previous available month."""
    year, mm = month.split("-")
    last_year = f"{int(year) - 1}-{mm}"
    if last_year in available:
        return last_year
    earlier = [m for m in available if m < month]
    return earlier[-1] if earlier else None


def monthly_drift(df: pd.DataFrame, cfg: DriftConfig, months: Sequence[str] | None = None) -> pd.DataFrame:
    """``month, feature, reference_month, rows, psi, ks, level`` for each month (or ``months``)."""
    missing = [c for c in (*cfg.features, "month") if c not in df.columns]
    if missing:
        raise KeyError(f"drift: column(s) {missing} missing; the table has {list(df.columns)}")
    available = sorted(df["month"].unique())
    rows = []
    by_month = {m: g for m, g in df.groupby("month")}
    for month in months or available:
        ref = reference_month(month, available)
        for feat in cfg.features:
            cur = by_month[month][feat].to_numpy(dtype=float) if month in by_month else np.array([])
            base = by_month[ref][feat].to_numpy(dtype=float) if ref else np.array([])
            if ref is None or len(cur) < cfg.min_rows or len(base) < cfg.min_rows:
                rows.append(
                    {
                        "month": month,
                        "feature": feat,
                        "reference_month": ref,
                        "rows": len(cur),
                        "psi": np.nan,
                        "ks": np.nan,
                        "level": "n/a",
                    }
                )
                continue
            p = psi(base, cur, cfg.bins)
            k = float(ks_2samp(base[np.isfinite(base)], cur[np.isfinite(cur)]).statistic)
            level = "severe" if p >= cfg.severe_psi else "warn" if p >= cfg.warn_psi else "ok"
            rows.append(
                {"month": month, "feature": feat, "reference_month": ref, "rows": len(cur), "psi": p, "ks": k, "level": level}
            )
    return pd.DataFrame(rows, columns=["month", "feature", "reference_month", "rows", "psi", "ks", "level"])
