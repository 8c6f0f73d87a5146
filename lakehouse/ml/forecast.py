"""Consumption forecasting: features, labels, the time-based split and the leakage proof. Pure pandas.

Input: the ``exploitation/consumption_daily`` rows (one per meter and day). A feature of day *d* may use
that day's weather and calendar (known when the day is forecast) and the building, but consumption only
from days strictly before *d*. :func:`leakage_report` proves it for a split: it recomputes the training
rows' features from the history cut at the first validation day and requires them to be identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

KEY = ["meter_id", "date"]
TARGET = "consumption_kwh"
LABEL = "label_kwh"
CATEGORICAL = ("building_type", "heating_system")


@dataclass(frozen=True)
class FeatureConfig:
    """``configs/ml/<pipeline>.yaml`` → ``params.features``."""

    hdd_base_c: float = 16.5
    lags: tuple[int, ...] = (1, 7)
    rolling: tuple[int, ...] = (7, 28)
    #: days of history for the meter's energy signature (past-only least squares of kWh on HDD)
    signature_days: int = 365
    signature_min_days: int = 28
    building: tuple[str, ...] = ("heated_area_m2", "construction_year", "building_type", "heating_system")
    calendar: tuple[str, ...] = ("weekday", "is_weekend", "is_holiday")
    weather: tuple[str, ...] = ("temp_mean_c", "temp_max_c", "temp_min_c", "precipitation_mm", "wind_ms")

    @classmethod
    def of(cls, params: dict[str, Any] | None) -> FeatureConfig:
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown feature option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


@dataclass(frozen=True)
class LabelConfig:
    """Which days are trustworthy labels (and history): ``rules`` maps a column of the daily table to its
    bounds (``{min: ..., max: ...}``); a day is usable when its consumption is known and every rule holds
    (a missing value breaks the rule). Typically: a complete day, as received, without fault marks."""

    rules: dict[str, dict[str, float]] = field(default_factory=lambda: {"hours_covered": {"min": 24}})

    @classmethod
    def of(cls, params: dict[str, Any] | None) -> LabelConfig:
        params = dict(params or {})
        unknown = sorted(set(params) - {"rules"})
        if unknown:
            raise ValueError(f"unknown label option(s) {unknown}; known: ['rules']")
        rules = params.get("rules", cls().rules)
        for col, bounds in rules.items():
            if not bounds or set(bounds) - {"min", "max"}:
                raise ValueError(f"label rule {col!r} must give 'min' and/or 'max', got {bounds!r}")
        return cls(rules={c: dict(b) for c, b in rules.items()})


def _check_columns(df: pd.DataFrame, needed: list[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: column(s) {missing} missing from the input; it has {list(df.columns)}")


def _rule_failures(daily: pd.DataFrame, cfg: LabelConfig) -> list[tuple[str, pd.Series]]:
    _check_columns(daily, [TARGET, *cfg.rules], "labels")
    out = [("no_consumption", daily[TARGET].isna())]
    for col, bounds in cfg.rules.items():
        v = daily[col].astype(float)
        bad = v.isna()
        if "min" in bounds:
            bad |= v < bounds["min"]
            name = f"{col}<{bounds['min']}"
        if "max" in bounds:
            bad |= v > bounds["max"]
            name = f"{col}>{bounds['max']}" if "min" not in bounds else f"{col} outside [{bounds['min']}, {bounds['max']}]"
        out.append((name, bad))
    return out


def usable_day(daily: pd.DataFrame, cfg: LabelConfig) -> pd.Series:
    """Days whose consumption is known and that pass every label rule (labels and history use them)."""
    bad = pd.Series(False, index=daily.index)
    for _, failed in _rule_failures(daily, cfg):
        bad |= failed
    return ~bad


def _sorted(daily: pd.DataFrame) -> pd.DataFrame:
    df = daily.copy()
    df.attrs = {}  # pandas deep-copies attrs on every operation
    df["date"] = pd.to_datetime(df["date"])
    return df.sort_values(KEY).reset_index(drop=True)


def build_labels(daily: pd.DataFrame, cfg: LabelConfig) -> pd.DataFrame:
    """``meter_id, date, month, label_kwh, label_ok, reason``: the day's consumption, whether to learn from
    it, and the first rule it broke."""
    df = _sorted(daily)
    failures = _rule_failures(df, cfg)
    ok = ~np.logical_or.reduce([f.to_numpy() for _, f in failures])
    reason = np.select([f.to_numpy() for _, f in failures], [n for n, _ in failures], default="")
    return pd.DataFrame(
        {"meter_id": df["meter_id"], "date": df["date"].dt.date, "month": df["month"], LABEL: df[TARGET], "label_ok": ok, "reason": reason}
    )


def _signature(g: pd.DataFrame, days: int, min_days: int) -> pd.DataFrame:
    """Past-only least squares ``kWh = a + b * HDD`` over the meter's usable days in ``[d - days, d)``."""
    s = g.set_index("date")
    v = s["_usable"].astype(float)
    x = s["hdd"].where(s["_usable"], 0.0)
    y = s["_y"].where(s["_usable"], 0.0)
    window = f"{days}D"
    roll = lambda col: col.rolling(window, closed="left").sum()  # noqa: E731 - excludes day d itself
    n, sx, sy, sxx, sxy = roll(v), roll(x), roll(y), roll(x * x), roll(x * y)
    denom = n * sxx - sx * sx
    slope = np.where((n >= min_days) & (denom > 1e-9), (n * sxy - sx * sy) / denom.where(denom > 1e-9, 1.0), np.nan)
    mean_y = np.where(n >= min_days, sy / n.where(n > 0, 1.0), np.nan)
    # a window with no heating days has no slope: the signature is its mean
    icpt = np.where(np.isnan(slope), mean_y, (sy - np.nan_to_num(slope) * sx) / n.where(n > 0, 1.0))
    icpt = np.where(n >= min_days, icpt, np.nan)
    return pd.DataFrame({"sig_intercept": icpt, "sig_slope": slope}, index=g.index)


def build_features(daily: pd.DataFrame, cfg: FeatureConfig, labels: LabelConfig | None = None) -> pd.DataFrame:
    """One row per meter and day: weather and HDD, calendar, building, and consumption history.

    History features use only earlier *usable* days (see :func:`usable_day`): ``lag_<k>`` (the day k days
    before, NaN if it was not usable), ``roll_<w>`` (mean over the previous w days), ``sig_*`` (the meter's
    energy signature from the previous ``signature_days``) and ``sig_pred = sig_intercept + sig_slope * hdd``.
    """
    labels = labels or LabelConfig()
    _check_columns(daily, [*KEY, "month", TARGET, *cfg.weather, *cfg.building, *cfg.calendar], "features")
    df = _sorted(daily)
    df["hdd"] = np.maximum(0.0, cfg.hdd_base_c - df["temp_mean_c"])
    doy = df["date"].dt.dayofyear
    df["doy_sin"] = np.sin(2 * np.pi * doy / 365.25)
    df["doy_cos"] = np.cos(2 * np.pi * doy / 365.25)
    df["_usable"] = usable_day(df, labels)
    df["_y"] = df[TARGET].where(df["_usable"])
    # history by calendar day (a missing day is a gap, never a shift of the window)
    parts = []
    for _, g in df[["meter_id", "date", "hdd", "_usable", "_y"]].groupby("meter_id", sort=True):
        s = g.set_index("date")["_y"]
        out = pd.DataFrame(index=g.index)
        for k in cfg.lags:
            out[f"lag_{k}"] = s.shift(k, freq="D").reindex(s.index).to_numpy()
        for w in cfg.rolling:
            out[f"roll_{w}"] = s.rolling(f"{w}D", closed="left", min_periods=max(1, w // 2)).mean().to_numpy()
        out = out.join(_signature(g, cfg.signature_days, cfg.signature_min_days))
        parts.append(out)
    hist = pd.concat(parts).sort_index()
    df = df.join(hist)
    df["sig_pred"] = df["sig_intercept"] + df["sig_slope"].fillna(0.0) * df["hdd"]
    for c in ("is_weekend", "is_holiday", "is_working_day"):
        if c in df.columns:
            df[c] = df[c].astype("float")
    cols = [*KEY, "month", "hdd", *cfg.weather, "doy_sin", "doy_cos", *cfg.calendar, *cfg.building,
            *(f"lag_{k}" for k in cfg.lags), *(f"roll_{w}" for w in cfg.rolling), "sig_intercept", "sig_slope", "sig_pred"]
    out = df[list(dict.fromkeys(cols))].copy()
    out["date"] = out["date"].dt.date
    return out


def feature_columns(features: pd.DataFrame) -> list[str]:
    return [c for c in features.columns if c not in (*KEY, "month")]


# --------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class SplitConfig:
    """``validation_months``: the last months validate; earlier ones train. ``min_history_days``: a meter's
    first days (no history yet) are excluded. ``gap_days``: days dropped between train and validation."""

    validation_months: int = 6
    min_history_days: int = 28
    gap_days: int = 0

    @classmethod
    def of(cls, params: dict[str, Any] | None) -> SplitConfig:
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown split option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**params)


def time_split(labels: pd.DataFrame, cfg: SplitConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``meter_id, date, month, split`` (``train`` / ``validation`` / ``excluded`` with a ``reason``) and the cut.

    Every validation day comes after every training day: the cut is the first day of the last
    ``validation_months`` months (no shuffling, all meters cut on the same day).
    """
    months = sorted(labels["month"].unique())
    if len(months) <= cfg.validation_months:
        raise ValueError(f"need more than {cfg.validation_months} months to validate on, got {len(months)}")
    cut = pd.Timestamp(f"{months[-cfg.validation_months]}-01")
    train_end = cut - pd.Timedelta(days=cfg.gap_days)
    date = pd.to_datetime(labels["date"])
    first = date.groupby(labels["meter_id"]).transform("min")
    young = date < first + pd.Timedelta(days=cfg.min_history_days)
    split = np.where(date >= cut, "validation", np.where(date < train_end, "train", "excluded"))
    reason = np.where(split == "excluded", "gap", "")
    reason = np.where(young, "no_history", reason)
    reason = np.where(~labels["label_ok"].to_numpy(), "label_not_ok", reason)
    split = np.where(reason != "", "excluded", split)
    out = pd.DataFrame({"meter_id": labels["meter_id"], "date": labels["date"], "month": labels["month"], "split": split, "reason": reason})
    info = {
        "cut_date": cut.date().isoformat(),
        "train_end_date": (train_end - pd.Timedelta(days=1)).date().isoformat(),
        "train_months": [m for m in months if m < months[-cfg.validation_months]],
        "validation_months": months[-cfg.validation_months:],
        **{f"rows_{k}": int(v) for k, v in pd.Series(split).value_counts().items()},
    }
    return out, info


# ------------------------------------------------------------------------------------------- leakage
@dataclass
class LeakageReport:
    passed: bool
    train_rows_checked: int
    leaking_rows: int
    leaking_features: dict[str, int] = field(default_factory=dict)
    overlap_rows: int = 0
    train_after_cut: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)


def leakage_report(
    daily: pd.DataFrame,
    features: pd.DataFrame,
    split: pd.DataFrame,
    cut_date: str,
    recompute: Callable[[pd.DataFrame], pd.DataFrame],
    *,
    atol: float = 1e-9,
) -> LeakageReport:
    """Prove that no validation day reached a training feature.

    ``recompute`` (the feature function) runs again on ``daily`` cut before ``cut_date`` — a world in which
    the validation days never happened. Every training row's features must come out identical (NaN equals
    NaN); any difference means a training feature depended on validation-period data. Also: no training
    day on or after the cut, and no meter-day both in training and validation.
    """
    cut = pd.Timestamp(cut_date).date()
    train_keys = split.loc[split["split"] == "train", KEY]
    valid_keys = split.loc[split["split"] == "validation", KEY]
    overlap = len(train_keys.merge(valid_keys, on=KEY))
    after = int((pd.to_datetime(train_keys["date"]).dt.date >= cut).sum())
    past = daily[pd.to_datetime(daily["date"]).dt.date < cut]
    again = recompute(past)
    cols = feature_columns(features)
    stored = train_keys.merge(features, on=KEY, how="left")
    fresh = train_keys.merge(again, on=KEY, how="left", suffixes=("", ""))
    leaking: dict[str, int] = {}
    bad = np.zeros(len(train_keys), dtype=bool)
    for c in cols:
        a, b = stored[c], fresh[c] if c in fresh.columns else pd.Series(np.nan, index=fresh.index)
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            av, bv = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
            diff = ~((np.isnan(av) & np.isnan(bv)) | np.isclose(av, bv, rtol=0.0, atol=atol))
        else:
            diff = ~((a.isna() & b.isna()) | (a.astype(str) == b.astype(str))).to_numpy()
        if diff.any():
            leaking[c] = int(diff.sum())
            bad |= diff
    samples = []
    for i in np.flatnonzero(bad)[:5]:
        row = {"meter_id": stored.iloc[i]["meter_id"], "date": str(stored.iloc[i]["date"])}
        row.update({c: [stored.iloc[i][c], fresh.iloc[i][c]] for c in leaking})
        samples.append(row)
    return LeakageReport(
        passed=not bad.any() and overlap == 0 and after == 0,
        train_rows_checked=len(train_keys),
        leaking_rows=int(bad.sum()),
        leaking_features=leaking,
        overlap_rows=overlap,
        train_after_cut=after,
        samples=samples,
    )
