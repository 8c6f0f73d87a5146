"""Fault and anomaly detection on entity-days, unsupervised (Isolation Forest). Pure and seeded.

A faulty device leaves marks on the day it sent: periods without a reading, more readings than periods, a
register stuck on one value, timestamps off the grid, negative values, one period holding an implausible
share of the day, a day total the cleaning had to change (a unit slip, a spike), or — optionally — a day
total far from what the weather predicts for that entity. :func:`day_features` turns each input row (its
as-received profile and its cleaned target) into those figures; the detector learns what ordinary days
look like from every month and scores each day. No label is used anywhere.

The pipeline's YAML names every column read: ``columns`` (entity key, time, target, temperature, as in
forecasting) and ``profile`` (which column holds each figure of the day as received). Figures whose
profile column is not declared are not computed (and cannot be listed in ``features``).

The per-entity *energy signature* (target = a + b·HDD, fitted robustly on the entity's own complete days)
is part of the fitted detector, so scoring a new month uses the coefficients learned at training time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from lakehouse.ml.forecast import groups
from lakehouse.specs.ml import FIGURES, SIGNATURE, AnomalyConfig, AnomalyParams
from lakehouse.specs.tables import TableRef


def _complete(df: pd.DataFrame, cfg: AnomalyConfig) -> pd.Series:
    """Days received complete (every period), when the profile says so; else every day."""
    if "_complete" in df.columns:
        return df["_complete"].astype(bool)
    col = cfg.profile.get("periods_covered")
    return df[col].fillna(0) >= cfg.periods_per_day if col else pd.Series(True, index=df.index)


def _signature(df: pd.DataFrame, cfg: AnomalyConfig) -> pd.DataFrame:
    """Per entity: robust least squares of the target on HDD over its complete days with a temperature
    (two passes, 3·MAD trimming)."""
    ent, y_col = list(cfg.columns.entity), cfg.columns.target
    rows = []
    for g in groups(df, ent):
        g = g[_complete(g, cfg) & g[y_col].notna() & g["hdd"].notna()]
        if len(g) < 10:
            continue
        x, y = g["hdd"].to_numpy(float), g[y_col].to_numpy(float)
        keep = np.ones(len(g), dtype=bool)
        for _ in range(2):
            b, a = np.polyfit(x[keep], y[keep], 1) if np.ptp(x[keep]) > 0 else (0.0, float(np.median(y[keep])))
            resid = np.log(np.maximum(y, 1e-3) / np.maximum(a + b * x, 1e-3))
            mad = np.median(np.abs(resid - np.median(resid))) or 1e-3
            keep = np.abs(resid - np.median(resid)) <= 3 * 1.4826 * mad
        rows.append({**{c: g[c].iloc[0] for c in ent}, "sig_a": float(a), "sig_b": float(b)})
    return pd.DataFrame(rows, columns=[*ent, "sig_a", "sig_b"])


def _with_signature(df: pd.DataFrame, sig: pd.DataFrame, cfg: AnomalyConfig) -> pd.Series:
    """Log of the day's target over what the entity's signature expects for that day's weather."""
    ent = list(cfg.columns.entity)
    m = (
        df.merge(sig, on=ent, how="left")
        if ent
        else df.assign(**{c: sig[c].iloc[0] if len(sig) else np.nan for c in ("sig_a", "sig_b")})
    )
    expected = np.maximum(m["sig_a"] + m["sig_b"] * m["hdd"], 1e-3)
    return pd.Series(np.log(np.maximum(m[cfg.columns.target].to_numpy(dtype=float), 1e-3) / expected.to_numpy()), index=df.index)


def day_features(daily: pd.DataFrame, cfg: AnomalyConfig) -> pd.DataFrame:
    """``<key>, month`` and the figures of each entity-day (the signature ratio is added by the fitted
    detector, see :meth:`DayDetector.matrix`)."""
    cols, prof = cfg.columns, cfg.profile
    needed = [*cols.key, "month", cols.target, *([cols.temperature] if cols.temperature else []), *prof.values()]
    missing = [c for c in dict.fromkeys(needed) if c not in daily.columns]
    if missing:
        raise KeyError(f"anomaly features: column(s) {missing} missing; the table has {list(daily.columns)}")
    df = daily.copy()
    df.attrs = {}
    df[cols.time] = pd.to_datetime(df[cols.time]).dt.date
    df = df.sort_values(cols.key).reset_index(drop=True)
    out = df[[*cols.key, "month", cols.target]].copy()
    if "periods_covered" in prof:
        out["_complete"] = _complete(df, cfg)
    if cols.temperature:
        out["hdd"] = np.maximum(0.0, cfg.hdd_base_c - df[cols.temperature])
    covered = df[prof["periods_covered"]].fillna(0) if "periods_covered" in prof else None
    if covered is not None:
        out["missing_periods"] = np.maximum(0, cfg.periods_per_day - covered)
    if "received" in prof and covered is not None:
        out["extra_readings"] = np.maximum(0, df[prof["received"]].fillna(0) - covered)
    if "repeat_run" in prof:
        out["repeat_run"] = df[prof["repeat_run"]].fillna(1)
    if "off_grid" in prof:
        out["off_grid_readings"] = df[prof["off_grid"]].fillna(0)
    if "negatives" in prof:
        out["negative_values"] = df[prof["negatives"]].fillna(0)
    if "max_share" in prof:
        out["max_period_share"] = df[prof["max_share"]].fillna(1 / cfg.periods_per_day)
    if "total" in prof:
        raw = np.maximum(np.abs(df[prof["total"]].fillna(0.0)), 1e-3)
        out["cleaning_log_ratio"] = np.log(raw / np.maximum(df[cols.target].fillna(0.0), 1e-3))
    for extra in cfg.features:
        if extra not in out.columns and extra not in (*FIGURES, SIGNATURE):
            if extra not in df.columns:
                raise KeyError(f"anomaly feature {extra!r} is neither derived here nor a column of the input")
            out[extra] = df[extra].fillna(0)
    return out


class DayDetector:
    """Isolation Forest over entity-day figures plus the per-entity energy signatures it was fitted with
    (kept as plain columns, ``{column: [values]}``, so the fitted detector is stored without pickle)."""

    def __init__(self, cfg: AnomalyConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed

    def matrix(self, feats: pd.DataFrame) -> np.ndarray:
        df = feats.copy()
        if SIGNATURE in self.cfg.features:
            sig = pd.DataFrame(self.signature_).astype({"sig_a": float, "sig_b": float})
            df[SIGNATURE] = _with_signature(df, sig, self.cfg).fillna(0.0)
        return df[list(self.cfg.features)].to_numpy(dtype=float)

    def fit(self, feats: pd.DataFrame) -> DayDetector:
        self.signature_ = _signature(feats, self.cfg).to_dict(orient="list") if "hdd" in feats.columns else None
        X = self.matrix(feats)
        self.forest_ = IsolationForest(
            n_estimators=self.cfg.n_estimators,
            max_samples=self.cfg.max_samples,
            contamination=self.cfg.contamination,
            random_state=self.seed,
        ).fit(X)
        # anomaly score: higher is more anomalous; flagged above the forest's own threshold
        self.threshold_ = float(-self.forest_.offset_)
        return self

    def scores(self, feats: pd.DataFrame) -> np.ndarray:
        return -self.forest_.score_samples(self.matrix(feats))


def fit(feats: pd.DataFrame, cfg: AnomalyConfig, seed: int) -> DayDetector:
    if feats.empty:
        raise ValueError("no entity-days to learn from")
    return DayDetector(cfg, seed).fit(feats)


def score(detector: DayDetector, feats: pd.DataFrame) -> pd.DataFrame:
    """``<key>, month, score, flagged`` and the figures that explain the score."""
    out = feats.drop(columns=["_complete"], errors="ignore").copy()
    out["score"] = detector.scores(feats)
    out["flagged"] = out["score"] > detector.threshold_
    return out


def drift_frame(daily: pd.DataFrame, cfg: AnomalyConfig, ratios: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """The columns drift is computed on: the input's own plus ``hdd``, each declared ratio
    (``name: [numerator, denominator]``) and ``signature_log_ratio`` — log of the day's target over what
    the entity's energy signature (fitted on all its complete days) expects for that day's weather.
    Weather itself drifts from year to year; this one only moves when the entities start behaving
    differently."""
    df = daily.copy()
    df.attrs = {}
    for name, (num, den) in (ratios or {}).items():
        df[name] = df[num] / df[den]
    if cfg.columns.temperature:
        df["hdd"] = np.maximum(0.0, cfg.hdd_base_c - df[cfg.columns.temperature])
        df[SIGNATURE] = _with_signature(df, _signature(df, cfg), cfg)
    return df


def score_months(lake, source: str, detector: DayDetector, lineage: dict[str, Any], model_version: str, months: list[str]):
    """The input's version read and each month's scored entity-days (months without input left out); a
    month's features may look one month back."""
    from lakehouse.ml.train import single_threaded

    cfg = AnomalyParams.model_validate(lineage["params"]).detector
    zone, table = TableRef.of(source)
    first = (pd.Period(months[0], freq="M") - 1).strftime("%Y-%m")
    version = lake.version(zone, table)
    window = [m for m in lake.months(zone, table) if first <= m <= months[-1]]
    daily = lake.read_arrow(zone, table, months=window, version=version).to_pandas()
    with single_threaded():
        scored = score(detector, day_features(daily, cfg))
    out = [(m, scored[scored["month"] == m].assign(model_version=model_version)) for m in months]
    return version, [(m, frame) for m, frame in out if not frame.empty]
