"""One Spark session for the whole suite, and projects on temporary lake roots."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lakehouse.specs import Project, load_project
from lakehouse_tests.declarations import copy_configs

REPO = Path(__file__).resolve().parent.parent
#: the tests' light meter chain, added to the repository's configs: ``exploitation/daily_consumption`` (the
#: meter readings alone, per day) and the small forecast ``meter_forecast`` over it
FIXTURE_CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"


def _session_configs() -> Path:
    """The repository's configs with the tests' fixture declarations added, composed once for the session;
    child processes (servers, crash runs, cluster worlds) find it through ``LAKEHOUSE_CONFIGS``."""
    root = Path(tempfile.mkdtemp(prefix="lakehouse-test-configs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    target = copy_configs(root / "configs")
    shutil.copytree(FIXTURE_CONFIGS / "defs", target / "defs", dirs_exist_ok=True)
    return target


TEST_CONFIGS = _session_configs()
#: the training assets of the fixture forecast ``meter_forecast`` (prefix ``daily``), upstream first
FIXTURE_MODEL_KEYS = [["ml", f"daily_{step}"] for step in ("features", "labels", "split", "gbm", "champion")]
os.environ["LAKEHOUSE_CONFIGS"] = str(TEST_CONFIGS)


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
def collected(monkeypatch) -> list[list[str]]:
    """The columns of every DataFrame brought to the driver during the test (``toArrow``, ``collect``,
    ``toPandas``): what a test of "executors write, the driver commits" asserts on."""
    from pyspark.sql.classic.dataframe import DataFrame

    seen: list[list[str]] = []

    def spying(real):
        def spy(self, *args, **kwargs):
            seen.append(list(self.columns))
            return real(self, *args, **kwargs)

        return spy

    for name in ("toArrow", "collect", "toPandas"):
        monkeypatch.setattr(DataFrame, name, spying(getattr(DataFrame, name)))
    return seen


@pytest.fixture
def configs_copy(tmp_path: Path) -> Path:
    """A writable copy of the tests' configs (the repository's and the fixtures: ``lakehouse.yaml`` and its
    declarations under ``defs/``) under a temporary project root."""
    target = tmp_path / "project" / "configs"
    shutil.copytree(TEST_CONFIGS, target)
    return target


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    """Load a configs dir with the lake and the demo world under ``tmp_path``."""

    def load(configs: Path | None = None, **env: str) -> Project:
        configs = configs or TEST_CONFIGS
        values = {"LAKEHOUSE_ROOT": str(tmp_path / "lake"), "LAKEHOUSE_DEMO_ROOT": str(tmp_path / "world"), **env}
        return load_project(configs, env=values)

    return load


@pytest.fixture(scope="session")
def weather_server():
    """The demo world's weather provider on a free port of 127.0.0.1 (faults cleared by each user)."""
    from lakehouse.sim.weather_server import WeatherServer

    with WeatherServer(host="127.0.0.1", port=0) as server:
        yield server


class S3Server:
    """A moto S3 server on 127.0.0.1 with IAM checks on: one user, its key, one bucket."""

    def __init__(self, proc, endpoint: str, key_id: str, secret: str, bucket: str) -> None:
        self.proc, self.endpoint, self.key_id, self.secret, self.bucket = proc, endpoint, key_id, secret, bucket

    def env(self, **extra: str) -> dict[str, str]:
        """The variables ``configs/lakehouse.yaml`` reads for an S3 lake."""
        return {
            "LAKEHOUSE_S3_ENDPOINT": self.endpoint,
            "LAKEHOUSE_S3_REGION": "us-east-1",
            "LAKEHOUSE_S3_ACCESS_KEY_ID": self.key_id,
            "LAKEHOUSE_S3_SECRET_ACCESS_KEY": self.secret,
            **extra,
        }


def start_moto(port: int, env_extra: dict[str, str] | None = None):
    import os
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).with_name("moto_server")
    # IAM checks on after the 3 unauthenticated calls that create the user and its key
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", **(env_extra or {})}
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not listen within 30 s")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (``moto_server``) on a free port of 127.0.0.1, for the session."""
    import json

    import boto3

    port = free_port()
    proc = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam", endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1"
    )
    iam.create_user(UserName="lake")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="lake", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="lake")["AccessKey"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="lake")
    server = S3Server(proc, endpoint, key["AccessKeyId"], key["SecretAccessKey"], "lake")
    yield server
    proc.terminate()
    try:
        proc.wait(10)
    except Exception:  # noqa: BLE001
        proc.kill()


class Cuttable:
    """A TCP proxy on 127.0.0.1 in front of a server, in its own process (:mod:`lakehouse_tests.tcp_proxy`):
    ``cut()`` kills it, so the server is unreachable (connections refused, open ones closed) without losing
    its state; ``restore()`` starts it again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.proc = None
        self.restore()

    def restore(self) -> None:
        import subprocess
        import sys
        import time

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lakehouse_tests.tcp_proxy", str(self.port), str(self.target)],
            cwd=str(REPO),
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the TCP proxy did not listen within 10 s")

    def cut(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
