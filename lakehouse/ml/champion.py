"""Choosing the model to deploy, and the gate that refuses a worse one.

The champion pointer is a small JSON file (``ml/<prefix>_champion/champion.json``): which
model version serves predictions and how it scored. A candidate replaces it only when it is not worse
than the current champion *measured on the same validation rows* (the current model is re-scored on
today's validation set when it can be; otherwise its recorded score stands), and when no severe drift
was detected in the months it is validated on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lakehouse.io.storage import Storage


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
        return GateResult(True, f"RMSE {candidate_rmse:.4f} <= {limit:.4f} (current {current_rmse:.4f})", candidate_rmse, current_rmse, limit)
    return GateResult(
        False, f"RMSE {candidate_rmse:.4f} is worse than the current champion's {current_rmse:.4f} (limit {limit:.4f})", candidate_rmse, current_rmse, limit
    )


def read_pointer(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read(uri))
    except FileNotFoundError:
        return None


def write_pointer(storage: Storage, uri: str, record: dict[str, Any]) -> None:
    """Replace the pointer atomically (a reader sees the old or the new champion, never half a file)."""
    storage.write(uri, json.dumps(record, indent=1, default=str).encode())
