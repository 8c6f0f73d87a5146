"""Versioned model files under the lake root, each with the data versions it learned from.

``ml/<asset>/models/v0001/{model.joblib, lineage.json, ...}`` (``<asset>``: the model asset's name) — never
in git, never overwritten. ``lineage.json`` maps every input table to the Delta version used; table
maintenance keeps those versions readable.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib

VERSION_RE = re.compile(r"v(\d{4,})")


def versions(folder: Path) -> list[Path]:
    """The version folders under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := VERSION_RE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def next_version_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := VERSION_RE.fullmatch(p.name))]
    return folder / f"v{(max(taken) + 1) if taken else 1:04d}"


def save_model(
    folder: Path, model: Any, lineage: dict[str, Any], extra: Callable[[Path], None] | None = None
) -> Path:
    """Write ``model``, ``lineage`` (and whatever ``extra`` writes into the folder) to a new version folder.

    The folder appears complete or not at all (written under a temporary name, then renamed).
    """
    target = next_version_dir(folder)
    tmp = target.with_name(f".{target.name}.part")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    joblib.dump(model, tmp / "model.joblib")
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=1, default=str))
    if extra is not None:
        extra(tmp)
    tmp.rename(target)
    return target


def load_model(version_dir: Path) -> tuple[Any, dict[str, Any]]:
    """A model this lakehouse wrote (never a file from a source)."""
    lineage = json.loads((version_dir / "lineage.json").read_text())
    return joblib.load(version_dir / "model.joblib"), lineage
