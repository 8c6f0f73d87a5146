"""Choosing the model to deploy, and the gate that refuses a worse one.

The champion pointer is a small JSON file (``ml/<prefix>_champion/champion.json``): which
model version serves predictions and how it scored. A candidate replaces it only when it is not worse
than the current champion *compared on the same validation rows* (the current model is re-scored on
the candidate's validation set when it can be; otherwise its recorded score stands), and when no severe
drift was detected in the months it is validated on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lakehouse.io.lake import Lake
from lakehouse.io.storage import Storage
from lakehouse.ml import evaluate
from lakehouse.ml import pipeline as fp
from lakehouse.ml.models import ModelFileError, load_model, read_json, resolve, version_name, versions
from lakehouse.ml.train import single_threaded
from lakehouse.specs.ml import ForecastParams
from lakehouse.specs.tables import TableRef


@dataclass
class Candidate:
    name: str
    model_dir: str
    rmse: float
    metrics: dict[str, Any]


def pick(candidates: list[Candidate]) -> Candidate:
    """The candidate with the lowest validation RMSE (ties: the first by name)."""
    if not candidates:
        raise ValueError("no candidate models to choose from")
    return sorted(candidates, key=lambda c: (c.rmse, c.name))[0]


@dataclass
class GateResult:
    passed: bool
    reason: str
    candidate_rmse: float
    current_rmse: float | None
    limit: float | None


def not_worse(candidate_rmse: float, current_rmse: float | None, tolerance: float = 0.0) -> GateResult:
    """Pass when there is no current champion, or the candidate's RMSE ≤ current × (1 + tolerance)."""
    if current_rmse is None:
        return GateResult(True, "no current champion", candidate_rmse, None, None)
    limit = current_rmse * (1.0 + tolerance)
    if candidate_rmse <= limit:
        return GateResult(
            True, f"RMSE {candidate_rmse:.4f} <= {limit:.4f} (current {current_rmse:.4f})", candidate_rmse, current_rmse, limit
        )
    return GateResult(
        False,
        f"RMSE {candidate_rmse:.4f} is worse than the current champion's {current_rmse:.4f} (limit {limit:.4f})",
        candidate_rmse,
        current_rmse,
        limit,
    )


def read_pointer(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read(uri))
    except FileNotFoundError:
        return None


def write_pointer(storage: Storage, uri: str, record: dict[str, Any]) -> None:
    """Replace the pointer atomically (a reader sees the old or the new champion, never half a file)."""
    storage.write(uri, json.dumps(record, indent=1, default=str).encode())


@dataclass(frozen=True)
class Tables:
    """The ``ml/`` tables a forecasting pipeline's models are trained and validated on."""

    features: str
    labels: str
    split: str


@dataclass
class Choice:
    """The outcome of :func:`choose`: every candidate, the pick, the gates, and the pointer record."""

    candidates: list[Candidate]
    pick: Candidate
    gate: GateResult
    current_rmse: float | None
    drift_ok: bool
    drift: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.gate.passed and self.drift_ok


class ChoiceError(RuntimeError):
    """The candidates cannot be compared (missing, or trained on different data)."""


def candidates(lake: Lake, names: list[str], folder: Callable[[str], str], metric: str, split_table: str) -> list[Candidate]:
    """The newest version of every model, scored on ``metric``; all validated on the same split."""
    cands = []
    for name in names:
        found = versions(lake.storage, folder(name))
        if not found:
            raise ChoiceError(f"model {name} has no trained version yet")
        metrics = read_json(lake.storage, found[-1], "metrics.json")
        if metric not in metrics:
            raise ChoiceError(f"model {name} ({version_name(found[-1])}) has no {metric}: retrain it with the current config")
        cands.append(Candidate(name, str(found[-1]), float(metrics[metric]), metrics))
    split_versions = {read_json(lake.storage, c.model_dir)["inputs"][f"ml/{split_table}"]["delta_version"] for c in cands}
    if len(split_versions) > 1:
        raise ChoiceError(f"candidates were validated on different splits {sorted(split_versions)}: retrain them together")
    fold_sets = {c.metrics.get("cv_folds_hash") for c in cands}
    if metric == "cv_rmse" and len(fold_sets) > 1:
        raise ChoiceError(
            f"candidates were cross-validated on different folds {sorted(map(str, fold_sets))}: retrain them together"
        )
    return cands


def choose(lake: Lake, params: ForecastParams, folder: Callable[[str], str], pointer: str, tables: Tables) -> Choice:
    """The candidate to deploy (lowest ``params.champion_metric``) and whether it may replace the current
    champion: not worse on the same rows (or the same CV folds), and no severe drift."""
    metric = params.champion_metric
    cands = candidates(lake, list(params.models), folder, metric, tables.split)
    best = pick_ = pick(cands)
    notes: list[str] = []
    current = read_pointer(lake.storage, pointer)
    current_rmse = None
    if current is not None:
        try:
            current_dir = resolve(lake.storage, current["model_dir"])
        except ModelFileError as exc:  # e.g. a pointer into another lake: it cannot be re-scored here
            notes.append(f"current champion: {exc}")
            current_dir = None
        if current_dir == best.model_dir:
            current_rmse = best.rmse
        elif metric == "cv_rmse" and current.get("metrics", {}).get("cv_folds_hash") == best.metrics.get("cv_folds_hash"):
            current_rmse = float(current["metrics"]["cv_rmse"])
        else:
            current_rmse = rescore(lake, current, best.model_dir, tables, notes)
            if metric != "rmse":  # other folds: compare on the candidate's validation rows instead
                best = Candidate(best.name, best.model_dir, float(best.metrics["rmse"]), best.metrics)
    gate = not_worse(best.rmse, current_rmse, params.champion.tolerance)
    drift_ok, drift = drift_gate(lake, params.champion.drift_table, best.model_dir, params.champion.drift_features)
    return Choice(cands, pick_, gate, current_rmse, drift_ok, drift, notes)


def rescore(lake: Lake, current: dict, candidate_dir: str, tables: Tables, notes: list[str]) -> float | None:
    """The current champion's RMSE on the candidate's validation rows (its recorded RMSE if it cannot score them)."""
    try:
        model, lineage = load_model(lake.storage, resolve(lake.storage, current["model_dir"]))
        v = read_json(lake.storage, candidate_dir)["inputs"]
        feats, _, _ = fp.read_table(lake, tables.features, v[f"ml/{tables.features}"]["delta_version"])
        labels, _, _ = fp.read_table(lake, tables.labels, v[f"ml/{tables.labels}"]["delta_version"])
        split, _, _ = fp.read_table(lake, tables.split, v[f"ml/{tables.split}"]["delta_version"])
        params = ForecastParams.model_validate(lineage["params"])
        data = fp.dataset(feats, labels, split, params)
        cols = params.models[lineage["model"]].columns
        with single_threaded():
            return evaluate.regression_metrics(data.y_valid, model.predict(data.valid[cols]))["rmse"]
    except Exception as exc:  # noqa: BLE001 - a model that cannot be loaded or run here falls back to its pointer's value
        notes.append(f"current champion could not be re-scored ({type(exc).__name__}: {exc}); using its recorded RMSE")
        return float(current["rmse"])


def drift_gate(
    lake: Lake, drift_table: str | None, model_dir: str, features: tuple[str, ...] | None
) -> tuple[bool, dict[str, Any]]:
    """Severe drift in the champion's validation months (or the newest month) blocks the promotion."""
    if not drift_table:
        return True, {"drift": "no drift table configured"}
    zone, table = TableRef.of(drift_table)
    if lake.version(zone, table) is None:
        return False, {"drift": f"{drift_table} has not been computed"}
    df = lake.read_arrow(zone, table).to_pandas()
    months = set(read_json(lake.storage, model_dir).get("split", {}).get("validation_months", []))
    if len(df):
        months.add(max(df["month"]))
    sel = df[df["month"].isin(months)]
    if features:
        sel = sel[sel["feature"].isin(features)]
    severe = sel[sel["level"] == "severe"]
    return severe.empty, {
        "months_checked": sorted(months),
        "severe": json.loads(severe[["month", "feature", "psi"]].to_json(orient="records")),
        "max_psi": float(sel["psi"].max()) if len(sel) and sel["psi"].notna().any() else 0.0,
    }
