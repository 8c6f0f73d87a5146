"""Versioned model files under the lake root, each with the data versions it learned from.

``ml/<pipeline>/models/v0001/{model.joblib, lineage.json}`` — never in git, never overwritten.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import joblib


def next_version_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"v(\d{4,})", p.name))]
    return folder / f"v{(max(taken) + 1) if taken else 1:04d}"


def save_model(folder: Path, model: Any, lineage: dict[str, Any]) -> Path:
    """Write ``model`` and ``lineage`` to a new version folder; the folder."""
    target = next_version_dir(folder)
    tmp = target.with_name(f".{target.name}.part")
    tmp.mkdir(parents=True)
    joblib.dump(model, tmp / "model.joblib")
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=1, default=str))
    tmp.rename(target)
    return target


def load_model(version_dir: Path) -> tuple[Any, dict[str, Any]]:
    """A model this lakehouse wrote (never a file from a source)."""
    lineage = json.loads((version_dir / "lineage.json").read_text())
    return joblib.load(version_dir / "model.joblib"), lineage
