"""The same small world on three Spark deployments gives the same tables: local, Spark Connect, standalone.

Each deployment runs :mod:`lakehouse_tests.cluster_world` in its own process (a process holds one kind of
Spark session), against servers started from the installed pyspark package
(:mod:`lakehouse.io.spark_servers`). Minutes of work: ``make cluster-test`` (and ``.ci/run``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.io.spark_servers import connect_server, free_port, standalone_cluster
from lakehouse_tests.cluster_world import write_world
from lakehouse_tests.conftest import REPO

pytestmark = pytest.mark.cluster

#: what the small world must produce in every zone (the comparison would pass on empty lakes otherwise)
EXPECTED = {"formatted/meter_readings", "trusted/meter_readings", "quality/quarantine", "exploitation/daily_consumption"}


def drive(root: Path, lake: str, *where: str) -> dict:
    """The world through the zones in a new process on ``where`` (``--master URL`` / ``--remote URL``)."""
    command = [
        sys.executable,
        "-m",
        "lakehouse_tests.cluster_world",
        "--world",
        str(root / "world"),
        "--lake",
        str(root / lake),
        *where,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    (root / f"{lake}.json").write_text(done.stdout)  # kept beside the lake for a look after the run
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    write_world(root / "world")
    return root


@pytest.fixture(scope="module")
def local(root: Path) -> dict:
    out = drive(root, "lake-local")
    assert out["success"]
    assert EXPECTED <= set(out["tables"]) and all(out["tables"][t]["rows"] > 0 for t in EXPECTED)
    return out


def test_spark_connect_gives_the_local_tables(root: Path, local: dict):
    with connect_server(free_port(), workdir=root / "connect") as url:
        out = drive(root, "lake-connect", "--remote", url)
    assert out["tables"] == local["tables"]
    # the server's Python workers import the package from the session's artifact
    assert out["executor_lakehouse"] and all("lakehouse.zip" in o for o in out["executor_lakehouse"])


def test_standalone_cluster_runs_every_task_on_the_worker_and_gives_the_local_tables(root: Path, local: dict):
    with standalone_cluster(free_port(), workdir=root / "standalone") as url:
        out = drive(root, "lake-standalone", "--master", url)
    assert out["tables"] == local["tables"]
    executors = out["executors"]
    workers = {k: v for k, v in executors.items() if k != "driver"}
    assert executors["driver"]["tasks"] == 0
    assert len(workers) == 1 and all(w["tasks"] > 0 and w["host"].startswith("127.0.0.1:") for w in workers.values())
    # the worker's executor imports the package shipped with the application, not this checkout
    assert out["executor_lakehouse"] and all("lakehouse.zip" in o for o in out["executor_lakehouse"])
