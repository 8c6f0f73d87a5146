"""What an ML artifact was made from: Delta versions of its inputs and the code version.

Every feature set, split and model records a ``lineage`` dict::

    {"inputs": {"exploitation/consumption_daily": {"delta_version": 57, "months": ["2012-01", ...]}},
     "code_version": {"lakehouse": "0.1.0", "git_commit": "6a59880...", "git_dirty": false},
     "params": {...}}

:mod:`lakehouse.ml.reproduce` time-travels to those versions and recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lakehouse import __version__

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def _git() -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lakehouse", "configs"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return commit or None, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def code_version() -> dict[str, Any]:
    """``lakehouse.__version__`` plus the git commit (and whether lakehouse/configs differ from it)."""
    commit, dirty = _git()
    return {"lakehouse": __version__, "git_commit": commit, "git_dirty": dirty}


def frame_hash(df: pd.DataFrame) -> str:
    """A content hash of a frame (row order and dtypes matter): proves two computations gave the same rows."""
    h = hashlib.sha256()
    h.update(json.dumps([str(c) for c in df.columns]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def normalized_hash(df: pd.DataFrame, key: Sequence[str]) -> str:
    """A content hash independent of row order, column order and a Delta round trip (dates, strings);
    rows are ordered by ``key`` (the pipeline's declared key columns)."""
    import pyarrow as pa

    cols = sorted(df.columns)
    out = df[cols].sort_values([c for c in key if c in cols] or cols).reset_index(drop=True)
    out = pa.Table.from_pandas(out, preserve_index=False).to_pandas()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].astype(str)
    return frame_hash(out)
