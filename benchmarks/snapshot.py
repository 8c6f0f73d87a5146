"""A committed version of the lakehouse code, exported once, so a run measures exactly that commit.

The working tree is shared with engineers editing other files; ``--ref`` pins the code a contender runs
(``git archive <ref> lakehouse configs`` into ``benchmarks/_work/src/<sha>/``), and ``--before-ref`` adds the
same contender at an older commit to the same run, so before/after ratios come from one run.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from benchmarks.world import WORK

REPO = Path(__file__).resolve().parent.parent


def resolve(ref: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def export(ref: str) -> tuple[str, Path]:
    """(full sha, directory holding ``lakehouse/``, ``configs/`` and the tests' fixture configs of that commit)."""
    sha = resolve(ref)
    target = WORK / "src" / sha[:12]
    if not (target / "lakehouse").is_dir():
        listed = subprocess.run(
            ["git", "ls-tree", "--name-only", sha, "lakehouse_tests/fixtures"], cwd=REPO, capture_output=True, text=True
        )
        paths = ["lakehouse", "configs", *listed.stdout.split()]
        data = subprocess.run(["git", "archive", sha, *paths], cwd=REPO, check=True, capture_output=True).stdout
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(target, filter="data")
    return sha, target
