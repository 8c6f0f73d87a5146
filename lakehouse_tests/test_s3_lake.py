"""The lake on object storage: the same small world through every zone on a real S3-compatible server
(``moto_server`` on 127.0.0.1, IAM checks on) and on local disk gives the same tables.

Also: a malformed lake root fails at load time, a wrong credential fails naming its variable (never its
value), and a server that goes away in the middle of a run fails it clearly; the rerun converges.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from lakehouse.collectors.landing import read_manifest
from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse.io.maintenance import delta_tables, maintain_table
from lakehouse.io.storage import LakeURIError, StorageAccessError, parse_root
from lakehouse.ml.models import read_json, versions
from lakehouse.quality import quarantine as quarantine_table
from lakehouse.quality import repairs as repairs_table
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse.specs import SpecError, load_project
from lakehouse_tests.conftest import FIXTURE_MODEL_KEYS, TEST_CONFIGS, Cuttable

pytestmark = pytest.mark.s3

MONTHS = ["2012-01", "2012-02", "2012-03", "2012-04"]
RUN_COLUMNS = {"run_id", "batch_id", "written_at"}


def table_hash(lake: Lake, zone: str, table: str) -> tuple[int, str]:
    """Rows and a hash of the sorted rows (append-only quality tables: what is current)."""
    current = {("quality", "quarantine"): quarantine_table.current, ("quality", "repairs"): repairs_table.current}
    t = current[(zone, table)](lake) if (zone, table) in current else lake.read_arrow(zone, table)
    t = t.select([c for c in t.column_names if c not in RUN_COLUMNS])
    rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def landing_state(lake: Lake, project) -> dict:
    return {
        (s.name, m): sorted((e.name, e.sha256, e.bytes, e.rows, e.status) for e in read_manifest(lake.landing_month(s.name, m)))
        for s in project.sources
        for m in MONTHS
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, weather_server):
    from lakehouse.sim.customers import CustomerWorld

    root = tmp_path_factory.mktemp("s3world")
    config = WorldConfig(meters=3, fault_rate=0.01, seed=5)
    MeterWorld(config).write(root / "world", MONTHS)
    CustomerWorld(config).write(root / "world", MONTHS)
    return root


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The credential variables of the S3 lake in this process's environment (the lake reads them there)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_server.env().items():
            mp.setenv(k, v)
        yield s3_server


def project_at(world: Path, lake_root: str, weather_url: str, configs: Path | None = None):
    env = {
        **os.environ,
        "LAKEHOUSE_ROOT": lake_root,
        "LAKEHOUSE_DEMO_ROOT": str(world / "world"),
        "LAKEHOUSE_WEATHER_URL": weather_url,
    }
    return load_project(configs or TEST_CONFIGS, env=env)


def run_zones(defs, months=MONTHS, *, raise_on_error=True, zones=("landing", "formatted", "trusted", "quality", "exploitation")):
    zone_keys = [a.key for a in defs.assets if a.partitions_def is not None and a.key.path[0] in zones]
    return dg.materialize(
        defs.assets,
        selection=zone_keys,
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags={ASSET_PARTITION_RANGE_START_TAG: months[0], ASSET_PARTITION_RANGE_END_TAG: months[-1]},
        raise_on_error=raise_on_error,
    )


def run_model(defs):
    return dg.materialize(
        defs.assets,
        selection=[dg.AssetKey(k) for k in FIXTURE_MODEL_KEYS],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
    )


@pytest.fixture(scope="module")
def local_lake(spark, world, weather_server):
    project = project_at(world, str(world / "local-lake"), weather_server.url)
    defs = build_definitions(project)
    assert run_zones(defs).success and run_model(defs).success
    return project, Lake(project.lake_root)


def open_lake(project, env=None) -> Lake:
    return Lake(project.lake_root, project.lakehouse.storage, env=env if env is not None else os.environ)


def test_every_zone_on_s3_gives_the_tables_of_the_local_lake(spark, world, weather_server, s3_env, local_lake):
    local_project, local = local_lake
    project = project_at(world, f"s3://{s3_env.bucket}/lakes/main", weather_server.url)
    defs = build_definitions(project)
    assert run_zones(defs).success and run_model(defs).success
    lake = open_lake(project)
    assert lake.root == "s3://lake/lakes/main" and not lake.storage.spark_native

    # the same landed files, manifests and Delta tables
    assert landing_state(lake, project) == landing_state(local, local_project)
    tables = delta_tables(local)
    assert len(tables) >= 8 and delta_tables(lake) == tables
    for zone, table in tables:
        assert table_hash(lake, zone, table) == table_hash(local, zone, table), f"{zone}/{table}"
    assert lake.months("trusted", "meter_readings") == MONTHS

    # Spark reads the S3 tables through the lake's storage (no Hadoop S3 client): the same rows
    s3_rows = sorted(map(tuple, lake.read_spark(spark, "trusted", "meter_readings", months=MONTHS[1:]).collect()))
    local_rows = sorted(map(tuple, local.read_spark(spark, "trusted", "meter_readings", months=MONTHS[1:]).collect()))
    assert s3_rows == local_rows and len(s3_rows) > 0

    # the model: a versioned folder on S3 with its lineage, the same metrics as on disk
    (s3_model,) = versions(lake.storage, lake.uri("ml", "daily_gbm", "models"))
    (local_model,) = versions(local.storage, local.uri("ml", "daily_gbm", "models"))
    assert s3_model.startswith("s3://lake/lakes/main/ml/daily_gbm/models/v0001")
    s3_lineage, local_lineage = read_json(lake.storage, s3_model), read_json(local.storage, local_model)
    assert s3_lineage["metrics"] == local_lineage["metrics"]
    assert s3_lineage["inputs"]["exploitation/daily_consumption"]["delta_version"] == lake.version(
        "exploitation", "daily_consumption"
    )

    # maintenance on S3: compaction keeps the rows; the model's input version stays readable
    before = table_hash(lake, "formatted", "meter_readings")
    report = maintain_table(lake, "formatted", "meter_readings", retention_hours=0, keep_versions=[0])
    assert table_hash(lake, "formatted", "meter_readings") == before
    assert report["versions_kept_readable"] == [0]


def test_a_malformed_or_unsupported_lake_root_fails_at_load_time(world, weather_server):
    for bad in ("s3:/bucket/lake", "s3://", "ftp://host/lake", "s3://key:secret@bucket/lake", "s3://bucket/a/../b"):
        with pytest.raises(SpecError, match="lake_root") as err:
            project_at(world, bad, weather_server.url)
        assert "secret" not in str(err.value) or bad != "s3://key:secret@bucket/lake"
    assert parse_root("file:///srv/lake/", "/x") == "/srv/lake" and parse_root("lake", "/x") == "/x/lake"
    assert parse_root("s3://bucket/a//b/", "/x") == "s3://bucket/a/b"


def test_a_wrong_or_missing_credential_is_named_never_shown(world, weather_server, s3_env):
    project = project_at(world, f"s3://{s3_env.bucket}/lakes/creds", weather_server.url)
    with pytest.raises(LakeURIError, match="LAKEHOUSE_S3_SECRET_ACCESS_KEY") as missing:
        open_lake(project, env={k: v for k, v in s3_env.env().items() if k != "LAKEHOUSE_S3_SECRET_ACCESS_KEY"})
    assert s3_env.key_id not in str(missing.value)

    wrong_secret = "wr0ng-s3cret-value"
    lake = open_lake(project, env=s3_env.env(LAKEHOUSE_S3_SECRET_ACCESS_KEY=wrong_secret))
    for attempt in (
        lambda: lake.exists("formatted", "meter_readings"),
        lambda: read_manifest(lake.landing_month("meter_readings", MONTHS[0])),
    ):
        with pytest.raises(StorageAccessError) as err:
            attempt()
        text = str(err.value)
        assert "LAKEHOUSE_S3_ACCESS_KEY_ID" in text and "LAKEHOUSE_S3_SECRET_ACCESS_KEY" in text
        assert wrong_secret not in text and s3_env.secret not in text and s3_env.key_id not in text
    wrong_key = open_lake(project, env=s3_env.env(LAKEHOUSE_S3_ACCESS_KEY_ID="AKIAWRONGKEY0000"))
    with pytest.raises(StorageAccessError) as err:
        wrong_key.storage.write(wrong_key.uri("landing", "x", "probe"), b"x")
    assert "AKIAWRONGKEY0000" not in str(err.value) and "LAKEHOUSE_S3_ACCESS_KEY_ID" in str(err.value)


def test_a_server_gone_mid_run_fails_clearly_and_the_rerun_converges(
    spark, world, weather_server, s3_env, local_lake, configs_copy, monkeypatch
):
    local_project, local = local_lake
    proxy = Cuttable(int(s3_env.endpoint.rsplit(":", 1)[1]))
    try:
        _outage_then_rerun(proxy, world, weather_server, s3_env, local_project, local, configs_copy, monkeypatch)
    finally:
        proxy.cut()


def _outage_then_rerun(proxy, world, weather_server, s3_env, local_project, local, configs_copy, monkeypatch):
    from lakehouse.io.storage import Storage

    main = configs_copy / "lakehouse.yaml"
    # few, short retries: an unreachable store fails the step in seconds
    main.write_text(
        main.read_text().replace(
            "  credentials:\n", '  options:\n    max_retries: "1"\n    retry_timeout: "2s"\n  credentials:\n'
        )
    )
    monkeypatch.setenv("LAKEHOUSE_S3_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
    project = project_at(world, f"s3://{s3_env.bucket}/lakes/outage", weather_server.url, configs_copy)
    defs = build_definitions(project)
    real_write = Storage.write
    writes = []

    def write_then_cut(self, uri, data, *, create=False):
        writes.append(uri)
        if len(writes) == 5:  # the server goes away after a few objects of the first landing
            proxy.cut()
        return real_write(self, uri, data, create=create)

    monkeypatch.setattr(Storage, "write", write_then_cut)
    # landing and formatted: the zones that write through the lake's storage and through delta-rs
    failed = run_zones(defs, raise_on_error=False, zones=("landing", "formatted"))
    assert not failed.success
    messages = " ".join(str(e.event_specific_data.error.message) for e in failed.all_events if e.is_step_failure)
    assert "object store" in messages, messages
    monkeypatch.setattr(Storage, "write", real_write)

    proxy.restore()
    assert run_zones(defs, zones=("landing", "formatted")).success
    lake = open_lake(project)
    assert landing_state(lake, project) == landing_state(local, local_project)
    formatted = delta_tables(local, zones=("formatted",))
    assert formatted and delta_tables(lake, zones=("formatted",)) == formatted
    for zone, table in formatted:
        assert table_hash(lake, zone, table) == table_hash(local, zone, table), f"{zone}/{table}"
