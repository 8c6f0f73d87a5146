"""Forecasting a daily series from its drivers: features, labels, the time-based split and the leakage
proof. Pure pandas.

Input: one row per entity and day (an entity key is optional: a single series has none). The pipeline's
YAML names every column it reads (``params.columns``: entity key, time, target, temperature and other
drivers, categorical columns); nothing here knows a scenario's column names. A feature of day *d* may use
that day's drivers (known when the day is forecast), the entity's static attributes, and the target only
from days strictly before *d*. :func:`leakage_report` proves it for a split: it recomputes the training
rows' features from the history cut at the first validation day and requires them to be identical.

A row without one of its declared drivers is never filled with 0: its HDD stays empty, it is left out of
the energy signature, and its label is excluded with the reason ``no_<driver>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lakehouse.specs.ml import Columns, FeatureConfig, LabelConfig, SplitConfig

#: the label column of the labels table (the target's value for the day)
LABEL = "label"


def groups(df: pd.DataFrame, entity: tuple[str, ...] | list[str]) -> Iterator[pd.DataFrame]:
    """The rows of each series (the whole frame when there is no entity key)."""
    if not entity:
        yield df
        return
    for _, g in df.groupby(list(entity), sort=True, dropna=False):
        yield g


def _check_columns(df: pd.DataFrame, needed: list[str], what: str) -> None:
    missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: column(s) {missing} missing from the input; it has {list(df.columns)}")


def _rule_failures(daily: pd.DataFrame, cfg: LabelConfig, cols: Columns, *, drivers: bool) -> list[tuple[str, pd.Series]]:
    """Named failures in order: no target, (no driver,) then each rule."""
    needed = [cols.target, *cfg.rules, *(cols.required_drivers if drivers else [])]
    _check_columns(daily, needed, "labels")
    out = [(f"no_{cols.target}", daily[cols.target].isna())]
    if drivers:
        out += [(f"no_{d}", daily[d].isna()) for d in cols.required_drivers]
    for col, bounds in cfg.rules.items():
        v = daily[col].astype(float)
        bad = v.isna()
        if bounds.min is not None:
            bad |= v < bounds.min
            name = f"{col}<{bounds.min}"
        if bounds.max is not None:
            bad |= v > bounds.max
            name = f"{col}>{bounds.max}" if bounds.min is None else f"{col} outside [{bounds.min}, {bounds.max}]"
        out.append((name, bad))
    return out


def usable_day(daily: pd.DataFrame, cfg: LabelConfig, cols: Columns, *, drivers: bool = False) -> pd.Series:
    """Days whose target is known and that pass every label rule (history uses them); with ``drivers``,
    also every declared driver (labels and the energy signature use them)."""
    bad = pd.Series(False, index=daily.index)
    for _, failed in _rule_failures(daily, cfg, cols, drivers=drivers):
        bad |= failed
    return ~bad


def _sorted(daily: pd.DataFrame, cols: Columns) -> pd.DataFrame:
    df = daily.copy()
    df.attrs = {}  # pandas deep-copies attrs on every operation
    df[cols.time] = pd.to_datetime(df[cols.time])
    return df.sort_values(cols.key).reset_index(drop=True)


def build_labels(daily: pd.DataFrame, cfg: LabelConfig, cols: Columns) -> pd.DataFrame:
    """``<key>, month, label, label_ok, reason``: the day's target, whether to learn from it, and the
    first rule it broke (``no_<target>``, ``no_<driver>``, then the declared rules)."""
    _check_columns(daily, [*cols.key, "month"], "labels")
    df = _sorted(daily, cols)
    failures = _rule_failures(df, cfg, cols, drivers=True)
    ok = ~np.logical_or.reduce([f.to_numpy() for _, f in failures])
    reason = np.select([f.to_numpy() for _, f in failures], [n for n, _ in failures], default="")
    out = df[cols.key].copy()
    out[cols.time] = df[cols.time].dt.date
    out["month"] = df["month"]
    out[LABEL] = df[cols.target]
    out["label_ok"] = ok
    out["reason"] = reason
    return out


def _signature(g: pd.DataFrame, time: str, days: int, min_days: int) -> pd.DataFrame:
    """Past-only least squares ``y = a + b * HDD`` over the series' signature days in ``[d - days, d)``."""
    s = g.set_index(time)
    use = s["_sig_usable"]
    v = use.astype(float)
    x = s["hdd"].where(use, 0.0)
    y = s["_y"].where(use, 0.0)
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


def build_features(daily: pd.DataFrame, cfg: FeatureConfig, labels: LabelConfig, cols: Columns) -> pd.DataFrame:
    """One row per entity and day: drivers and HDD/CDD, season, carried columns, and target history.

    History features use only earlier *usable* days (see :func:`usable_day`): ``lag_<k>`` (the day k days
    before, NaN if it was not usable), ``roll_<w>`` (mean over the previous w days), ``sig_*`` (the
    series' energy signature from the previous ``signature_days``, fitted on days with a temperature) and
    ``sig_pred = sig_intercept + sig_slope * hdd`` (empty on a day without temperature).
    """
    needs_temp = cfg.hdd_base_c is not None or cfg.cdd_base_c is not None
    if needs_temp and not cols.temperature:
        raise ValueError("features.hdd_base_c / cdd_base_c need params.columns.temperature")
    if cfg.signature_days and cfg.hdd_base_c is None:
        raise ValueError("features.signature_days needs features.hdd_base_c (the signature is fitted on HDD); 0 disables it")
    _check_columns(daily, [*cols.key, "month", cols.target, *cols.required_drivers, *cfg.columns, *cfg_rules(labels)], "features")
    df = _sorted(daily, cols)
    t = cols.time
    derived: list[str] = []
    if cfg.hdd_base_c is not None:
        df["hdd"] = np.maximum(0.0, cfg.hdd_base_c - df[cols.temperature].astype(float))  # NaN stays NaN
        derived.append("hdd")
    if cfg.cdd_base_c is not None:
        df["cdd"] = np.maximum(0.0, df[cols.temperature].astype(float) - cfg.cdd_base_c)
        derived.append("cdd")
    doy = df[t].dt.dayofyear
    df["doy_sin"] = np.sin(2 * np.pi * doy / 365.25)
    df["doy_cos"] = np.cos(2 * np.pi * doy / 365.25)
    df["_usable"] = usable_day(df, labels, cols)
    df["_sig_usable"] = usable_day(df, labels, cols, drivers=True)
    df["_y"] = df[cols.target].where(df["_usable"])
    # history by calendar day (a missing day is a gap, never a shift of the window)
    parts = []
    hist_cols = [*cols.entity, t, "_usable", "_sig_usable", "_y", *(["hdd"] if "hdd" in df.columns else [])]
    for g in groups(df[hist_cols], cols.entity):
        s = g.set_index(t)["_y"]
        out = pd.DataFrame(index=g.index)
        for k in cfg.lags:
            out[f"lag_{k}"] = s.shift(k, freq="D").reindex(s.index).to_numpy()
        for w in cfg.rolling:
            out[f"roll_{w}"] = s.rolling(f"{w}D", closed="left", min_periods=max(1, w // 2)).mean().to_numpy()
        if cfg.signature_days:
            out = out.join(_signature(g, t, cfg.signature_days, cfg.signature_min_days))
        parts.append(out)
    hist = pd.concat(parts).sort_index()
    df = df.join(hist)
    sig = []
    if cfg.signature_days:
        df["sig_pred"] = df["sig_intercept"] + df["sig_slope"].fillna(0.0) * df["hdd"]
        sig = ["sig_intercept", "sig_slope", "sig_pred"]
    carried = [c for c in dict.fromkeys([*cols.required_drivers, *cfg.columns]) if c not in cols.key]
    for c in carried:
        if (
            pd.api.types.is_bool_dtype(df[c])
            or df[c].dtype == object
            and df[c].dropna().map(type).eq(bool).all()
            and df[c].notna().any()
        ):
            df[c] = df[c].astype("float")
    out_cols = [
        *cols.key,
        "month",
        *derived,
        *carried,
        "doy_sin",
        "doy_cos",
        *(f"lag_{k}" for k in cfg.lags),
        *(f"roll_{w}" for w in cfg.rolling),
        *sig,
    ]
    out = df[list(dict.fromkeys(out_cols))].copy()
    out[t] = out[t].dt.date
    return out


def cfg_rules(labels: LabelConfig) -> list[str]:
    return list(labels.rules)


def feature_columns(features: pd.DataFrame, cols: Columns) -> list[str]:
    return [c for c in features.columns if c not in (*cols.key, "month")]


# --------------------------------------------------------------------------------------------- split
def time_split(labels: pd.DataFrame, cfg: SplitConfig, cols: Columns) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``<key>, month, split, reason`` (``train`` / ``validation`` / ``excluded``) and the cut.

    Every validation day comes after every training day: the cut is the first day of the last
    ``validation_months`` months (no shuffling, every series cut on the same day). An excluded row says
    why: ``no_history``, ``gap``, or its label's own reason (``no_<driver>``, a broken rule).
    """
    months = sorted(labels["month"].unique())
    if len(months) <= cfg.validation_months:
        raise ValueError(f"need more than {cfg.validation_months} months to validate on, got {len(months)}")
    cut = pd.Timestamp(f"{months[-cfg.validation_months]}-01")
    train_end = cut - pd.Timedelta(days=cfg.gap_days)
    date = pd.to_datetime(labels[cols.time])
    first = (
        date.groupby([labels[c] for c in cols.entity]).transform("min")
        if cols.entity
        else pd.Series(date.min(), index=date.index)
    )
    young = date < first + pd.Timedelta(days=cfg.min_history_days)
    split = np.where(date >= cut, "validation", np.where(date < train_end, "train", "excluded"))
    reason = np.where(split == "excluded", "gap", "")
    reason = np.where(young, "no_history", reason)
    label_ok = labels["label_ok"].to_numpy()
    reason = np.where(~label_ok, labels["reason"].astype(str).to_numpy(), reason)
    split = np.where(reason != "", "excluded", split)
    out = labels[[*cols.key, "month"]].copy()
    out["split"] = split
    out["reason"] = reason
    info = {
        "cut_date": cut.date().isoformat(),
        "train_end_date": (train_end - pd.Timedelta(days=1)).date().isoformat(),
        "train_months": [m for m in months if m < months[-cfg.validation_months]],
        "validation_months": months[-cfg.validation_months :],
        **{f"rows_{k}": int(v) for k, v in pd.Series(split).value_counts().items()},
    }
    return out, info


# ------------------------------------------------------------------------------------- extrapolation
def extrapolation(features: pd.DataFrame, split: pd.DataFrame, drivers: list[str], cols: Columns) -> dict[str, dict[str, Any]]:
    """Per driver: the training range, the validation range, and how many validation rows fall outside the
    training range (models, trees above all, cannot be trusted there: a winter colder than any seen)."""
    f = features.copy()
    f[cols.time] = pd.to_datetime(f[cols.time]).dt.date
    s = split[[*cols.key, "split"]].copy()
    s[cols.time] = pd.to_datetime(s[cols.time]).dt.date
    df = s.merge(f, on=cols.key, how="inner")
    out = {}
    for d in drivers:
        if d not in df.columns or not pd.api.types.is_numeric_dtype(df[d]):
            continue
        tr = df.loc[df["split"] == "train", d].dropna().astype(float)
        va = df.loc[df["split"] == "validation", d].dropna().astype(float)
        if tr.empty or va.empty:
            continue
        lo, hi = float(tr.min()), float(tr.max())
        outside = va[(va < lo) | (va > hi)]
        out[d] = {
            "train_min": lo,
            "train_max": hi,
            "validation_min": float(va.min()),
            "validation_max": float(va.max()),
            "validation_rows_outside": int(len(outside)),
            "validation_rows": int(len(va)),
        }
    return out


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
    cols: Columns,
    *,
    atol: float = 1e-9,
) -> LeakageReport:
    """Prove that no validation day reached a training feature.

    ``recompute`` (the feature function) runs again on ``daily`` cut before ``cut_date`` — a world in which
    the validation days never happened. Every training row's features must come out identical (NaN equals
    NaN); any difference means a training feature depended on validation-period data. Also: no training
    day on or after the cut, and no row both in training and validation.
    """
    key = cols.key
    cut = pd.Timestamp(cut_date).date()
    train_keys = split.loc[split["split"] == "train", key]
    valid_keys = split.loc[split["split"] == "validation", key]
    overlap = len(train_keys.merge(valid_keys, on=key))
    after = int((pd.to_datetime(train_keys[cols.time]).dt.date >= cut).sum())
    past = daily[pd.to_datetime(daily[cols.time]).dt.date < cut]
    again = recompute(past)
    fcols = feature_columns(features, cols)
    stored = train_keys.merge(features, on=key, how="left")
    fresh = train_keys.merge(again, on=key, how="left", suffixes=("", ""))
    leaking: dict[str, int] = {}
    bad = np.zeros(len(train_keys), dtype=bool)
    for c in fcols:
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
        row: dict[str, Any] = {k: str(stored.iloc[i][k]) for k in key}
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
