"""Model training: regularized linear models (scikit-learn ``Ridge`` / ``LinearRegression``), gradient
boosting and a torch MLP, all seeded and deterministic.

All are scikit-learn ``Pipeline`` objects (one-hot for the declared categorical columns, median imputation,
standardization, then the regressor), so training, prediction, permutation importance, persistence
(``skops``, torch weights apart: :mod:`lakehouse.ml.models`) and reproduction treat them alike.
Hyper-parameters come from ``lakehouse/defs/ml/``.

Cross-validation is declared (``params.cv``) and :func:`cv_folds` makes the folds once for every model of a
pipeline, so models are compared on the same rows:

- ``time_series`` (forward chaining): the training *days* form ``folds + 1`` consecutive blocks; fold *k*
  trains on blocks 1..k and validates on block k+1; all series of a day stay in the same block. The
  honest protocol for a model that forecasts days it has never seen (the target is autocorrelated through
  the weather and the lag/rolling features);
- ``kfold``: the training rows shuffled with the seed into ``folds`` folds (10 by default) — the usual
  protocol for an energy signature (target on HDD), which has no history features. Every row is predicted
  once, so the pooled out-of-fold R² is comparable across models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import KFold, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from lakehouse.ml.evaluate import regression_metrics
from lakehouse.specs.ml import MODEL_TYPES, CVConfig, model_columns


def single_threaded():
    """Native thread pools (OpenMP, BLAS) limited to one thread for the block.

    On a small, busy machine OpenMP threads spin against other processes and a fit gets many times slower
    than on one thread; one thread is also what makes results independent of the machine's core count.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _preprocess(features: Sequence[str], categorical: Sequence[str], *, impute: bool) -> ColumnTransformer:
    cats = [c for c in features if c in categorical]
    nums = [c for c in features if c not in categorical]
    num_steps: list[tuple[str, Any]] = []
    if impute:
        num_steps.append(("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)))
    num_steps.append(("scale", StandardScaler()))
    return ColumnTransformer(
        [
            ("num", Pipeline(num_steps), nums),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats),
        ],
        verbose_feature_names_out=False,
    )


class TorchMLPRegressor(RegressorMixin, BaseEstimator):
    """A small fully connected network trained on CPU with a fixed seed (full determinism: one thread,
    deterministic algorithms, a seeded generator for batch order). The target is standardized (or log
    transformed first with ``target="log"``); the last ``early_stopping_share`` of the *training* rows
    (they are in time order) decides when to stop — the validation set is never seen.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (64, 32),
        epochs: int = 60,
        batch_size: int = 256,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        target: str = "log",
        early_stopping_share: float = 0.1,
        patience: int = 8,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.target = target
        self.early_stopping_share = early_stopping_share
        self.patience = patience
        self.seed = seed
        self.threads = threads

    def _net(self, n_in: int):
        import torch

        layers: list[Any] = []
        width = n_in
        for h in self.hidden:
            layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU()]
            width = int(h)
        layers.append(torch.nn.Linear(width, 1))
        return torch.nn.Sequential(*layers)

    def _y(self, y: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(y, 1e-3)) if self.target == "log" else y

    def fit(self, X, y):
        import torch

        if self.target not in ("log", "raw"):
            raise ValueError(f"target must be 'log' or 'raw', got {self.target!r}")
        X = np.asarray(X, dtype=np.float32)
        t = self._y(np.asarray(y, dtype=np.float64))
        self.y_mean_, self.y_std_ = float(t.mean()), float(t.std() or 1.0)
        t = ((t - self.y_mean_) / self.y_std_).astype(np.float32)
        n_stop = int(len(X) * self.early_stopping_share) if self.early_stopping_share > 0 else 0
        Xtr, ttr = X[: len(X) - n_stop], t[: len(t) - n_stop]
        Xes, tes = X[len(X) - n_stop :], t[len(t) - n_stop :]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with _deterministic():
                torch.manual_seed(self.seed)
                net = self._net(X.shape[1])
                opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
                gen = torch.Generator().manual_seed(self.seed)
                xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ttr)
                xe, ye = torch.from_numpy(Xes), torch.from_numpy(tes)
                best, best_state, waited, history = np.inf, None, 0, []
                for epoch in range(self.epochs):  # noqa: B007 - the last one is recorded after the loop
                    net.train()
                    order = torch.randperm(len(xt), generator=gen)
                    for i in range(0, len(order), self.batch_size):
                        idx = order[i : i + self.batch_size]
                        opt.zero_grad()
                        loss = torch.nn.functional.mse_loss(net(xt[idx]).squeeze(1), yt[idx])
                        loss.backward()
                        opt.step()
                    if n_stop:
                        net.eval()
                        with torch.no_grad():
                            es = float(torch.nn.functional.mse_loss(net(xe).squeeze(1), ye))
                        history.append(es)
                        if es < best - 1e-6:
                            best, waited = es, 0
                            best_state = {k: v.clone() for k, v in net.state_dict().items()}
                        else:
                            waited += 1
                            if waited >= self.patience:
                                break
                if best_state is not None:
                    net.load_state_dict(best_state)
        finally:
            torch.set_num_threads(threads)
        self.net_ = net
        self.epochs_run_ = epoch + 1
        self.early_stopping_history_ = history
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        import torch

        X = np.asarray(X, dtype=np.float32)
        self.net_.eval()
        with torch.no_grad():
            out = self.net_(torch.from_numpy(X)).squeeze(1).numpy().astype(np.float64)
        t = out * self.y_std_ + self.y_mean_
        return np.exp(t) if self.target == "log" else t


class _deterministic:
    """``torch.use_deterministic_algorithms(True)`` for the block, restored afterwards."""

    def __enter__(self):
        import torch

        self._was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        import torch

        torch.use_deterministic_algorithms(self._was)


class BaselineRatioRegressor(RegressorMixin, BaseEstimator):
    """Learns the ratio of the target to a baseline column (e.g. the meter's energy-signature prediction)
    and predicts ``baseline * ratio``: the model corrects a physical baseline instead of re-learning it.

    Rows whose baseline is missing or not positive are left out of training; for them the prediction
    falls back to the training target's median (they are rare: a meter with under ``signature_min_days``
    usable days in its window).
    """

    def __init__(self, estimator: Any = None, baseline: str = "sig_pred") -> None:
        self.estimator = estimator
        self.baseline = baseline

    def fit(self, X: pd.DataFrame, y):
        y = np.asarray(y, dtype=float)
        base = X[self.baseline].to_numpy(dtype=float)
        ok = np.isfinite(base) & (base > 0)
        if not ok.any():
            raise ValueError(f"baseline {self.baseline!r} is missing on every training row")
        self.estimator_ = self.estimator.fit(X[ok], y[ok] / base[ok])
        self.fallback_ = float(np.median(y))
        return self

    def predict(self, X: pd.DataFrame):
        base = X[self.baseline].to_numpy(dtype=float)
        ok = np.isfinite(base) & (base > 0)
        out = np.full(len(X), self.fallback_)
        if ok.any():
            out[ok] = base[ok] * self.estimator_.predict(X[ok])
        return out


def make_model(
    kind: str,
    features: Sequence[str],
    params: dict[str, Any],
    seed: int,
    baseline: str | None = None,
    categorical: Sequence[str] = (),
):
    """An unfitted pipeline of ``kind`` (see ``MODEL_TYPES``) over ``features`` (``categorical`` ones
    one-hot encoded), learning the ratio to the ``baseline`` column when one is given."""
    params = dict(params)
    if kind == "sklearn_gbm":
        model = Pipeline(
            [
                ("prep", _preprocess(features, categorical, impute=False)),
                ("model", HistGradientBoostingRegressor(random_state=seed, **params)),
            ]
        )
    elif kind == "sklearn_ridge":
        model = Pipeline(
            [("prep", _preprocess(features, categorical, impute=True)), ("model", Ridge(random_state=seed, **params))]
        )
    elif kind == "sklearn_linear":
        model = Pipeline([("prep", _preprocess(features, categorical, impute=True)), ("model", LinearRegression(**params))])
    elif kind == "torch_mlp":
        model = Pipeline(
            [("prep", _preprocess(features, categorical, impute=True)), ("model", TorchMLPRegressor(seed=seed, **params))]
        )
    else:
        raise ValueError(f"unknown model type {kind!r}; known: {MODEL_TYPES}")
    return BaselineRatioRegressor(model, baseline) if baseline else model


def fit(
    kind: str,
    train: pd.DataFrame,
    target: np.ndarray,
    features: Sequence[str],
    params: dict[str, Any],
    seed: int,
    baseline: str | None = None,
    categorical: Sequence[str] = (),
):
    cols = model_columns(features, baseline)
    missing = [c for c in cols if c not in train.columns]
    if missing:
        raise KeyError(f"model features {missing} are not in the feature table")
    model = make_model(kind, features, params, seed, baseline, categorical)
    model.fit(train[cols], target)
    return model


def cv_folds(train: pd.DataFrame, cfg: CVConfig, time: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit rows, test rows)`` position arrays of each fold (see the module docstring). The same
    training rows and config give the same folds, whatever the model."""
    if cfg.kind == "kfold":
        if len(train) < cfg.folds:
            raise ValueError(f"{len(train)} training rows cannot make {cfg.folds} folds")
        return list(KFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed).split(np.arange(len(train))))
    day_of_row = pd.to_datetime(train[time]).to_numpy()
    days = np.unique(day_of_row)
    if len(days) < cfg.folds + 1:
        raise ValueError(f"{len(days)} training days cannot make {cfg.folds} time-ordered folds")
    out = []
    for fit_days, test_days in TimeSeriesSplit(n_splits=cfg.folds).split(days):
        out.append((np.flatnonzero(np.isin(day_of_row, days[fit_days])), np.flatnonzero(np.isin(day_of_row, days[test_days]))))
    return out


def folds_hash(folds: list[tuple[np.ndarray, np.ndarray]], train: pd.DataFrame, key: Sequence[str]) -> str:
    """A hash of which rows (by key) each fold tests: two models with the same hash met the same folds."""
    import hashlib

    h = hashlib.sha256()
    keys = train[list(key)].astype(str).agg("|".join, axis=1).to_numpy()
    for k, (_, test) in enumerate(folds):
        h.update(f"fold{k}:".encode())
        h.update("\n".join(sorted(keys[test])).encode())
    return h.hexdigest()[:16]


@dataclass
class CVResult:
    folds: list[dict[str, Any]]
    #: out-of-fold predictions (NaN where a row was never tested: the first block of time_series CV)
    oof: np.ndarray
    folds_hash: str

    def summary(self, target: np.ndarray) -> dict[str, Any]:
        rmse = np.array([f["rmse"] for f in self.folds])
        r2 = np.array([f["r2"] for f in self.folds])
        tested = np.isfinite(self.oof)
        pooled = regression_metrics(np.asarray(target)[tested], self.oof[tested])
        return {
            "cv_folds": len(self.folds),
            "cv_rmse_mean": float(rmse.mean()),
            "cv_rmse_std": float(rmse.std()),
            "cv_r2_mean": float(np.nanmean(r2)),
            "cv_rmse": pooled["rmse"],
            "cv_r2": pooled["r2"],
            "cv_folds_hash": self.folds_hash,
        }


def cross_validate(
    kind: str,
    train: pd.DataFrame,
    target: np.ndarray,
    features: Sequence[str],
    params: dict[str, Any],
    seed: int,
    cfg: CVConfig,
    key: Sequence[str],
    time: str,
    baseline: str | None = None,
    categorical: Sequence[str] = (),
) -> CVResult:
    """Fit and score the model on every fold of :func:`cv_folds`; per-fold metrics and pooled
    out-of-fold predictions."""
    folds = cv_folds(train, cfg, time)
    cols = model_columns(features, baseline)
    oof = np.full(len(train), np.nan)
    out = []
    dates = pd.to_datetime(train[time])

    def predicted(fold: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        fit_rows, test_rows = fold
        with single_threaded():  # OpenMP's thread count is the calling thread's own
            model = fit(kind, train.iloc[fit_rows], target[fit_rows], features, params, seed, baseline, categorical)
            return model.predict(train.iloc[test_rows][cols])

    # each fold is its own seeded fit on one native thread: fitted side by side, the folds give the same
    # predictions; torch keeps its seed and thread count process-wide, so its folds go one at a time
    threads = 1 if kind.startswith("torch") else max(1, min(os.cpu_count() or 1, len(folds)))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cv") as pool:
        preds = list(pool.map(predicted, folds))
    for k, ((fit_rows, test_rows), pred) in enumerate(zip(folds, preds, strict=True), 1):
        oof[test_rows] = pred
        m = regression_metrics(target[test_rows], pred)
        row: dict[str, Any] = {"fold": k, "fit_rows": int(len(fit_rows)), "test_rows": int(len(test_rows))}
        if cfg.kind == "time_series":
            row.update(
                {
                    "train_until": str(dates.iloc[fit_rows].max().date()),
                    "test_from": str(dates.iloc[test_rows].min().date()),
                    "test_to": str(dates.iloc[test_rows].max().date()),
                }
            )
        out.append({**row, **{k2: round(v, 4) for k2, v in m.items()}})
    return CVResult(out, oof, folds_hash(folds, train, key))
