"""R6: what listens, where secrets go, and what a source can make the lakehouse do.

* Servers bind 127.0.0.1 by default: the Dagster UI (Makefile), the demo's weather provider, Spark's
  driver, any Spark Connect server a script starts; no config or script binds 0.0.0.0.
* Credentials come from environment variables only. A secret planted in the customer database's URL
  variable never shows in the configs, the landing manifests, the lake's files, the run's event log,
  metadata or captured logs — for a run that succeeds and for one that fails.
* Nothing a source delivers can write outside the lake root (names with ``../``, symlinks) or run code:
  no pickle/marshal/eval on the paths that read source data, YAML only through the safe loader.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from lakehouse.collectors import collect
from lakehouse.collectors.base import Fetched
from lakehouse.collectors.landing import land, read_manifest
from lakehouse.io.lake import Lake
from lakehouse.specs.loader import SpecError
from lakehouse_tests.declarations import declaration
from lakehouse_tests.reliability.helpers import REPO, materialize, project_at

PACKAGE = REPO / "lakehouse"
SECRET = "PLANTED-s3cr3t-7f3a9"


# ------------------------------------------------------------------------------------------- binding
def test_makefile_serves_the_ui_on_localhost():
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^UI_HOST \?= 127\.0\.0\.1$", text, re.M), "the UI host must default to 127.0.0.1"
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    servers = [line for line in commands if re.search(r"dagster(-webserver)? dev|dagster-webserver|-m lakehouse\.ui", line)]
    assert servers and all("--host $(UI_HOST)" in line for line in servers), servers
    # the generic HOST/PORT many shells and platforms export do not move it
    import os

    env = {**os.environ, "HOST": "192.0.2.7", "PORT": "8080"}
    env.pop("UI_HOST", None)
    env.pop("UI_PORT", None)
    dry = subprocess.run(["make", "-n", "ui"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "-m lakehouse.ui --host 127.0.0.1 --port 3000" in dry.stdout, dry.stdout + dry.stderr


def test_nothing_binds_all_interfaces():
    """No config, script or module asks for 0.0.0.0 / :: (the sim and tests included)."""
    offenders = []
    for path in [
        REPO / "Makefile",
        REPO / "workspace.yaml",
        *REPO.glob("configs/**/*.yaml"),
        *REPO.glob("lakehouse/defs/**/*.yaml"),
        *REPO.glob("dagster_home/*.yaml"),
        *PACKAGE.rglob("*.py"),
        *REPO.glob("scripts/**/*"),
        *REPO.glob("*.sh"),
    ]:
        if path.is_file():
            text = path.read_text(errors="replace")
            if re.search(r"0\.0\.0\.0|['\"]::['\"]|\[::\]", text):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_spark_binds_localhost(spark):
    assert spark.conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert spark.conf.get("spark.ui.enabled") == "false"
    for path in [*PACKAGE.rglob("*.py"), REPO / "Makefile", *REPO.glob("scripts/**/*")]:
        if path.is_file():
            for m in re.finditer(
                r"spark\.connect\.grpc\.binding\.address[=\"' ,:]+([^\s\"']+)", path.read_text(errors="replace")
            ):
                assert m.group(1) in ("127.0.0.1", "localhost"), f"{path}: Spark Connect binds {m.group(1)}"


def test_weather_provider_binds_localhost():
    import inspect

    from lakehouse.sim.weather_server import WeatherServer

    assert inspect.signature(WeatherServer).parameters["host"].default == "127.0.0.1"
    with WeatherServer(port=0) as server:
        assert server._server.server_address[0] == "127.0.0.1"
    # the command line too: it prints where it listens
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakehouse.sim.weather_server", "--port", "0", "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    assert "http://127.0.0.1:" in line, line


# ----------------------------------------------------------------------------------------- secrets
def test_configs_hold_no_credentials(make_project):
    """Database URLs are named by an environment variable; defaults and HTTP URLs carry no user info."""
    from sqlalchemy.engine import make_url

    project = make_project()
    for source in project.sources:
        c = source.collector
        if c.type == "sql":
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", c.url_env), c.url_env
            if c.default_url:
                url = make_url(c.default_url)
                assert url.password is None and url.username is None and not url.query, c.default_url
        if c.type == "http":
            assert "@" not in c.url.split("/")[2], c.url
            assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", v) for v in c.headers_env.values())
    for path in [*REPO.glob("configs/**/*.yaml"), *REPO.glob("lakehouse/defs/**/*.yaml")]:
        text = path.read_text()
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path}: a URL with a password"
        assert not re.search(r"(?im)^\s*(password|passwd|secret|token|api_key)\s*:", text), f"{path}: a credential key"


def _everything_the_run_left(instance: dg.DagsterInstance, run_id: str, roots: list[Path]) -> dict[str, str]:
    """Texts to search: the event log (messages, metadata, errors), and every file under ``roots``."""
    from dagster._serdes import serialize_value

    texts = {"event_log": "\n".join(serialize_value(e) for e in instance.all_logs(run_id))}
    run = instance.get_run_by_id(run_id)
    texts["run"] = serialize_value(run)
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_bytes().decode("latin-1")
    return texts


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """The customer registry behind a URL whose query carries a credential (drivers take tokens and
    passwords there), set the only allowed way: the source's ``url_env`` environment variable."""
    from lakehouse.sim.customers import CustomerWorld
    from lakehouse.sim.world import WorldConfig

    world = tmp_path / "world"
    CustomerWorld(WorldConfig(meters=4, seed=5)).write(world, ["2012-03"])
    project = project_at(tmp_path / "lake", world)
    source = project.source("customers")
    url = f"sqlite:///file:{world / 'customers.sqlite'}?mode=ro&uri=true&auth_token={SECRET}"
    monkeypatch.setenv(source.collector.url_env, url)
    return project, source


def test_a_planted_secret_never_leaves_the_environment(planted, tmp_path, spark, capfd):
    from lakehouse.factories.common import resources
    from lakehouse.factories.formatted import build_formatted_asset
    from lakehouse.factories.landing import build_landing_asset

    project, source = planted
    assets = [build_landing_asset(project, source), build_formatted_asset(project, source)]
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        result = materialize(
            dg.Definitions(assets=assets, resources=resources(project)), [a.key for a in assets], "2012-03", instance=instance
        )
        assert result.success
        lake = Lake(project.lake_root)
        (entry,) = read_manifest(lake.landing_month("customers", "2012-03"))
        assert entry.rows >= 4 and entry.origin.startswith("sql:sqlite:")  # it did read through that URL
        texts = _everything_the_run_left(instance, result.run_id, [Path(project.lake_root), home, project.configs_dir])
    out, err = capfd.readouterr()
    texts["captured stdout/stderr"] = out + err
    leaks = [where for where, text in texts.items() if SECRET in text]
    assert not leaks, f"the planted secret shows in: {leaks}"
    assert len(texts) > 10  # the search did cover the run's files


def test_a_planted_secret_stays_out_of_a_failed_run(tmp_path, monkeypatch, capfd):
    """The database is down: the failure names source, month and cause, never the password."""
    from lakehouse.factories.common import resources
    from lakehouse.factories.landing import build_landing_asset

    project = project_at(tmp_path / "lake", tmp_path / "world")
    source = project.source("customers")
    monkeypatch.setenv(source.collector.url_env, f"postgresql+psycopg2://reader:{SECRET}@127.0.0.1:1/registry?sslkey={SECRET}")
    asset = build_landing_asset(project, source)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        result = materialize(
            dg.Definitions(assets=[asset], resources=resources(project)),
            [asset.key],
            "2012-03",
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "database unreachable" in str(failure.event_specific_data.error)
        texts = _everything_the_run_left(instance, result.run_id, [tmp_path / "lake", home])
    out, err = capfd.readouterr()
    texts["captured stdout/stderr"] = out + err
    assert not [where for where, text in texts.items() if SECRET in text]


# ------------------------------------------------------------------------------- source → the lake
def test_names_from_a_source_cannot_write_outside_the_lake(tmp_path, make_project, monkeypatch):
    """A collector that yields hostile names: everything lands inside the month folder."""
    import lakehouse.collectors as collectors

    project = make_project()
    source = project.source("meter_readings")
    lake = Lake(project.lake_root)
    month_dir = lake.landing_month(source.name, "2012-01")
    hostile = ["../../../../escape.csv", "/etc/cron.d/evil", "..\\..\\win.csv", "a/../../b.csv", "\x00nul.csv", "..", ""]
    data = b"device_id;timestamp;reading_kwh\nM1;2012-01-01T00:00:00Z;1.0\n"
    monkeypatch.setattr(
        collectors, "fetch", lambda *a, **k: [Fetched(n, data + n.encode("utf-8", "replace") + b"\n", "test") for n in hostile]
    )
    before = {p for p in tmp_path.rglob("*")}
    result = collect(project, source, "2012-01", month_dir)
    # each its own file: no name collapses into another (which would supersede it)
    assert len({e.name for e in result.landed}) == len(hostile)
    assert sum(e.status == "landed" for e in read_manifest(month_dir)) == len(hostile)
    created = {p for p in tmp_path.rglob("*")} - before
    files = {p for p in created if p.is_file()}
    assert files and all(p.resolve().is_relative_to(month_dir.uri) for p in files), sorted(map(str, files))
    assert all(p.resolve().is_relative_to(lake.root) for p in created), sorted(map(str, created))


def test_symlinks_cannot_redirect_writes_outside_the_lake(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim.txt"
    target.write_text("untouched")
    lake = Lake(tmp_path / "lake")
    month_dir = Path(lake.landing_uri("meter_readings", "2012-01"))
    month_dir.mkdir(parents=True)
    (month_dir / "meter_M1_2012-01.csv").symlink_to(target)  # planted where a file will land
    land(lake.landing_month("meter_readings", "2012-01"), "meter_M1_2012-01.csv", b"h\n1\n", origin="test")
    assert target.read_text() == "untouched"
    assert not (month_dir / "meter_M1_2012-01.csv").is_symlink()
    # a month folder that is a symlink out of the lake is refused before anything is written
    linked = lake.landing_uri("meter_readings", "2012-02")
    Path(linked).symlink_to(outside, target_is_directory=True)
    with pytest.raises(PermissionError, match="outside the lake root"):
        lake.inside(linked)


#: modules that read what sources deliver (bytes, rows, configs): they must never deserialize code
SOURCE_PATHS = ["collectors", "transforms", "io", "quality", "specs", "factories", "settings.py"]
FORBIDDEN_IMPORTS = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
#: builtins that run code (called by bare name), and loaders that unpickle (called as attributes)
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_METHODS = {"unsafe_load", "full_load", "read_pickle", "load_pickle"}


def _modules(paths: list[str]) -> list[Path]:
    out = []
    for p in paths:
        path = PACKAGE / p
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def test_source_paths_never_deserialize_code():
    problems = []
    for path in _modules(SOURCE_PATHS):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name.split(".")[0] for a in node.names] + (
                    [node.module.split(".")[0]] if getattr(node, "module", None) else []
                )
                problems += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in FORBIDDEN_IMPORTS]
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                bare = isinstance(node.func, ast.Name)
                if (bare and name in FORBIDDEN_BUILTINS) or (not bare and name in FORBIDDEN_METHODS):
                    problems.append(f"{path.name}:{node.lineno} calls {name}")
                if name == "load" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "yaml":
                    loader = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("Loader", "")
                    if "SafeLoader" not in loader:
                        problems.append(f"{path.name}:{node.lineno} yaml.load without SafeLoader")
                if name in ("read_parquet", "read_csv") and any(
                    k.arg == "engine" and "pickle" in ast.unparse(k.value) for k in node.keywords
                ):
                    problems.append(f"{path.name}:{node.lineno} {name} with a pickle engine")
    assert not problems


def test_every_yaml_load_in_the_package_is_safe():
    """Across the whole package (ML and sim included): only safe_load / SafeLoader."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"yaml\.(unsafe_load|full_load|load_all)\(|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)", text), (
            path
        )
        for m in re.finditer(r"yaml\.load\(([^)]*)\)", text):
            assert "SafeLoader" in m.group(1), f"{path}: {m.group(0)}"


def test_a_config_cannot_run_code(configs_copy, make_project, tmp_path):
    marker = tmp_path / "pwned"
    path = declaration(configs_copy, "sources", "meter_readings")
    path.write_text(path.read_text() + f'\n  exploit: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(SpecError):
        make_project(configs_copy)
    assert not marker.exists()
    # and YAML's own safe loader refuses the tag outright
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(f'x: !!python/object/apply:os.system ["touch {marker}"]')
    assert not marker.exists()


def test_inbox_symlinks_are_refused_and_recorded_never_followed(tmp_path, make_project):
    """A link planted in the inbox (to the run's environment, or to a file elsewhere) lands nothing; the
    refusal is recorded under the month's _rejected/ with the reason, and regular files still land."""
    project = make_project()
    source = project.source("meter_readings")
    inbox = project.resolve(source.collector.inbox)
    inbox.mkdir(parents=True)
    (inbox / "meter_M1_2012-01.csv").write_bytes(b"device_id;timestamp;reading_kwh\nM1;2012-01-01T00:00:00Z;1.0\n")
    secret = tmp_path / "secret.env"
    secret.write_text("DB_PASSWORD=hunter2\n")
    (inbox / "meter_ENV_2012-01.csv").symlink_to("/proc/self/environ")
    (inbox / "meter_S_2012-01.csv").symlink_to(secret)
    month = Lake(project.lake_root).landing_month("meter_readings", "2012-01")
    month_dir = Path(month.uri)
    result = collect(project, source, "2012-01", month)
    assert [e.name for e in result.landed] == ["meter_M1_2012-01.csv"]
    assert sorted(name for name, _ in result.refused) == ["meter_ENV_2012-01.csv", "meter_S_2012-01.csv"]
    assert all("symbolic link" in why for _, why in result.refused)
    records = {p.name: p.read_text() for p in (month_dir / "_rejected").iterdir()}
    assert len(records) == 2 and all("symbolic link" in text for text in records.values())
    stored = b"".join(p.read_bytes() for p in month_dir.rglob("*") if p.is_file())
    assert b"hunter2" not in stored and b"PATH=" not in stored


def test_an_inbox_file_over_the_cap_is_refused_and_recorded(tmp_path, make_project):
    """A file larger than ``collector.max_bytes`` lands nothing of itself: refused with the reason and
    recorded under _rejected/ like a symlink; the month's other files land."""
    project = make_project()
    source = project.source("meter_readings")
    source = source.model_copy(update={"collector": source.collector.model_copy(update={"max_bytes": 1000})})
    inbox = project.resolve(source.collector.inbox)
    inbox.mkdir(parents=True)
    header = b"device_id;timestamp;reading_kwh\n"
    (inbox / "meter_M1_2012-01.csv").write_bytes(header + b"M1;2012-01-01T00:00:00Z;1.0\n")
    (inbox / "meter_BIG_2012-01.csv").write_bytes(header + b"M2;2012-01-01T00:00:00Z;1.0\n" * 100)
    month = Lake(project.lake_root).landing_month("meter_readings", "2012-01")
    result = collect(project, source, "2012-01", month)
    assert [e.name for e in result.landed] == ["meter_M1_2012-01.csv"]
    ((name, why),) = result.refused
    assert name == "meter_BIG_2012-01.csv" and "more than collector.max_bytes 1,000" in why
    month_dir = Path(month.uri)
    (record,) = (month_dir / "_rejected").iterdir()
    assert "max_bytes" in record.read_text()
    assert not any("BIG" in p.name for p in month_dir.iterdir()) and b"M2;" not in b"".join(
        p.read_bytes() for p in month_dir.rglob("*") if p.is_file()
    )
