"""The Spark session's settings follow where it runs; the package archive executors import."""

from __future__ import annotations

import zipfile
import zipimport

import pyarrow as pa
import pytest
from dagster_pyspark import LazyPySparkResource

from lakehouse.factories.common import SparkResource, resources
from lakehouse.io.spark import LOCAL_CONF, STATIC_CONF, arrow_frame, is_local, package_zip, server_conf, session_conf
from lakehouse.specs.models import SparkSpec


@pytest.mark.parametrize(
    ("master", "local"),
    [
        ("local[2]", True),
        ("local", True),
        ("local[*,3]", True),
        ("spark://10.0.0.5:7077", False),
        ("yarn", False),
        ("k8s://https://api:6443", False),
    ],
)
def test_is_local(master, local):
    assert is_local(master) is local


def test_local_master_gets_the_one_machine_settings():
    conf = session_conf(SparkSpec(master="local[2]"))
    assert conf["spark.master"] == "local[2]"
    assert {k: conf[k] for k in LOCAL_CONF} == LOCAL_CONF
    assert conf["spark.sql.shuffle.partitions"] == "2" and conf["spark.driver.bindAddress"] == "127.0.0.1"


def test_cluster_master_keeps_spark_defaults_for_shuffles_binding_and_ui():
    conf = session_conf(SparkSpec(master="spark://10.0.0.5:7077"))
    assert conf["spark.master"] == "spark://10.0.0.5:7077"
    assert not set(LOCAL_CONF) & set(conf)
    # the project's own settings still win
    conf = session_conf(SparkSpec(master="yarn", conf={"spark.sql.shuffle.partitions": "64", "spark.executor.memory": "4g"}))
    assert conf["spark.sql.shuffle.partitions"] == "64" and conf["spark.executor.memory"] == "4g"


def test_connect_client_sends_only_modifiable_session_settings():
    conf = session_conf(
        SparkSpec(remote="sc://127.0.0.1:15002", conf={"spark.executor.memory": "4g", "spark.sql.ansi.enabled": "false"})
    )
    assert conf.pop("spark.remote") == "sc://127.0.0.1:15002"
    assert "spark.master" not in conf and conf["spark.sql.ansi.enabled"] == "false"
    assert all(k.startswith("spark.sql.") and k not in STATIC_CONF for k in conf)
    # the server is started with what a local driver of its master gets, static settings included
    server = server_conf("local[2]")
    assert STATIC_CONF <= set(server) and server["spark.sql.shuffle.partitions"] == "2"


def test_the_resource_is_dagster_pysparks_lazy_resource_configured_from_the_project(make_project):
    project = make_project()
    spark = resources(project)["spark"]
    assert isinstance(spark, SparkResource) and isinstance(spark, LazyPySparkResource)
    assert spark.spark_config == session_conf(project.lakehouse.spark)


def test_package_zip_holds_the_importable_package_and_is_reused():
    path = package_zip()
    assert path.name == "lakehouse.zip" and package_zip() == path
    names = set(zipfile.ZipFile(path).namelist())
    assert {
        "lakehouse/__init__.py",
        "lakehouse/io/spark.py",
        "lakehouse/transforms/fast_lane.py",
        "lakehouse/io/formatting.py",
    } <= names
    assert not any("__pycache__" in n for n in names)
    assert zipimport.zipimporter(str(path)).find_spec("lakehouse") is not None


def test_arrow_frame_keeps_the_schema_of_zero_rows(spark):
    empty = pa.schema([("device_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("kwh", pa.float64())]).empty_table()
    df = arrow_frame(spark, empty)
    assert df.columns == ["device_id", "ts", "kwh"]
    assert [f.dataType.typeName() for f in df.schema.fields] == ["string", "timestamp", "double"]
    assert df.count() == 0


def test_an_unreachable_connect_server_fails_fast_naming_the_url():
    from lakehouse.io.spark import ConnectServerUnreachableError, _check_connect
    from lakehouse.io.spark_servers import free_port

    url = f"sc://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectServerUnreachableError, match=url.replace(".", r"\.")) as raised:
        _check_connect(url)
    assert "make spark-connect" in str(raised.value)


def test_a_listening_connect_server_passes_the_check_with_or_without_parameters():
    import socket

    from lakehouse.io.spark import _check_connect

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        _check_connect(f"sc://127.0.0.1:{port}")
        _check_connect(f"sc://127.0.0.1:{port}/;user_id=lakehouse")


def test_the_driver_maps_the_class_archive_once_it_is_built(tmp_path, monkeypatch):
    from lakehouse.io import class_archive

    archive = tmp_path / "spark-classes-x.jsa"
    monkeypatch.setattr(class_archive, "path", lambda: archive)
    spec = SparkSpec(master="local[2]", conf={"spark.driver.extraJavaOptions": "-Xss4m"})
    assert "SharedArchiveFile" not in session_conf(spec)["spark.driver.extraJavaOptions"]  # not built: plain start
    archive.write_bytes(b"archive")
    options = session_conf(spec)["spark.driver.extraJavaOptions"]
    assert options.startswith("-Xss4m ") and f"-XX:SharedArchiveFile={archive}" in options  # added to the project's
    cluster = session_conf(SparkSpec(master="spark://10.0.0.5:7077"))["spark.driver.extraJavaOptions"]
    assert f"-XX:SharedArchiveFile={archive}" in cluster  # the driver runs here on a cluster too
    # a Spark Connect client starts no JVM
    assert not any("SharedArchiveFile" in v for v in session_conf(SparkSpec(remote="sc://127.0.0.1:15002")).values())


def test_the_class_archive_is_named_by_the_java_build_and_pyspark(tmp_path, monkeypatch):
    from lakehouse.io import class_archive

    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_bytes(b"one build")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    first = class_archive.path()
    assert first is not None and first.name.startswith("spark-classes-") and first.suffix == ".jsa"
    java.write_bytes(b"another build of java")
    assert class_archive.path() != first  # another Java finds no archive, so it starts as without one
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "none"))
    monkeypatch.setattr(class_archive.shutil, "which", lambda _: None)
    assert class_archive.path() is None and class_archive.java_options() == ""


def test_python_kernels_get_batches_bounded_by_rows_not_resized_after_every_row(spark):
    """Spark checks a batch's byte size after every row it adds unless the byte limit is INT_MAX; the record
    limit still bounds every batch the series and staging kernels receive."""
    assert int(spark.conf.get("spark.sql.execution.arrow.maxBytesPerBatch")) == 2**31 - 1
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")
    try:
        sizes = (
            spark.range(50)
            .repartition(1)
            .mapInArrow(lambda batches: (pa.RecordBatch.from_pydict({"n": [b.num_rows]}) for b in batches), "n long")
        )
        assert sorted(r["n"] for r in sizes.collect()) == [1, *[7] * 7]
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_medians_of_thousands_of_groups_keep_the_hash_aggregation_threshold_and_are_exact(spark):
    """The unit step's medians collect each group's values (an object aggregation): with Spark's default
    threshold the tasks fall back to sorting every row past 128 groups; the medians are the same either way."""
    from pyspark.sql import functions as F

    from lakehouse.quality.units import group_medians

    assert int(spark.conf.get("spark.sql.objectHashAggregate.sortBased.fallbackThreshold")) >= 10_000
    rows = spark.range(6000).select((F.col("id") % 3000).alias("g"), F.col("id").cast("double").alias("v")).repartition(1)
    medians = group_medians(rows, ["g"], "v")
    assert len(medians) == 3000 and medians[(7,)] == (1507.0, 2)
