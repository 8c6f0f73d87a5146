"""The Spark session: built once per process, local by default, Spark Connect when ``remote`` is set.

A cold local session costs 15-19 s, so every Spark step of a run shares this process's session (runs use
the in-process executor) or talks to a shared Spark Connect server (``spark.remote`` in lakehouse.yaml).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading

from pyspark.sql import SparkSession

from lakehouse.specs.models import SparkSpec

_LOCK = threading.Lock()

#: Settings that suit a 2-core machine and keep results stable; lakehouse.yaml ``spark.conf`` wins.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    # one shuffle partition per core of local[2]; adaptive execution off: it re-plans every stage of
    # every small job, and a month's plan has several windows. Measured on demo meter months in a warm
    # session (5 months each, mean of trusted cleaning): AQE on, 4 partitions 7.9 s; off, 2 partitions 6.3 s
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    # a month is read as an explicit list of files (the landing manifest, the Delta snapshot); above 32
    # paths Spark lists them with a distributed job — on one machine that costs more than a local stat
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "4096",
    # a month is hundreds of ~25 KB files: at the default 4 MB "open cost" each task takes ~31 of them
    # (45 tasks for 1440 files); 64 KB packs them into ~one task per core. Measured on one 1440-file month
    # in a warm session: 72 s -> 51 s (benchmarks/micro_open_cost.py)
    "spark.sql.files.openCostInBytes": "65536",
    # PySpark 4 records the Python call site of every DataFrame/Column function for error contexts: a stack
    # walk and ~5 py4j round trips per call, ~40k calls in a month's run of the demo graph. Off: the 13 zone
    # assets of a demo month 15.1 -> 12.9 s in a warm session (benchmarks/ANALYSIS.md); errors keep their
    # Spark message, and the lakehouse's own messages name the file, line and rule
    "spark.python.sql.dataFrameDebugging.enabled": "false",
    # generated classes are cached by their code; the default 100 entries (split across the cache's
    # segments) are too few for a month's plans: every month recompiled ~28 classes and ran them in the
    # interpreter again. 40x12 lake, 12 trusted months in a fresh session: 33.1 -> 27.7 s, 398 -> 92 compiles
    # (with the SQL lambdas of lakehouse.quality.constraints). Static: the session is built with it
    "spark.sql.codegen.cache.maxEntries": "1000",
    # the throughput collector: a month's windows copy every row into buffers, short-lived garbage that
    # G1 (the JVM's default) collects with more bookkeeping. Five 1M-reading trusted months, one warm
    # process each way, alternating, twice: 30.5-31.1 -> 25.8-25.9 s for the first month, 43.6-48.8 -> 40.3-40.5 s
    # for the next four (benchmarks/ANALYSIS.md). Launch option of the driver JVM: not sent to Spark Connect
    "spark.driver.extraJavaOptions": "-XX:+UseParallelGC -Djava.net.preferIPv6Addresses=false",
}
#: static SQL settings: a Spark Connect server is started with them, a client cannot set them
STATIC_CONF = frozenset({"spark.sql.codegen.cache.maxEntries"})


class JavaMissingError(RuntimeError):
    pass


def _check_java() -> None:
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    raise JavaMissingError(
        "PySpark needs Java 17, and no `java` is on PATH (JAVA_HOME unset). "
        "Install it, e.g. `apt-get install -y openjdk-17-jre-headless`, then retry."
    )


def get_spark(spec: SparkSpec | None = None) -> SparkSession:
    """This process's Spark session, created on first use from ``spec``."""
    spec = spec or SparkSpec()
    with _LOCK:
        active = SparkSession.getActiveSession()
        if active is not None:
            return active
        # Python workers must run this interpreter (it has pyarrow), not whatever `python3` is on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        conf = {**DEFAULT_CONF, **spec.conf}
        if spec.remote:
            builder = SparkSession.builder.remote(spec.remote)
            conf = {k: v for k, v in conf.items() if k.startswith("spark.sql.") and k not in STATIC_CONF}
        else:
            _check_java()
            builder = SparkSession.builder.master(spec.master).appName("lakehouse")
            builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
        for key, value in conf.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        if not spec.remote:
            session.sparkContext.setLogLevel("ERROR")
        return session
