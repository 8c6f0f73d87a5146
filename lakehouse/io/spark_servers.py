"""Spark servers started from the installed ``pyspark`` package: a Spark Connect server, a standalone cluster.

The pip package ships the jars and ``bin/spark-submit`` / ``bin/spark-class`` (not the ``sbin`` scripts of a
standalone cluster), so ``SPARK_HOME`` is the package's folder. Each server is a process group of its own,
logging to a file; :class:`SparkProcess` stops the group it started.

Run one in the foreground (Ctrl-C stops it)::

    python -m lakehouse.io.spark_servers connect --port 15002        # make spark-connect
    python -m lakehouse.io.spark_servers standalone --port 7077      # make spark-cluster: master + 1 worker

then point the lakehouse at it: ``LAKEHOUSE_SPARK_REMOTE=sc://127.0.0.1:15002`` or
``LAKEHOUSE_SPARK_MASTER=spark://127.0.0.1:7077`` (docs/operations.md, "Running on a cluster").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lakehouse.io.spark import server_conf


class SparkServerError(RuntimeError):
    pass


def spark_home() -> Path:
    """The installed pyspark package's folder (its ``bin/`` and ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


class SparkProcess:
    """One Spark JVM started in its own process group, its output in ``log``."""

    def __init__(self, name: str, command: Sequence[str], *, log: Path, env: dict[str, str], cwd: Path) -> None:
        self.name, self.log = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SparkServerError(
                    f"{self.name} exited with {self.process.returncode} before {what}; log: {self.log}\n{self.tail()}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SparkServerError(f"{self.name}: no {what} within {timeout:.0f}s; log: {self.log}\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def _env(python: str) -> dict[str, str]:
    """The servers' environment: SPARK_HOME = the pyspark package, Python workers on ``python``."""
    return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": python}


@contextmanager
def connect_server(
    port: int, *, master: str = "local[2]", workdir: Path | None = None, python: str = sys.executable
) -> Iterator[str]:
    """A Spark Connect server on 127.0.0.1:``port`` whose driver runs ``master`` with the settings a
    local lakehouse session gets (:func:`lakehouse.io.spark.server_conf`); yields its ``sc://`` URL once
    it listens (its first query takes a few seconds more). Its Python workers run ``python`` (pyarrow and pandas are needed there)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="spark-connect-"))
    conf = {
        **server_conf(master),
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
    }
    conf.pop("spark.master")
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--name",
        "lakehouse-connect",
        "--master",
        master,
    ]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    server = SparkProcess("Spark Connect server", command, log=workdir / "connect.log", env=_env(python), cwd=workdir)
    try:
        server.wait_until(lambda: _listening("127.0.0.1", port), f"listener on 127.0.0.1:{port}")
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.stop()


def _alive_workers(webui_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=5) as response:
        return int(json.load(response).get("aliveworkers", 0))


@contextmanager
def standalone_cluster(
    port: int,
    *,
    webui_port: int | None = None,
    cores: int = 1,
    memory: str = "1g",
    workdir: Path | None = None,
    python: str = sys.executable,
) -> Iterator[str]:
    """A standalone master on 127.0.0.1:``port`` and one worker (``cores``, ``memory``) registered with it;
    yields the ``spark://`` URL. The worker's executors run Python workers on ``python``."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="spark-standalone-"))
    webui_port = webui_port or free_port()
    spark_class = str(spark_home() / "bin" / "spark-class")
    url = f"spark://127.0.0.1:{port}"
    env = _env(python)
    master = SparkProcess(
        "Spark master",
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(webui_port),
        ],
        log=workdir / "master.log",
        env=env,
        cwd=workdir,
    )
    worker = None
    try:
        master.wait_until(lambda: _listening("127.0.0.1", port), f"listener on 127.0.0.1:{port}")
        worker = SparkProcess(
            "Spark worker",
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--webui-port",
                str(free_port()),
                "--work-dir",
                str(workdir / "work"),
                url,
            ],
            log=workdir / "worker.log",
            env=env,
            cwd=workdir,
        )
        master.wait_until(lambda: _alive_workers(webui_port) >= 1, "registered worker")
        yield url
    finally:
        if worker is not None:
            worker.stop()
        master.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Spark server from the pyspark package until Ctrl-C.")
    sub = parser.add_subparsers(dest="kind", required=True)
    connect = sub.add_parser("connect", help="a Spark Connect server")
    connect.add_argument("--port", type=int, default=15002)
    connect.add_argument("--master", default="local[2]", help="the server's own master (default local[2])")
    standalone = sub.add_parser("standalone", help="a standalone master and one worker")
    standalone.add_argument("--port", type=int, default=7077)
    standalone.add_argument("--webui-port", type=int, default=8080)
    standalone.add_argument("--cores", type=int, default=1)
    standalone.add_argument("--memory", default="1g")
    for p in (connect, standalone):
        p.add_argument("--workdir", type=Path, help="logs and scratch (default: a new temporary folder)")
    args = parser.parse_args(argv)
    stop = {"now": False}
    # both set explicitly: a shell starting this in the background ignores SIGINT, which Python would keep
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.update(now=True))
    if args.kind == "connect":
        server = connect_server(args.port, master=args.master, workdir=args.workdir)
        hint = "LAKEHOUSE_SPARK_REMOTE={url}"
    else:
        server = standalone_cluster(
            args.port, webui_port=args.webui_port, cores=args.cores, memory=args.memory, workdir=args.workdir
        )
        hint = "LAKEHOUSE_SPARK_MASTER={url}  (master UI http://127.0.0.1:" + str(args.webui_port) + ")"
    with server as url:
        print(f"ready: {url}   point the lakehouse at it with {hint.format(url=url)}; Ctrl-C stops it", flush=True)
        while not stop["now"]:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
