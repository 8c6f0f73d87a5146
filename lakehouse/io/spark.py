"""The Spark session: built once per process, local by default, on a cluster or Spark Connect when configured.

A cold local session costs many seconds (docs/benchmarks.md), so every Spark step of a run shares this process's session (runs use
the in-process executor) or talks to a shared Spark Connect server (``spark.remote`` in lakehouse.yaml).

Where it runs (``spark`` in lakehouse.yaml, see docs/operations.md):

- ``master: local[N]``: Spark in this process's JVM, tuned for one small machine (:data:`LOCAL_CONF`).
- ``master: spark://...`` (or ``yarn``, ``k8s://...``): this process is the driver of a cluster
  application; the lakehouse package is shipped to the executors (:func:`package_zip`), so workers need
  only Python with the pinned dependencies and the lake root mounted at the same path.
- ``remote: sc://host:port``: a Spark Connect client; the server is the driver (``make spark-connect``);
  the package is shipped as a session artifact.

The session is built by ``dagster_pyspark``'s builder from one flat configuration (:func:`session_conf`),
the same one the Dagster resource shows (:class:`lakehouse.factories.common.SparkResource`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession

from lakehouse.io import class_archive
from lakehouse.specs.models import SparkSpec

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

_LOCK = threading.Lock()

#: Settings of every deployment (they keep results stable and suit month-sized jobs); lakehouse.yaml
#: ``spark.conf`` wins. Under Spark Connect only the modifiable ``spark.sql.*`` ones are sent.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # the driver collects no month's rows (what it holds is bounded by configuration, see docs/benchmarks.md
    # "driver memory"), and the JVM grows to its ceiling under load: a larger heap only costs memory
    "spark.driver.memory": "2g",
    # a month is read as an explicit list of files (the landing manifest, the Delta snapshot); above 32
    # paths Spark lists them with a distributed job — on one machine that costs more than a local stat
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "4096",
    # a month is hundreds of ~25 KB files: at the default 4 MB "open cost" each task takes ~31 of them
    # (45 tasks for 1440 files); 64 KB packs them into ~one task per core (benchmarks/micro_open_cost.py)
    "spark.sql.files.openCostInBytes": "65536",
    # PySpark 4 records the Python call site of every DataFrame/Column function for error contexts: a stack
    # walk and py4j round trips per call, tens of thousands of calls in a month's run of the demo graph. Off:
    # errors keep their Spark message, and the lakehouse's own messages name the file, line and rule
    "spark.python.sql.dataFrameDebugging.enabled": "false",
    # generated classes are cached by their code; the default 100 entries (split across the cache's
    # segments) are too few for a month's plans: every month recompiled ~28 classes and ran them in the
    # interpreter again (see the SQL lambdas of lakehouse.quality.constraints). Static: the session is built with it
    "spark.sql.codegen.cache.maxEntries": "1000",
    # rows go to the Python kernels (series steps, staging) in Arrow batches of maxRecordsPerBatch rows;
    # with a byte limit too, Spark sizes the whole batch again after every row it adds (every vector of
    # every nested column): INT_MAX turns that check off, the record limit still bounds each batch
    "spark.sql.execution.arrow.maxBytesPerBatch": "2147483647",
    # a month's per-file and per-series medians collect each group's values: past 128 groups (the default)
    # Spark gives up its hash aggregation and sorts every row instead; a month has thousands of groups
    "spark.sql.objectHashAggregate.sortBased.fallbackThreshold": "100000",
    # the throughput collector: a month's windows copy every row into buffers, short-lived garbage that
    # G1 (the JVM's default) collects with more bookkeeping. Launch option of the
    # driver JVM: not sent to Spark Connect
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC -Djava.net.preferIPv6Addresses=false",
}
#: Settings of a ``local[...]`` master only: one small machine, one process.
LOCAL_CONF: dict[str, str] = {
    # one shuffle partition per core of local[2]; adaptive execution off: it re-plans every stage of
    # every small job, and a month's plan has several windows.
    # A cluster keeps Spark's defaults (adaptive execution sizes the shuffles to its executors)
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.adaptive.enabled": "false",
    # nothing outside this machine talks to the driver; on a cluster the executors must reach it, and
    # its UI (and REST API, /api/v1) is how an operator sees the application
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
}
#: static SQL settings: a Spark Connect server is started with them, a client cannot set them
STATIC_CONF = frozenset({"spark.sql.codegen.cache.maxEntries"})
#: the archive of the lakehouse package shipped to executors (see :func:`package_zip`)
PACKAGE_ZIP = "lakehouse.zip"


class JavaMissingError(RuntimeError):
    pass


class ConnectServerUnreachableError(RuntimeError):
    pass


def _check_connect(remote: str) -> None:
    """Fail in a second, naming the URL, when nothing listens at a Spark Connect URL (the client would
    retry for minutes before saying so)."""
    address = remote.removeprefix("sc://").split("/", 1)[0].split(";", 1)[0]
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "15002")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConnectServerUnreachableError(
            f"no Spark Connect server answers at {remote} ({type(exc).__name__}: {exc}). Start one with "
            '`make spark-connect` (docs/operations.md, "Running on a cluster"), or unset spark.remote / '
            "LAKEHOUSE_SPARK_REMOTE to run Spark locally."
        ) from exc


def _check_java() -> None:
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    raise JavaMissingError(
        "PySpark needs Java 17, and no `java` is on PATH (JAVA_HOME unset). "
        "Install it, e.g. `apt-get install -y openjdk-17-jre-headless`, then retry."
    )


def is_local(master: str) -> bool:
    """Whether ``master`` runs Spark inside this process (``local``, ``local[N]``, ``local[N,F]``)."""
    return master == "local" or master.startswith("local[")


def session_conf(spec: SparkSpec | None = None) -> dict[str, str]:
    """The flat builder configuration of ``spec``'s session: where it runs (``spark.remote`` or
    ``spark.master``), :data:`DEFAULT_CONF`, :data:`LOCAL_CONF` for a local master, then ``spec.conf``.

    Under Spark Connect the client may only set session SQL settings: the rest belong to the server
    (``make spark-connect`` starts it with them, see :func:`server_conf`)."""
    spec = spec or SparkSpec()
    if spec.remote:
        conf = {**DEFAULT_CONF, **spec.conf}
        conf = {k: v for k, v in conf.items() if k.startswith("spark.sql.") and k not in STATIC_CONF}
        return {"spark.remote": spec.remote, **conf}
    local = LOCAL_CONF if is_local(spec.master) else {}
    conf = {"spark.master": spec.master, "spark.app.name": "lakehouse", **DEFAULT_CONF, **local, **spec.conf}
    archive = class_archive.java_options()  # the driver JVM maps its classes when the archive is built
    if archive:
        conf["spark.driver.extraJavaOptions"] = f"{conf.get('spark.driver.extraJavaOptions', '')} {archive}".strip()
    return conf


def server_conf(master: str = "local[2]") -> dict[str, str]:
    """What a Spark Connect server with ``master`` is started with: the session a local driver of that
    master would get, static settings included (its clients send only session SQL settings)."""
    conf = session_conf(SparkSpec(master=master))
    conf.pop("spark.app.name")
    return conf


def get_spark(spec: SparkSpec | None = None) -> SparkSession:
    """This process's Spark session, created on first use from ``spec``."""
    return session_from_conf(session_conf(spec))


def session_from_conf(conf: Mapping[str, str]) -> SparkSession:
    """This process's Spark session, created on first use from a :func:`session_conf` configuration by
    ``dagster_pyspark``'s builder."""
    from dagster_pyspark.resources import spark_session_from_config

    with _LOCK:
        active = SparkSession.getActiveSession()
        if active is not None:
            return active
        remote, master = conf.get("spark.remote"), conf.get("spark.master", "local[*]")
        # Python workers must run this interpreter (it has pyarrow), not whatever `python3` is on PATH;
        # executors elsewhere run it at the same path unless `spark.pyspark.python` says otherwise
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        if remote:
            _check_connect(remote)
        else:
            _check_java()
            if is_local(master):
                os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        session = spark_session_from_config(dict(conf))
        if not remote:
            session.sparkContext.setLogLevel("ERROR")
        if remote or not is_local(master):
            ship_package(session, remote=bool(remote))
        return session


def package_zip() -> Path:
    """The lakehouse package as a zip archive that Python imports from (built once per content, in the
    temporary directory): what executors import the package's tasks from."""
    root = Path(__file__).resolve().parent.parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    target = Path(tempfile.gettempdir()) / f"lakehouse-{digest.hexdigest()[:16]}" / PACKAGE_ZIP
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, Path(root.name) / path.relative_to(root))
        partial.replace(target)
    return target


def ship_package(session: SparkSession, *, remote: bool) -> None:
    """Put :func:`package_zip` on the executors' Python path (a Spark Connect session artifact, or a
    cluster application's ``addPyFile``): workers need the pinned dependencies, not this project's path."""
    path = str(package_zip())
    if remote:
        session.addArtifacts(path, pyfile=True)
    else:
        session.sparkContext.addPyFile(path)


def arrow_frame(spark: SparkSession, table: pa.Table) -> DataFrame:
    """``table`` as a Spark DataFrame with its schema given: Spark Connect cannot infer one from zero rows."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return spark.createDataFrame(table, schema=from_arrow_schema(table.schema))


def parallelism(spark: SparkSession) -> int:
    """How many tasks the session runs at once (the cores of a local session; this machine's cores under
    Spark Connect, which has no SparkContext to ask)."""
    try:
        return max(1, spark.sparkContext.defaultParallelism)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return max(1, os.cpu_count() or 1)
