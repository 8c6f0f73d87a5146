"""A class-data-sharing archive of Spark's driver JVM: the classes a lakehouse run loads, mapped at start.

A process that runs a month starts a JVM that loads and verifies thousands of classes from Spark's jars
before its first job ends; a fresh process (a run launched by the daemon or a sensor, a test session, the
demo) pays that each time. HotSpot's application class-data sharing (AppCDS, ``-XX:SharedArchiveFile``)
maps them from an archive instead. The archive is built once per installation (``make install`` runs
``python -m lakehouse.io.class_archive``), by a JVM that runs a small workload of the kinds of jobs the
lakehouse runs and dumps the classes it loaded when it exits (``-XX:ArchiveClassesAtExit``).

The archive belongs to one Java build and one set of Spark jars: its name carries both, so another Java
or another PySpark finds no archive and starts as without one. Only the driver JVM of this machine uses
it (a local or cluster master); a Spark Connect client starts no JVM.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

#: class sharing's own log lines off (a stale archive is only not used)
_QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def _java() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def path() -> Path | None:
    """This installation's archive (under the environment's prefix, named by the Java build and the
    PySpark version), or None without a Java."""
    import pyspark

    java = _java()
    if java is None:
        return None
    stat = java.stat()
    key = hashlib.sha256(f"{pyspark.__version__}\0{java}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(sys.prefix) / "share" / "lakehouse" / f"spark-classes-{key}.jsa"


def java_options() -> str:
    """The driver JVM options that use the archive; empty when it is not built."""
    archive = path()
    return f"-XX:SharedArchiveFile={archive} {_QUIET}" if archive is not None and archive.is_file() else ""


def _same(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield from batches


def _lengths(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
    for array in arrays:
        yield pc.cast(pc.utf8_length(array), pa.float64())


def _workload() -> None:
    """The kinds of jobs a month runs: Python tasks over Arrow, casts, windows, aggregations, joins,
    nested columns, Parquet written and read, results collected as Arrow."""
    import tempfile

    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from lakehouse.io.spark import arrow_frame, get_spark

    spark = get_spark()
    table = pa.table({"k": [f"m{i % 7}" for i in range(500)], "ts": [f"2012-01-01T{i % 24:02d}:00:00Z" for i in range(500)]})

    length = F.arrow_udf(_lengths, "double")  # type: ignore[call-overload]  # the series steps' kind of UDF
    frame = arrow_frame(spark, table).mapInArrow(_same, "k string, ts string")
    frame = frame.withColumn("t", F.to_timestamp("ts")).withColumn("v", length("k"))
    window = Window.partitionBy("k").orderBy("t")
    frame = frame.withColumn("prev", F.lag("v").over(window)).withColumn("n", F.row_number().over(window))
    frame = frame.withColumn("flags", F.array(F.struct(F.lit("r").alias("rule"), F.col("n").alias("n"))))
    stats = frame.groupBy("k").agg(F.count("*").alias("rows"), F.percentile_approx("v", 0.5).alias("median"))
    joined = frame.join(F.broadcast(stats), "k").join(stats.withColumnRenamed("rows", "r2").drop("median"), "k", "left")
    with tempfile.TemporaryDirectory() as tmp:
        joined.write.partitionBy("k").parquet(f"{tmp}/t")
        spark.read.parquet(f"{tmp}/t").filter(F.col("n") > 1).select("k", F.explode("flags")).toArrow()
    joined.groupBy(F.date_trunc("day", "t")).agg(F.sum("v")).toArrow()


def build(target: Path) -> None:
    """Run :func:`_workload` in a JVM that writes the classes it loaded to ``target`` when it exits."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "lakehouse.io.class_archive", "--dump", str(partial)], check=True)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise RuntimeError(f"the JVM wrote no class archive to {partial}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _dump(partial: str) -> None:
    """In the child of :func:`build`: the workload in a JVM told to archive its classes at exit, then the
    JVM stopped and waited for (it writes the archive while it exits)."""
    from pyspark import SparkContext

    from lakehouse.io.spark import session_conf, session_from_conf

    conf = session_conf()
    options = conf.get("spark.driver.extraJavaOptions", "").replace(java_options(), "").strip()
    conf["spark.driver.extraJavaOptions"] = f"{options} -XX:ArchiveClassesAtExit={partial} {_QUIET}"
    session_from_conf(conf)
    _workload()
    context = SparkContext._active_spark_context
    assert context is not None and context._gateway is not None
    gateway = context._gateway
    proc = gateway.proc  # set by pyspark's launch_gateway
    context.stop()
    gateway.shutdown()
    proc.stdin.close()
    proc.wait(timeout=300)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--dump"]:
        _dump(args[1])
        return 0
    target = path()
    if target is None:
        print("class archive: no Java found; Spark starts without one")
        return 0
    if target.is_file():
        return 0
    print(f"class archive: building {target} (a small Spark workload, once per installation)", flush=True)
    build(target)
    print(f"class archive: {target} ({target.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
