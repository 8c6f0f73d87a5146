"""Meter fault and anomaly detection on meter-days, unsupervised (Isolation Forest). Pure and seeded.

A faulty meter leaves marks on the day it sent: hours without a reading, more readings than hours, a
register stuck on one value, timestamps off the hour, negative values, one hour holding an implausible
share of the day, a day total the cleaning had to change (a Wh file, a spike), or — optionally — a day
total far from what the weather predicts for that building. :func:`day_features` turns each
``consumption_daily`` row (its ``raw_*`` as-received profile and its cleaned consumption) into those
figures; the detector learns what ordinary days look like from every month and scores each day. No label
is used anywhere: the injected faults of the demo world only score the result (``lakehouse.sim.scores``).

The per-meter *energy signature* (kWh = a + b·HDD, fitted robustly on the meter's own days) is part of
the fitted detector, so scoring a new month uses the coefficients learned at training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

DEFAULT_FEATURES = (
    "missing_hours",
    "extra_readings",
    "max_repeat_run",
    "off_hour_readings",
    "negative_readings",
    "max_hour_share",
    "cleaning_log_ratio",
)
DERIVED = (*DEFAULT_FEATURES, "signature_log_ratio")


@dataclass(frozen=True)
class AnomalyConfig:
    method: str = "isolation_forest"
    features: tuple[str, ...] = DEFAULT_FEATURES
    #: prefix of the day-profile columns the figures come from (``raw_``: as received, before cleaning)
    profile_prefix: str = "raw_"
    hdd_base_c: float = 16.5
    n_estimators: int = 200
    max_samples: int | str = 512
    #: share of meter-days expected to be faulty (``auto``: Isolation Forest's own offset of -0.5)
    contamination: float | str = "auto"

    @classmethod
    def of(cls, params: dict[str, Any] | None) -> AnomalyConfig:
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown detector option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        if params.get("method", "isolation_forest") != "isolation_forest":
            raise ValueError(f"detector.method must be 'isolation_forest', got {params['method']!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


def _signature(df: pd.DataFrame) -> pd.DataFrame:
    """Per meter: robust least squares of kWh on HDD over its complete days (two passes, 3·MAD trimming)."""
    rows = []
    for meter, g in df.groupby("meter_id"):
        g = g[(g["hours_covered"] >= 24) & g["consumption_kwh"].notna() & g["hdd"].notna()]
        if len(g) < 10:
            continue
        x, y = g["hdd"].to_numpy(float), g["consumption_kwh"].to_numpy(float)
        keep = np.ones(len(g), dtype=bool)
        for _ in range(2):
            b, a = np.polyfit(x[keep], y[keep], 1) if np.ptp(x[keep]) > 0 else (0.0, float(np.median(y[keep])))
            resid = np.log(np.maximum(y, 1e-3) / np.maximum(a + b * x, 1e-3))
            mad = np.median(np.abs(resid - np.median(resid))) or 1e-3
            keep = np.abs(resid - np.median(resid)) <= 3 * 1.4826 * mad
        rows.append({"meter_id": meter, "sig_a": float(a), "sig_b": float(b)})
    return pd.DataFrame(rows, columns=["meter_id", "sig_a", "sig_b"])


def day_features(daily: pd.DataFrame, cfg: AnomalyConfig) -> pd.DataFrame:
    """``meter_id, date, month`` and the figures of each meter-day (the signature ratio is added by the
    fitted detector, see :meth:`MeterDayDetector.matrix`)."""
    p = cfg.profile_prefix
    needed = ["meter_id", "date", "month", "consumption_kwh", "temp_mean_c", f"{p}consumption_kwh", f"{p}readings",
              f"{p}hours_covered", f"{p}max_repeat_run", f"{p}off_hour_readings", f"{p}negative_readings", f"{p}max_hour_share"]
    missing = [c for c in needed if c not in daily.columns]
    if missing:
        raise KeyError(f"anomaly features: column(s) {missing} missing; the table has {list(daily.columns)}")
    df = daily.copy()
    df.attrs = {}
    df["date"] = pd.to_datetime(df["date"]).dt.date
    df = df.sort_values(["meter_id", "date"]).reset_index(drop=True)
    out = df[["meter_id", "date", "month", "consumption_kwh"]].copy()
    out["hours_covered"] = df[f"{p}hours_covered"].fillna(0)
    out["hdd"] = np.maximum(0.0, cfg.hdd_base_c - df["temp_mean_c"])
    out["missing_hours"] = np.maximum(0, 24 - df[f"{p}hours_covered"].fillna(0))
    out["extra_readings"] = np.maximum(0, df[f"{p}readings"].fillna(0) - df[f"{p}hours_covered"].fillna(0))
    out["max_repeat_run"] = df[f"{p}max_repeat_run"].fillna(1)
    out["off_hour_readings"] = df[f"{p}off_hour_readings"].fillna(0)
    out["negative_readings"] = df[f"{p}negative_readings"].fillna(0)
    out["max_hour_share"] = df[f"{p}max_hour_share"].fillna(1 / 24)
    raw = np.maximum(np.abs(df[f"{p}consumption_kwh"].fillna(0.0)), 1e-3)
    out["cleaning_log_ratio"] = np.log(raw / np.maximum(df["consumption_kwh"].fillna(0.0), 1e-3))
    for extra in cfg.features:
        if extra not in out.columns and extra not in DERIVED:
            if extra not in df.columns:
                raise KeyError(f"anomaly feature {extra!r} is neither derived here nor a column of the input")
            out[extra] = df[extra].fillna(0)
    return out


class MeterDayDetector:
    """Isolation Forest over meter-day figures plus the per-meter energy signatures it was fitted with."""

    def __init__(self, cfg: AnomalyConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed

    def matrix(self, feats: pd.DataFrame) -> np.ndarray:
        df = feats.merge(self.signature_, on="meter_id", how="left")
        expected = df["sig_a"] + df["sig_b"] * df["hdd"]
        ratio = np.log(np.maximum(df["consumption_kwh"], 1e-3) / np.maximum(expected, 1e-3))
        df["signature_log_ratio"] = ratio.fillna(0.0)
        return df[list(self.cfg.features)].to_numpy(dtype=float)

    def fit(self, feats: pd.DataFrame) -> MeterDayDetector:
        self.signature_ = _signature(feats)
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


def fit(feats: pd.DataFrame, cfg: AnomalyConfig, seed: int) -> MeterDayDetector:
    if feats.empty:
        raise ValueError("no meter-days to learn from")
    return MeterDayDetector(cfg, seed).fit(feats)


def score(detector: MeterDayDetector, feats: pd.DataFrame) -> pd.DataFrame:
    """``meter_id, date, month, score, flagged`` and the figures that explain the score."""
    out = feats.copy()
    out["score"] = detector.scores(feats)
    out["flagged"] = out["score"] > detector.threshold_
    return out


def drift_frame(daily: pd.DataFrame, hdd_base_c: float = 16.5) -> pd.DataFrame:
    """The columns drift is measured on: the view's own plus ``hdd``, ``kwh_per_m2`` and
    ``kwh_vs_signature`` — log of the day's consumption over what the meter's energy signature (fitted on
    all its complete days) expects for that day's weather. Weather itself drifts from year to year; this
    one only moves when buildings or meters start behaving differently."""
    df = daily.copy()
    df.attrs = {}
    df["hdd"] = np.maximum(0.0, hdd_base_c - df["temp_mean_c"])
    if "heated_area_m2" in df.columns:
        df["kwh_per_m2"] = df["consumption_kwh"] / df["heated_area_m2"]
    hours = "raw_hours_covered" if "raw_hours_covered" in df.columns else "hours_covered"
    sig = _signature(df.assign(hours_covered=df[hours]))
    m = df.merge(sig, on="meter_id", how="left")
    expected = np.maximum(m["sig_a"] + m["sig_b"] * m["hdd"], 1e-3)
    df["kwh_vs_signature"] = np.log(np.maximum(m["consumption_kwh"].to_numpy(), 1e-3) / expected.to_numpy())
    return df
