"""The forecasting functions on a single series with columns of its own: declared columns, missing
drivers, model types, declared cross-validation. Pure pandas/scikit-learn, no Spark, no Dagster."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakehouse.ml import pipeline as fp
from lakehouse.ml import train
from lakehouse_tests.conftest import REPO


def series(days: int = 400, seed: int = 0) -> pd.DataFrame:
    """One daily series: ``y = 20 + 8 * HDD(15) + noise`` from an outdoor temperature ``t_out``."""
    rng = np.random.default_rng(seed)
    day = pd.date_range("2020-01-01", periods=days, freq="D")
    t = 9 - 9 * np.cos(2 * np.pi * (day.dayofyear - 15) / 365.25) + rng.normal(0, 2, days)
    y = 20 + 8 * np.maximum(0, 15 - t) + rng.normal(0, 2, days)
    return pd.DataFrame({"d": day.date, "month": day.strftime("%Y-%m"), "gas": y, "t_out": t})


PARAMS = {
    "seed": 0,
    "columns": {"time": "d", "target": "gas", "temperature": "t_out"},
    "features": {
        "hdd_base_c": 15,
        "columns": ["t_out"],
        "lags": [1],
        "rolling": [7],
        "signature_days": 120,
        "signature_min_days": 20,
    },
    "split": {"validation_months": 2, "min_history_days": 7},
    "cv": {"kind": "kfold", "folds": 5},
    "models": {
        "line": {"type": "sklearn_linear", "features": ["hdd"], "cv": True},
        "ridge": {"type": "sklearn_ridge", "features": ["hdd", "doy_sin", "doy_cos"], "cv": True, "params": {"alpha": 0.5}},
    },
    "champion": {"metric": "cv_rmse"},
}


def test_a_day_without_its_driver_is_no_label_and_never_enters_the_signature():
    p = fp.ForecastParams.model_validate(PARAMS)
    daily = series()
    gaps = daily.index[[50, 90, 91, 200, 300]]
    daily.loc[gaps, "t_out"] = np.nan
    labels = fp.labels_from(daily, p)
    assert list(labels.loc[gaps, "reason"]) == ["no_t_out"] * 5 and not labels.loc[gaps, "label_ok"].any()
    feats = fp.features_from(daily, p)
    assert feats.loc[gaps, "hdd"].isna().all() and feats.loc[gaps, "sig_pred"].isna().all()
    # whatever the target of those days, no other day's signature moves (they do not enter the fit)
    changed = daily.copy()
    changed.loc[gaps, "gas"] = 1e4
    again = fp.features_from(changed, p)
    pd.testing.assert_series_equal(feats["sig_slope"], again["sig_slope"])
    pd.testing.assert_series_equal(feats["sig_intercept"], again["sig_intercept"])
    # the lag of the next day still sees the measured target (history needs no temperature)
    assert again.loc[gaps[0] + 1, "lag_1"] == 1e4
    split, _ = fp.split_from(labels, p)
    assert set(split.loc[gaps, "reason"]) == {"no_t_out"} and set(split.loc[gaps, "split"]) == {"excluded"}


def test_the_days_without_driver_would_have_moved_the_signature_as_zero_hdd():
    """The failure the issue reports: taken as HDD 0, the missing days pull the slope."""
    p = fp.ForecastParams.model_validate(PARAMS)
    daily = series()
    cold = daily.index[daily["t_out"] < 2][:15]
    daily.loc[cold, "t_out"] = np.nan
    honest = fp.features_from(daily, p)
    as_zero = daily.assign(t_out=daily["t_out"].fillna(15.0))  # what "HDD taken as 0" amounts to
    wrong = fp.features_from(as_zero, p)
    later = honest.index > cold.max()
    assert (honest.loc[later, "sig_slope"] - wrong.loc[later, "sig_slope"]).abs().max() > 0.5
    assert (honest.loc[later, "sig_slope"] - 8).abs().median() < (wrong.loc[later, "sig_slope"] - 8).abs().median()


def test_kfold_cv_gives_every_model_the_same_folds_and_pooled_r2():
    p = fp.ForecastParams.model_validate(PARAMS)
    daily = series()
    labels = fp.labels_from(daily, p)
    split, _ = fp.split_from(labels, p)
    data = fp.dataset(fp.features_from(daily, p), labels, split, p)
    runs = {n: fp.fit_model(cfg, data, p) for n, cfg in p.models.items()}
    assert runs["line"].metrics["cv_folds_hash"] == runs["ridge"].metrics["cv_folds_hash"]
    assert runs["line"].metrics["cv_folds"] == 5 and runs["line"].metrics["cv_kind"] == "kfold"
    assert 0.8 < runs["line"].metrics["cv_r2"] <= 1
    # the folds are shuffled (not blocks of consecutive days) and seeded
    folds = train.cv_folds(data.train, p.cv, "d")
    assert not np.array_equal(folds[0][1], np.arange(len(folds[0][1])))
    again = train.cv_folds(data.train, p.cv, "d")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = train.cv_folds(data.train, train.CVConfig(kind="kfold", folds=5, seed=1), "d")
    assert not np.array_equal(folds[0][1], other[0][1])
    ts = train.cv_folds(data.train, train.CVConfig(kind="time_series", folds=5, seed=0), "d")
    assert all(fit.max() < test.min() for fit, test in ts)  # forward chaining: rows are in time order


def test_ridge_and_linear_extrapolate_where_trees_cannot():
    """A validation day colder than any training day: the linear signature follows the slope, gradient
    boosting stays at the coldest training value."""
    daily = series(days=700)
    x = daily.assign(hdd=np.maximum(0, 15 - daily["t_out"]))
    fitted = {k: train.fit(k, x, x["gas"].to_numpy(), ["hdd"], {}, 0) for k in ("sklearn_ridge", "sklearn_gbm")}
    cold = pd.DataFrame({"hdd": [x["hdd"].max() + 15]})
    expected = 20 + 8 * cold["hdd"].iloc[0]
    assert abs(fitted["sklearn_ridge"].predict(cold)[0] - expected) < 10
    assert expected - fitted["sklearn_gbm"].predict(cold)[0] > 60


def test_columns_and_cv_are_declared_or_refused_with_the_option_named():
    with pytest.raises(ValueError, match=r"columns.time\n  Field required"):
        fp.ForecastParams.model_validate({**PARAMS, "columns": {"entity": ["x"]}})
    with pytest.raises(ValueError, match=r"cv.kind\n  Input should be 'kfold' or 'time_series'"):
        fp.ForecastParams.model_validate({**PARAMS, "cv": {"kind": "shuffle"}})
    with pytest.raises(ValueError, match=r"model\(s\) \['gbm'\] need 'cv: true'"):
        fp.ForecastParams.model_validate(
            {**PARAMS, "models": {**PARAMS["models"], "gbm": {"type": "sklearn_gbm", "features": ["hdd"]}}}
        )
    no_temperature = fp.ForecastParams.model_validate({**PARAMS, "columns": {"time": "d", "target": "gas"}})
    with pytest.raises(ValueError, match="columns.temperature"):
        fp.features_from(series(), no_temperature)
    # cv shuffles with the pipeline's seed unless it names its own
    assert fp.ForecastParams.model_validate({**PARAMS, "seed": 3, "cv": {"kind": "kfold"}}).cv == train.CVConfig(
        kind="kfold", folds=10, seed=3
    )
    assert fp.ForecastParams.model_validate({**PARAMS, "seed": 3, "cv": {"kind": "kfold", "seed": 1}}).cv.seed == 1


def test_no_scenario_column_name_is_a_constant_in_the_ml_package():
    """Every column of the demo's meter view and source is declared in lakehouse/defs/, none is named in
    lakehouse/ml/ (prose aside: only quoted names count)."""
    names = set()
    for path in REPO.glob("lakehouse/defs/*/*/defs.yaml"):
        if path.parent.name in ("consumption_daily", "meter_readings"):
            names |= set(re.findall(r"\bname: ([a-z_0-9]+)", path.read_text()))
    names -= {"date", "month", "consumption_daily", "meter_readings"}
    assert {"meter_id", "consumption_kwh", "temp_mean_c", "hours_covered"} <= names
    found = []
    for py in sorted(Path(REPO / "lakehouse" / "ml").glob("*.py")):
        for n, line in enumerate(py.read_text().splitlines(), 1):
            found += [f"{py.name}:{n}: {m}" for m in re.findall(r"[\"']([a-z_0-9]+)[\"']", line) if m in names]
    assert found == []


def test_folds_fitted_side_by_side_score_as_one_after_the_other(monkeypatch):
    """Gradient boosting's folds on as many threads as cores: every fold's figures and the out-of-fold
    predictions are those of a one-core run."""
    daily = series(days=500).assign(t2=lambda d: d["t_out"] ** 2)
    x = daily.assign(hdd=np.maximum(0, 15 - daily["t_out"]))
    cfg = train.CVConfig(kind="kfold", folds=4, seed=3)
    threads: dict[int, set[str]] = {}
    real_fit = train.fit

    def fit(*args, **kwargs):
        import threading

        threads.setdefault(cores, set()).add(threading.current_thread().name)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    got = {}
    for cores in (1, 4):
        monkeypatch.setattr(train.os, "cpu_count", lambda cores=cores: cores)
        got[cores] = train.cross_validate(
            "sklearn_gbm", x, x["gas"].to_numpy(), ["hdd", "t2"], {"max_iter": 30}, 0, cfg, ["d"], "d"
        )
    assert len(threads[1]) == 1 and len(threads[4]) > 1  # the folds did run side by side
    assert got[4].folds == got[1].folds and np.array_equal(got[4].oof, got[1].oof)
