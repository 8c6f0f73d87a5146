"""R1/R4: bad source responses from the corpus, against the real weather provider and databases.

Per kind (:func:`lakehouse.sim.corpus.source_kinds`, built for the collector's configured ``retries``):
``retries`` consecutive faults of a request are survived and the data lands, byte for byte what the
provider serves (at least 3: the issue's bar); one fault more fails with a :class:`CollectorError`
naming source, month and cause, and nothing lands — a partial body is never a landed file (it is kept
under ``_rejected/``). One failing month does not stop the others of a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import requests

from lakehouse.collectors import collect
from lakehouse.collectors.base import template_values
from lakehouse.collectors.landing import CollectorError, read_manifest
from lakehouse.io.lake import Lake
from lakehouse.sim import corpus as bad
from lakehouse.sim.customers import CustomerWorld
from lakehouse.sim.world import WorldConfig
from lakehouse_tests.conftest import free_port
from lakehouse_tests.reliability.helpers import materialize, project_at

TIMEOUT_S = 0.4


@pytest.fixture
def weather(weather_server):
    weather_server.clear()
    yield weather_server
    weather_server.clear()


@pytest.fixture
def project(tmp_path, weather):
    return project_at(tmp_path / "lake", tmp_path / "world", LAKEHOUSE_WEATHER_URL=weather.url)


def http_source(project, **changes):
    """The configured weather source, with a short timeout and backoff so faults cost little time."""
    source = project.source("weather")
    collector = source.collector.model_copy(update={"timeout_s": TIMEOUT_S, "backoff_s": 0.01, **changes})
    return source.model_copy(update={"collector": collector})


def data_files(month) -> list[str]:
    folder = Path(month.uri)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(("_", "."))) if folder.exists() else []


def test_configured_retries_meet_the_bar(make_project):
    """The weather collector is configured to survive at least 3 faults per request."""
    assert make_project().source("weather").collector.retries >= 3


@pytest.mark.parametrize("kind", [k.name for k in bad.source_kinds(retries=4, timeout_s=TIMEOUT_S) if k.channel == "http"])
def test_http_fault(project, weather, kind, tmp_path):
    source = http_source(project)
    retries = source.collector.retries
    spec = {k.name: k for k in bad.source_kinds(retries=retries, timeout_s=TIMEOUT_S)}[kind]
    month = "2013-02"
    folder = Lake(project.lake_root).landing_month("weather", month)
    faults = dict(spec.faults)
    if faults.pop("port", None) == "closed":
        closed = free_port()  # a port nothing listens on
        source = http_source(project, url=source.collector.url.replace(f":{weather.port}/", f":{closed}/"))
    month = faults.pop("month", month)
    folder = Lake(project.lake_root).landing_month("weather", month)
    if faults:
        weather.inject(match=month, **faults)
    if spec.survive:
        before = weather.requests(month)
        result = collect(project, source, month, folder)
        assert weather.requests(month) - before == retries + 1  # every fault was a real request
        (entry,) = result.landed
        url = source.collector.url.format(**template_values(month, source.collector.params))
        expected = requests.get(url, timeout=10).content
        assert (Path(folder.uri) / entry.name).read_bytes() == expected  # what the provider serves, complete
        assert [e.name for e in read_manifest(folder)] == [entry.name] and entry.rows == len(json.loads(expected)["observations"])
        return
    with pytest.raises(CollectorError) as err:
        collect(project, source, month, folder)
    message = str(err.value)
    assert spec.needle in message and "'weather'" in message and month in message, message
    if spec.name == "http_connection_refused":
        assert "timed out" not in message, message  # a refused connection is not a timeout
    assert data_files(folder) == [] and read_manifest(folder) == [], "a failed download must land nothing"
    if spec.name == "http_html_200":
        (kept,) = (Path(folder.uri) / "_rejected").iterdir()  # what did arrive is kept for inspection
        assert kept.stat().st_size > 0


@pytest.mark.parametrize("kind", [k.name for k in bad.SOURCE_KINDS if k.channel == "sql"])
def test_database_fault(project, kind, tmp_path, monkeypatch):
    spec = {k.name: k for k in bad.SOURCE_KINDS}[kind]
    source = project.source("customers")
    month = "2012-03"
    url = {
        "unreachable": "postgresql+psycopg2://reader:pw@127.0.0.1:1/registry",
        "missing_file": f"sqlite:///{tmp_path / 'gone' / 'customers.sqlite'}",
        "empty_db": f"sqlite:///{tmp_path / 'empty.sqlite'}",
    }[spec.faults["url"]]
    if spec.faults["url"] == "empty_db":
        import sqlite3

        sqlite3.connect(tmp_path / "empty.sqlite").close()
    monkeypatch.setenv(source.collector.url_env, url)
    folder = Lake(project.lake_root).landing_month("customers", month)
    with pytest.raises(CollectorError) as err:
        collect(project, source, month, folder)
    message = str(err.value)
    assert spec.needle in message and "'customers'" in message and month in message, message
    assert data_files(folder) == [] and read_manifest(folder) == []
    assert not (tmp_path / "gone").exists(), "a missing SQLite file must not be created"


def test_a_failing_month_does_not_stop_the_others(tmp_path, weather):
    """A run over three months where the provider keeps failing one: the other two land, the run fails
    naming the failed month and its cause."""
    from lakehouse.factories.common import resources
    from lakehouse.factories.landing import build_landing_asset

    project = project_at(tmp_path / "lake", tmp_path / "world", LAKEHOUSE_WEATHER_URL=weather.url)
    weather.inject(fail=1000, match="start=2012-02")  # the month is the query's start (its end names the next month)
    landing = build_landing_asset(project, http_source(project))
    defs = dg.Definitions(assets=[landing], resources=resources(project))
    result = materialize(defs, [landing.key], "2012-01", "2012-03", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.event_specific_data.error)
    assert "2012-02" in text and "HTTP 500" in text and "1 of 3 month(s) failed" in text
    lake = Lake(project.lake_root)
    for month, landed in (("2012-01", 1), ("2012-02", 0), ("2012-03", 1)):
        assert len(read_manifest(lake.landing_month("weather", month))) == landed, month


def test_customers_world_is_reachable_when_nothing_fails(project, tmp_path, monkeypatch):
    """Control for the database faults: the same collector against a real registry lands a snapshot."""
    world = tmp_path / "world_sql"
    CustomerWorld(WorldConfig(meters=4, seed=5)).write(world, ["2012-03"])
    source = project.source("customers")
    monkeypatch.setenv(source.collector.url_env, f"sqlite:///{world / 'customers.sqlite'}")
    folder = Lake(project.lake_root).landing_month("customers", "2012-03")
    (entry,) = collect(project, source, "2012-03", folder).landed
    assert entry.rows >= 4
