"""One Spark session for the whole suite, and projects on temporary lake roots."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from lakehouse.specs import Project, load_project

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def spark():
    from lakehouse.io.spark import get_spark
    from lakehouse.specs.models import SparkSpec

    session = get_spark(SparkSpec(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"}))
    yield session
    session.stop()


@pytest.fixture
def configs_copy(tmp_path: Path) -> Path:
    """A writable copy of the repository's configs/ under a temporary project root."""
    target = tmp_path / "project" / "configs"
    shutil.copytree(REPO / "configs", target)
    return target


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    """Load a configs dir with the lake and the demo world under ``tmp_path``."""

    def load(configs: Path | None = None, **env: str) -> Project:
        configs = configs or (REPO / "configs")
        values = {"LAKEHOUSE_ROOT": str(tmp_path / "lake"), "LAKEHOUSE_DEMO_ROOT": str(tmp_path / "world"), **env}
        return load_project(configs, env=values)

    return load


@pytest.fixture(scope="session")
def weather_server():
    """The demo world's weather provider on a free port of 127.0.0.1 (faults cleared by each user)."""
    from lakehouse.sim.weather_server import WeatherServer

    with WeatherServer(host="127.0.0.1", port=0) as server:
        yield server
