"""Versioned model files under the lake root, each with the data versions it learned from.

``ml/<asset>/models/v0001/{model.joblib, lineage.json, ...}`` (``<asset>``: the model asset's name) — never
in git, never overwritten, on disk or on an object store alike (:class:`lakehouse.io.storage.Storage`).
``lineage.json`` maps every input table to the Delta version used; table maintenance keeps those versions
readable.

A version is claimed with a conditional write (``_claim`` created only if absent, so two trainings never
share a number) and is complete once its ``lineage.json`` exists, which is written last: readers
(:func:`versions`) see complete versions only.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib

from lakehouse.io.storage import Storage

VERSION_RE = re.compile(r"v(\d{4,})")
CLAIM = "_claim"
LINEAGE = "lineage.json"


def _numbers(storage: Storage, folder: str) -> dict[int, set[str]]:
    """Version number -> the names of the objects directly in its folder."""
    found: dict[int, set[str]] = {}
    for uri, _ in storage.list(folder):
        rel = uri[len(folder) + 1:].split("/")
        if len(rel) >= 2 and (m := VERSION_RE.fullmatch(rel[0])):
            found.setdefault(int(m.group(1)), set()).add(rel[1] if len(rel) == 2 else rel[1] + "/")
    return found


def versions(storage: Storage, folder: str) -> list[str]:
    """The complete version folders (URIs) under ``folder``, oldest first."""
    return [f"{folder}/v{n:04d}" for n, names in sorted(_numbers(storage, folder).items()) if LINEAGE in names]


def save_model(
    storage: Storage, folder: str, model: Any, lineage: dict[str, Any], extra: Callable[[Path], None] | None = None
) -> str:
    """Write ``model``, ``lineage`` (and whatever ``extra`` writes into a scratch folder) as a new version
    under ``folder``; its URI. ``lineage.json`` goes last: the version is complete or invisible."""
    with tempfile.TemporaryDirectory(prefix="lakehouse-model-") as scratch:
        local = Path(scratch)
        joblib.dump(model, local / "model.joblib")
        if extra is not None:
            extra(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        number = max(_numbers(storage, folder), default=0) + 1
        while not storage.write(f"{folder}/v{number:04d}/{CLAIM}", b"", create=True):
            number += 1  # another training claimed it
        target = f"{folder}/v{number:04d}"
        for path in files:
            storage.write(storage.join(target, *path.relative_to(local).parts), path.read_bytes())
        storage.write(f"{target}/{LINEAGE}", json.dumps(lineage, indent=1, default=str).encode())
    return target


def read_json(storage: Storage, version_dir: str, name: str = LINEAGE) -> Any:
    return json.loads(storage.read(f"{version_dir}/{name}"))


def load_model(storage: Storage, version_dir: str) -> tuple[Any, dict[str, Any]]:
    """A model this lakehouse wrote (never a file from a source)."""
    import io

    lineage = read_json(storage, version_dir)
    return joblib.load(io.BytesIO(storage.read(f"{version_dir}/model.joblib"))), lineage


def version_name(version_dir: str) -> str:
    """``v0003`` of ``.../models/v0003``."""
    return version_dir.rstrip("/").rsplit("/", 1)[-1]
