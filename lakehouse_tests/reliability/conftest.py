"""The reliability suite's shared run (the session's Spark comes from the root conftest)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from lakehouse_tests.reliability.helpers import FAST_DAYS, FAST_MONTHS, VIEWS


@pytest.fixture(scope="session")
def corpus_run(spark, tmp_path_factory) -> SimpleNamespace:
    """The fast corpus (every bad-file kind, one month, three days per file) through every meter zone and
    the ``daily_consumption`` view, once per session, recording each write. The bad-input tests check its
    outcome; the crash tests use it as their uninterrupted reference and kill runs of the same input."""
    from lakehouse.sim import corpus as bad
    from lakehouse_tests.reliability import crash_run

    root = tmp_path_factory.mktemp("corpus_run")
    corpus = bad.build(FAST_MONTHS, days=FAST_DAYS, huge_line_bytes=1 << 20)
    corpus.write(root / "world")
    t0 = time.monotonic()
    result, writes = crash_run.record_writes(root / "ref", root / "world", FAST_MONTHS[0], FAST_MONTHS[-1], VIEWS)
    return SimpleNamespace(
        root=root,
        world=root / "world",
        lake_dir=root / "ref",
        corpus=corpus,
        result=result,
        writes=writes,
        months=list(FAST_MONTHS),
        seconds=time.monotonic() - t0,
    )
