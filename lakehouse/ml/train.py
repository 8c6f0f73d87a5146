"""Model training: a scikit-learn gradient-boosting pipeline and a torch MLP, both seeded and deterministic.

Both are scikit-learn ``Pipeline`` objects (one-hot for categorical columns, median imputation,
standardization, then the regressor), so training, prediction, permutation importance, persistence
(``joblib``) and reproduction treat them alike. Hyper-parameters come from ``configs/ml/``.

Cross-validation is **time-aware**: :func:`time_series_cv` splits the training *days* into 11 consecutive
blocks and runs 10 forward-chaining folds (fold *k* trains on blocks 1..k, validates on block k+1); all
meters of a day stay in the same block. Shuffled K-fold would put tomorrow next to today in training:
consumption is autocorrelated through the weather and the lag/rolling features, so it would overstate the
skill of a model that must forecast days it has never seen. Grouping by meter instead would measure a
different task (a new building without history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.model_selection import TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from lakehouse.ml.evaluate import regression_metrics
from lakehouse.ml.forecast import CATEGORICAL

MODEL_TYPES = ("sklearn_gbm", "torch_mlp")


def single_threaded():
    """Native thread pools (OpenMP, BLAS) limited to one thread for the block.

    Measured on the 2-core machine under load: a 300-iteration gradient boosting on 50k rows takes 7 s on
    one thread and over 200 s on two busy cores (OpenMP threads spin against other processes). One
    thread is also what makes results independent of the machine's core count.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _preprocess(features: Sequence[str], *, impute: bool) -> ColumnTransformer:
    cats = [c for c in features if c in CATEGORICAL]
    nums = [c for c in features if c not in CATEGORICAL]
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
                for epoch in range(self.epochs):
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


def make_model(kind: str, features: Sequence[str], params: dict[str, Any], seed: int, baseline: str | None = None):
    """An unfitted pipeline of ``kind`` (``sklearn_gbm`` or ``torch_mlp``) over ``features``, learning the
    ratio to the ``baseline`` column when one is given."""
    params = dict(params)
    if kind == "sklearn_gbm":
        model = Pipeline(
            [("prep", _preprocess(features, impute=False)), ("model", HistGradientBoostingRegressor(random_state=seed, **params))]
        )
    elif kind == "torch_mlp":
        model = Pipeline([("prep", _preprocess(features, impute=True)), ("model", TorchMLPRegressor(seed=seed, **params))])
    else:
        raise ValueError(f"unknown model type {kind!r}; known: {MODEL_TYPES}")
    return BaselineRatioRegressor(model, baseline) if baseline else model


def input_columns(features: Sequence[str], baseline: str | None = None) -> list[str]:
    """The columns a model reads: its features, plus its baseline."""
    return list(dict.fromkeys([*features, *([baseline] if baseline else [])]))


def fit(
    kind: str, train: pd.DataFrame, target: np.ndarray, features: Sequence[str], params: dict[str, Any], seed: int,
    baseline: str | None = None,
):
    cols = input_columns(features, baseline)
    missing = [c for c in cols if c not in train.columns]
    if missing:
        raise KeyError(f"model features {missing} are not in the feature table")
    model = make_model(kind, features, params, seed, baseline)
    model.fit(train[cols], target)
    return model


@dataclass
class CVResult:
    folds: list[dict[str, Any]]

    @property
    def summary(self) -> dict[str, float]:
        rmse = np.array([f["rmse"] for f in self.folds])
        return {"cv_folds": len(self.folds), "cv_rmse_mean": float(rmse.mean()), "cv_rmse_std": float(rmse.std())}


def time_series_cv(
    kind: str,
    train: pd.DataFrame,
    target: np.ndarray,
    features: Sequence[str],
    params: dict[str, Any],
    seed: int,
    folds: int = 10,
    baseline: str | None = None,
) -> CVResult:
    """Forward-chaining CV over the training days (see the module docstring for why)."""
    day_of_row = pd.to_datetime(train["date"]).to_numpy()
    days = np.unique(day_of_row)
    if len(days) < folds + 1:
        raise ValueError(f"{len(days)} training days cannot make {folds} time-ordered folds")
    out = []
    for k, (fit_days, test_days) in enumerate(TimeSeriesSplit(n_splits=folds).split(days), 1):
        fit_mask = np.isin(day_of_row, days[fit_days])
        test_mask = np.isin(day_of_row, days[test_days])
        model = fit(kind, train[fit_mask], target[fit_mask], features, params, seed, baseline)
        m = regression_metrics(target[test_mask], model.predict(train.loc[test_mask, input_columns(features, baseline)]))
        out.append(
            {
                "fold": k,
                "train_until": str(pd.Timestamp(days[fit_days[-1]]).date()),
                "test_from": str(pd.Timestamp(days[test_days[0]]).date()),
                "test_to": str(pd.Timestamp(days[test_days[-1]]).date()),
                **{k2: round(v, 4) for k2, v in m.items()},
            }
        )
    return CVResult(out)
