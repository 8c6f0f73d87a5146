"""Collectors against real local endpoints: the demo's HTTP weather provider, a SQLite registry, the library.

Each failure must name the source, the month and the cause, and land nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from lakehouse.collectors import collect
from lakehouse.collectors.landing import CollectorError, read_manifest
from lakehouse.io.lake import Lake
from lakehouse.sim.customers import CustomerWorld
from lakehouse.sim.world import WorldConfig, make_buildings, seattle_weather
from lakehouse_tests.declarations import declaration

MONTH = "2012-03"


@pytest.fixture
def weather(weather_server):
    weather_server.clear()
    yield weather_server
    weather_server.clear()


@pytest.fixture
def project(make_project, weather):
    return make_project(LAKEHOUSE_WEATHER_URL=weather.url)


def http_source(project, **changes):
    """The weather source with collector settings changed (fast retries for tests)."""
    source = project.source("weather")
    collector = source.collector.model_copy(update={"backoff_s": 0.01, "timeout_s": 2.0, **changes})
    return source.model_copy(update={"collector": collector})


def month_dir(project, source, month=MONTH):
    return Lake(project.lake_root).landing_month(source, month)


def landed_nothing(folder) -> bool:
    """No manifest and no data file (``_rejected/`` and lock files do not count)."""
    path = Path(folder.uri)
    if not path.exists():
        return True
    data_files = [p for p in path.iterdir() if not p.name.startswith(("_", "."))]
    return data_files == [] and read_manifest(folder) == []


# ------------------------------------------------------------------------------------------------ HTTP
def test_http_lands_the_real_observations_with_origin_and_checksum(project, weather):
    source = http_source(project)
    folder = month_dir(project, "weather")
    result = collect(project, source, MONTH, folder)

    (entry,) = result.landed
    data = (Path(folder.uri) / entry.name).read_bytes()
    assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.bytes == len(data)
    assert entry.origin == f"{weather.url}/stations/USW00024233/daily.json?start={MONTH}-01&end=2012-04-01"
    assert entry.name == f"weather_USW00024233_{MONTH}.json" and entry.rows == 31
    # the served rows are NOAA's observations for the month, value for value
    rows = [
        {
            "date": o["date"],
            "tmax_c": o["temperature"]["max_c"],
            "tmin_c": o["temperature"]["min_c"],
            "prcp_mm": o["precipitation_mm"],
            "wind_ms": o["wind_ms"],
            "weather": o["weather"],
        }
        for o in json.loads(data)["observations"]
    ]
    truth = seattle_weather()
    truth = truth[[d.strftime("%Y-%m") == MONTH for d in truth["date"]]]
    assert [r["date"] for r in rows] == [d.isoformat() for d in truth["date"]]
    assert [float(r["tmax_c"]) for r in rows] == pytest.approx(list(truth["temp_max"]))
    assert [r["weather"] for r in rows] == list(truth["weather"])
    # collecting again lands nothing new (exactly once)
    again = collect(project, source, MONTH, folder)
    assert again.landed == [] and again.skipped == [entry.name]


def test_http_retries_two_server_errors_then_lands(project, weather):
    weather.inject(fail=2, match=MONTH)
    folder = month_dir(project, "weather")
    result = collect(project, http_source(project, retries=3), MONTH, folder)
    assert len(result.landed) == 1 and result.landed[0].rows == 31
    assert weather.requests(MONTH) == 3  # two 500s, then the data


def test_http_exhausted_retries_name_source_month_cause_and_land_nothing(project, weather):
    weather.inject(fail=100, match=MONTH)
    folder = month_dir(project, "weather")
    with pytest.raises(CollectorError) as err:
        collect(project, http_source(project, retries=2), MONTH, folder)
    message = str(err.value)
    assert "'weather'" in message and MONTH in message and "HTTP 500" in message and "2 retries" in message
    assert weather.requests(MONTH) == 3
    assert landed_nothing(folder)


def test_http_timeout_is_retried_then_reported(project, weather):
    folder = month_dir(project, "weather")
    weather.inject(delay_s=1.5, delay_n=1, match=MONTH)
    result = collect(project, http_source(project, timeout_s=0.4, retries=2), MONTH, folder)
    assert len(result.landed) == 1
    assert weather.requests(MONTH) == 2

    weather.inject(delay_s=1.5, delay_n=100, match="2012-04")
    with pytest.raises(CollectorError, match=r"'weather' month 2012-04: .* timed out"):
        collect(project, http_source(project, timeout_s=0.3, retries=1), "2012-04", month_dir(project, "weather", "2012-04"))
    assert landed_nothing(month_dir(project, "weather", "2012-04"))


def test_http_html_page_with_200_is_rejected_and_kept_aside(project, weather):
    weather.inject(html=100, match=MONTH)
    folder = month_dir(project, "weather")
    with pytest.raises(CollectorError, match=r"'weather' month 2012-03: .*an HTML page.*'\{'"):
        collect(project, http_source(project, retries=1), MONTH, folder)
    assert read_manifest(folder) == []
    assert not (Path(folder.uri) / f"weather_USW00024233_{MONTH}.json").exists()
    (kept,) = (Path(folder.uri) / "_rejected").iterdir()
    assert kept.read_bytes().startswith(b"<!DOCTYPE html>")


def test_http_truncated_body_is_rejected_and_retried(project, weather):
    folder = month_dir(project, "weather")
    weather.inject(truncate=100, match=MONTH)
    with pytest.raises(CollectorError, match=r"'weather' month 2012-03: .*truncated body"):
        collect(project, http_source(project, retries=1), MONTH, folder)
    assert read_manifest(folder) == [] and weather.requests(MONTH) == 2

    weather.clear()
    weather.inject(truncate=1, match=MONTH)
    result = collect(project, http_source(project, retries=1), MONTH, folder)
    (entry,) = result.landed
    assert entry.rows == 31 and (Path(folder.uri) / entry.name).read_bytes().endswith(b"\n")


def test_http_not_found_is_not_retried(project, weather):
    with pytest.raises(CollectorError, match=r"'weather' month 2019-01: .*HTTP 404"):
        collect(project, http_source(project), "2019-01", month_dir(project, "weather", "2019-01"))
    assert weather.requests("2019-01") == 1


def test_http_credentials_never_reach_the_manifest_or_errors(project, weather, monkeypatch):
    monkeypatch.setenv("WEATHER_TOKEN", "Bearer tok-s3cret")
    url = weather.url.replace("http://", "http://alice:pa55word@") + "/stations/{station}/daily.json?start={start}&end={end}"
    source = http_source(project, url=url, headers_env={"Authorization": "WEATHER_TOKEN"})
    folder = month_dir(project, "weather")
    collect(project, source, MONTH, folder)
    manifest = json.dumps([e.__dict__ for e in read_manifest(folder)])
    assert "pa55word" not in manifest and "alice" not in manifest and "s3cret" not in manifest
    assert f"{weather.url}/stations/" in manifest

    weather.inject(fail=100, match="2012-05")
    with pytest.raises(CollectorError) as err:
        collect(project, source, "2012-05", month_dir(project, "weather", "2012-05"))
    assert "pa55word" not in str(err.value) and "s3cret" not in str(err.value)

    monkeypatch.delenv("WEATHER_TOKEN")
    with pytest.raises(CollectorError, match="WEATHER_TOKEN, which is not set"):
        collect(project, source, "2012-06", month_dir(project, "weather", "2012-06"))


class Recorder:
    """A local HTTP server answering with ``answer(handler) -> (status, headers, body)``; keeps each
    request's path and headers."""

    def __init__(self, answer):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        recorder = self
        self.requests: list[tuple[str, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                recorder.requests.append((self.path, dict(self.headers)))
                status, headers, body = answer(self)
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


KEY, TOKEN, PARAM = "k3y-0f-the-pr0vider", "Bearer t0ken-0f-the-pr0vider", "p4ram-0f-the-pr0vider"


def secret_env(monkeypatch):
    monkeypatch.setenv("WEATHER_KEY", KEY)
    monkeypatch.setenv("WEATHER_TOKEN", TOKEN)
    monkeypatch.setenv("WEATHER_PARAM", PARAM)
    return {
        "headers_env": {"X-Api-Key": "WEATHER_KEY", "Authorization": "WEATHER_TOKEN"},
        "params_env": {"appid": "WEATHER_PARAM"},
    }


def test_http_provider_texts_are_scrubbed_of_every_secret(project, monkeypatch):
    """A provider whose error body repeats the key, the token and the request line: the failure names the
    status, never a secret value."""

    def echo(handler):
        body = f"invalid key {handler.headers['X-Api-Key']} for {handler.headers['Authorization']} on {handler.path}"
        return 403, {"Content-Type": "text/plain"}, body.encode()

    with Recorder(echo) as server:
        source = http_source(project, url=server.url + "/d.json?start={start}", retries=0, **secret_env(monkeypatch))
        with pytest.raises(CollectorError) as err:
            collect(project, source, MONTH, month_dir(project, "weather"))
    message = str(err.value)
    assert "HTTP 403" in message and "invalid key ***" in message
    assert KEY not in message and "t0ken-0f-the-pr0vider" not in message and PARAM not in message
    ((path, headers),) = server.requests
    assert headers["X-Api-Key"] == KEY and f"appid={PARAM}" in path  # they were sent, only never shown


def test_http_rejected_bytes_kept_for_inspection_are_scrubbed(project, monkeypatch):
    def html(handler):
        return 200, {"Content-Type": "text/html"}, f"<html>maintenance; your key {handler.headers['X-Api-Key']}</html>".encode()

    with Recorder(html) as server:
        source = http_source(project, url=server.url + "/d.json?start={start}", retries=0, **secret_env(monkeypatch))
        folder = month_dir(project, "weather")
        with pytest.raises(CollectorError) as err:
            collect(project, source, MONTH, folder)
    assert KEY not in str(err.value)
    kept = [p.read_bytes() for p in (Path(folder.uri) / "_rejected").iterdir()]
    assert kept and all(b"maintenance" in k and KEY.encode() not in k for k in kept)


def test_http_secret_params_reach_the_provider_but_not_the_manifest(project, monkeypatch):
    body = json.dumps({"observations": []}).encode()
    with Recorder(lambda h: (200, {"Content-Type": "application/json"}, body)) as server:
        source = http_source(project, url=server.url + "/d.json?start={start}", **secret_env(monkeypatch))
        folder = month_dir(project, "weather")
        (entry,) = collect(project, source, MONTH, folder).landed
    ((path, _),) = server.requests
    assert path == f"/d.json?start={MONTH}-01&appid={PARAM}"
    assert entry.origin == f"{server.url}/d.json?start={MONTH}-01&appid=***"
    assert PARAM not in json.dumps([e.__dict__ for e in read_manifest(folder)])


def test_http_secret_headers_are_dropped_on_a_redirect_to_another_host(project, monkeypatch):
    """requests drops Authorization on a cross-host redirect, not custom headers: X-Api-Key followed the
    redirect to whatever host the provider named."""
    body = json.dumps({"observations": []}).encode()
    with (
        Recorder(lambda h: (200, {"Content-Type": "application/json"}, body)) as other,
        Recorder(lambda h: (302, {"Location": other.url + "/moved.json"}, b"")) as provider,
    ):
        source = http_source(project, url=provider.url + "/d.json?start={start}", **secret_env(monkeypatch))
        (entry,) = collect(project, source, MONTH, month_dir(project, "weather")).landed
    assert provider.requests[0][1]["X-Api-Key"] == KEY
    ((_, headers),) = other.requests
    assert "X-Api-Key" not in headers and "Authorization" not in headers
    assert entry.bytes == len(body)


def test_http_secret_headers_follow_a_redirect_on_the_same_host(project, monkeypatch):
    body = json.dumps({"observations": []}).encode()

    def answer(handler):
        if handler.path.startswith("/d.json"):
            return 302, {"Location": "/moved.json"}, b""
        return 200, {"Content-Type": "application/json"}, body

    with Recorder(answer) as provider:
        source = http_source(project, url=provider.url + "/d.json?start={start}", **secret_env(monkeypatch))
        collect(project, source, MONTH, month_dir(project, "weather"))
    assert [(p, h.get("X-Api-Key")) for p, h in provider.requests] == [
        (f"/d.json?start={MONTH}-01&appid={PARAM}", KEY),
        ("/moved.json", KEY),
    ]


def test_redact_masks_userinfo_and_query_tokens():
    from lakehouse.collectors.http import redact, redact_text

    assert redact("https://alice:pw@h:8080/x?api_key=abc&start=2012-01-01&X-Amz-Signature=zz&token=t&page=2") == (
        "https://h:8080/x?api_key=***&start=2012-01-01&X-Amz-Signature=***&token=***&page=2"
    )
    for name in ("key", "apikey", "access_token", "client_secret", "password", "sig", "auth"):
        assert redact(f"http://h/p?{name}=v4lue") == f"http://h/p?{name}=***"
    assert redact("http://h/p?start=2012-01-01&end=2012-02-01") == "http://h/p?start=2012-01-01&end=2012-02-01"
    assert redact_text("GET http://u:pw@h/a?session=s3 failed") == "GET http://h/a?session=*** failed"


# ------------------------------------------------------------------------------------------------- SQL
@pytest.fixture
def registry(tmp_path):
    world = tmp_path / "world_sql"
    CustomerWorld(WorldConfig(meters=6, seed=5)).write(world, [MONTH])
    return world / "customers.sqlite"


def sql_source(project, db_path):
    source = project.source("customers")
    collector = source.collector.model_copy(update={"default_url": f"sqlite:///{db_path}"})
    return source.model_copy(update={"collector": collector})


def test_sql_extracts_the_registry_snapshot_as_of_the_month(project, registry, monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_CUSTOMERS_DB_URL", raising=False)
    source = sql_source(project, registry)
    folder = month_dir(project, "customers")
    (entry,) = collect(project, source, MONTH, folder).landed
    assert entry.origin == f"sql:sqlite:///{registry}" and entry.name == f"customers_{MONTH}.csv"
    rows = list(csv.DictReader(io.StringIO((Path(folder.uri) / entry.name).read_text())))
    assert list(rows[0]) == [c.name for c in source.columns]
    buildings = make_buildings(6, 5)
    assert [(r["customer_id"], r["meter_id"], float(r["heated_area_m2"])) for r in rows] == [
        (b.customer_id, b.device_id, b.heated_area_m2) for b in buildings
    ]

    # a customer registered later is not in the earlier snapshot, and is in the later one
    with sqlite3.connect(registry) as con:
        con.execute(
            "INSERT INTO customers VALUES ('C9999','M9999','New Comer','Lake Road',5,'98101','Seattle',"
            "'apartment',70.0,2013,'heat_pump','2013-06-15')"
        )
    assert collect(project, source, "2013-05", month_dir(project, "customers", "2013-05")).landed[0].rows == 6
    assert collect(project, source, "2013-06", month_dir(project, "customers", "2013-06")).landed[0].rows == 7


def test_sql_url_from_the_environment_wins(project, registry, monkeypatch, tmp_path):
    source = sql_source(project, tmp_path / "not_there.sqlite")
    monkeypatch.setenv("LAKEHOUSE_CUSTOMERS_DB_URL", f"sqlite:///{registry}")
    (entry,) = collect(project, source, MONTH, month_dir(project, "customers")).landed
    assert entry.rows == 6


def test_sql_database_down_names_source_month_and_cause(project, monkeypatch, tmp_path):
    monkeypatch.delenv("LAKEHOUSE_CUSTOMERS_DB_URL", raising=False)
    folder = month_dir(project, "customers")
    missing = tmp_path / "gone" / "customers.sqlite"
    with pytest.raises(
        CollectorError, match=rf"'customers' month {MONTH}: database unreachable: .*{missing.name} does not exist"
    ):
        collect(project, sql_source(project, missing), MONTH, folder)
    assert not missing.exists(), "a missing SQLite file must not be created empty"

    garbage = tmp_path / "broken.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CollectorError, match=rf"'customers' month {MONTH}: .*file is not a database"):
        collect(project, sql_source(project, garbage), MONTH, folder)

    # an unreachable server URL with a password: the cause is named, the password is not
    monkeypatch.setenv("LAKEHOUSE_CUSTOMERS_DB_URL", "mysql+pymysql://reader:t0ps3cret@127.0.0.1:1/registry")
    with pytest.raises(CollectorError) as err:
        collect(project, sql_source(project, garbage), MONTH, folder)
    assert f"'customers' month {MONTH}" in str(err.value) and "t0ps3cret" not in str(err.value)
    assert landed_nothing(folder)


def test_sql_bad_query_is_a_clear_error(project, registry):
    source = sql_source(project, registry)
    bad = source.model_copy(update={"collector": source.collector.model_copy(update={"query": "SELECT nope FROM customers"})})
    with pytest.raises(CollectorError, match=rf"'customers' month {MONTH}: query failed .*no such column: nope"):
        collect(project, bad, MONTH, month_dir(project, "customers"))
    unknown = source.model_copy(
        update={"collector": source.collector.model_copy(update={"query": "SELECT * FROM customers WHERE x < :month_after"})}
    )
    with pytest.raises(CollectorError, match=r"unknown parameter\(s\) \['month_after'\]"):
        collect(project, unknown, MONTH, month_dir(project, "customers"))


# --------------------------------------------------------------------------------------------- library
def test_library_calendar_knows_weekends_and_holidays(project):
    source = project.source("calendar")
    folder = month_dir(project, "calendar", "2012-01")
    (entry,) = collect(project, source, "2012-01", folder).landed
    assert entry.origin.startswith("library:holidays==") and "subdiv=WA" in entry.origin
    rows = {r["date"]: r for r in csv.DictReader(io.StringIO((Path(folder.uri) / entry.name).read_text()))}
    assert len(rows) == 31 and list(next(iter(rows.values()))) == [c.name for c in source.columns]
    assert rows["2012-01-01"]["weekday"] == "7" and rows["2012-01-01"]["is_weekend"] == "true"
    assert rows["2012-01-02"]["is_holiday"] == "true" and "New Year" in rows["2012-01-02"]["holiday_name"]
    assert rows["2012-01-16"]["holiday_name"].startswith("Martin Luther King")
    assert rows["2012-01-17"]["is_working_day"] == "true" and rows["2012-01-17"]["holiday_name"] == ""
    # January 2012: 9 weekend days, 2 holidays on weekdays (Jan 2 observed, Jan 16)
    assert sum(r["is_working_day"] == "true" for r in rows.values()) == 20


def test_library_bad_option_is_a_clear_error(project):
    source = project.source("calendar")
    bad = source.model_copy(update={"collector": source.collector.model_copy(update={"options": {"country": "XX"}})})
    with pytest.raises(CollectorError, match=r"'calendar' month 2012-01: .*does not know country 'XX'"):
        collect(project, bad, "2012-01", month_dir(project, "calendar", "2012-01"))
    typo = source.model_copy(update={"collector": source.collector.model_copy(update={"options": {"contry": "US"}})})
    with pytest.raises(CollectorError, match=r"unknown option\(s\) \['contry'\]"):
        collect(project, typo, "2012-01", month_dir(project, "calendar", "2012-01"))


# ----------------------------------------------------------------------------------------------- specs
def test_http_url_template_fields_are_checked_at_load(configs_copy, make_project):
    path = declaration(configs_copy, "sources", "weather")
    path.write_text(path.read_text().replace("{station}/daily", "{statoin}/daily"))
    from lakehouse.specs import SpecError

    with pytest.raises(
        SpecError, match=r"weather/defs.yaml:\d+: attributes.collector: .*collector.url .*unknown field\(s\) \['statoin'\]"
    ):
        make_project(configs_copy)


# ------------------------------------------------------------------------------------- the demo world
#: a query SQLite needs minutes for (a recursive count to a billion)
SLOW_SQLITE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) AS n FROM c"


def with_query(source, **changes):
    return source.model_copy(update={"collector": source.collector.model_copy(update=changes)})


def test_sql_statement_timeout_stops_a_long_query_on_sqlite(project, registry, monkeypatch):
    """``timeout_s`` bounded only SQLite's lock wait: a long query ran on for minutes."""
    import time

    monkeypatch.delenv("LAKEHOUSE_CUSTOMERS_DB_URL", raising=False)
    folder = month_dir(project, "customers")
    started = time.monotonic()
    with pytest.raises(
        CollectorError, match=rf"'customers' month {MONTH}: the query ran longer than its timeout of 0.5s \(collector.timeout_s\)"
    ):
        collect(project, with_query(sql_source(project, registry), query=SLOW_SQLITE, timeout_s=0.5), MONTH, folder)
    assert time.monotonic() - started < 5
    assert landed_nothing(folder)


def test_sql_deadline_watchdog_stops_a_collect_whatever_the_dialect(project, registry, monkeypatch):
    """The collect's deadline is kept by a watchdog that interrupts, cancels or closes the connection: here
    the statement timeout is generous and SQLite's progress handler is taken away (as for a dialect
    without any statement timeout)."""
    import time

    from lakehouse.collectors import sql

    monkeypatch.delenv("LAKEHOUSE_CUSTOMERS_DB_URL", raising=False)
    monkeypatch.setattr(sql.Limits, "_sqlite_progress", lambda self: 0)
    folder = month_dir(project, "customers")
    started = time.monotonic()
    with pytest.raises(CollectorError, match=r"took longer than its deadline of 0.7s \(collector.deadline_s\)"):
        collect(
            project, with_query(sql_source(project, registry), query=SLOW_SQLITE, timeout_s=300, deadline_s=0.7), MONTH, folder
        )
    assert time.monotonic() - started < 5
    assert landed_nothing(folder)


def test_sql_watchdog_closes_a_connection_that_cannot_be_cancelled():
    """A driver with neither ``interrupt`` nor ``cancel``: the watchdog closes the connection."""
    import time

    from lakehouse.collectors.sql import Limits

    class Conn:
        closed = False

        def close(self):
            self.closed = True

    engine = sa.create_engine("sqlite://")
    limits = Limits(engine, "informix", timeout_s=60, deadline_s=0.2)
    conn = Conn()
    limits._watch(conn)
    time.sleep(0.5)
    assert conn.closed and limits.fired == "deadline"
    assert "collector.deadline_s" in str(limits.explain(RuntimeError("connection closed"), "where"))


@pytest.mark.parametrize(
    ("dialect", "version", "statements"),
    [
        ("postgresql", "", ["SET statement_timeout = 1500"]),
        ("mysql", "8.4.2", ["SET SESSION max_execution_time = 1500"]),
        ("mysql", "11.4.2-MariaDB", ["SET SESSION max_statement_time = 1.500"]),
        ("mssql", "", []),
    ],
)
def test_sql_session_statement_timeouts_per_dialect(dialect, version, statements):
    from lakehouse.collectors.sql import session_setup

    assert session_setup(dialect, version, 1.5) == statements


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1 (skipped where its binaries or the postgres user are missing)."""
    import pwd
    import shutil
    import subprocess
    import tempfile
    import time

    from lakehouse_tests.conftest import free_port

    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL binaries not installed")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user to run the server as")
    base = Path(tempfile.mkdtemp(prefix="lakehouse-pg-"))  # outside pytest's 0700 folders: the server's user reads it
    base.chmod(0o777)
    data = base / "data"
    as_pg = [] if os.getuid() == user.pw_uid else ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
    port = free_port()
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_pg, "pg_ctl", "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"], check=True, capture_output=True
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)


def test_sql_statement_timeout_on_postgresql(project, postgres_server, monkeypatch):
    """``statement_timeout`` is set on every session: pg_sleep(30) stops after the timeout."""
    import time

    monkeypatch.setenv("LAKEHOUSE_CUSTOMERS_DB_URL", postgres_server)
    source = with_query(project.source("customers"), query="SELECT pg_sleep(30) AS slept", timeout_s=0.5)
    folder = month_dir(project, "customers")
    started = time.monotonic()
    with pytest.raises(CollectorError, match=r"the query ran longer than its timeout of 0.5s \(collector.timeout_s\)"):
        collect(project, source, MONTH, folder)
    assert time.monotonic() - started < 5
    ok = with_query(project.source("customers"), query="SELECT 1 AS one, current_setting('statement_timeout') AS t", timeout_s=2)
    (entry,) = collect(project, ok, MONTH, folder).landed
    assert (Path(folder.uri) / entry.name).read_text().splitlines() == ["one,t", "1,2s"]


def test_registry_billing_and_meters_describe_the_same_buildings(tmp_path):
    from lakehouse.sim.world import MeterWorld

    config = WorldConfig(meters=8, seed=4)
    MeterWorld(config).write(tmp_path, ["2012-01"])
    summary = CustomerWorld(config).write(tmp_path, ["2012-01", "2012-02"])
    with sqlite3.connect(tmp_path / "customers.sqlite") as con:
        registry = dict(con.execute("SELECT customer_id, meter_id FROM customers").fetchall())
    devices = {p.name.split("_")[1] for p in (tmp_path / "inbox" / "meter_readings").iterdir()}
    assert set(registry.values()) == devices and len(registry) == 8

    truth = list(csv.DictReader((tmp_path / "truth" / "customer_matches.csv").open()))
    export = list(csv.DictReader((tmp_path / "inbox" / "billing_customers" / "billing_export_2012-02.csv").open(), delimiter=";"))
    accounts = {r["account_no"] for r in export}
    assert accounts == {t["account_no"] for t in truth if t["account_no"]}
    matched = [t for t in truth if t["kind"] == "match"]
    assert matched and all(t["customer_id"] in registry for t in matched)
    assert {t["customer_id"] for t in truth if t["kind"] == "registry_only"}.isdisjoint({t["customer_id"] for t in matched})
    assert summary["billing_only"] == sum(t["kind"] == "billing_only" for t in truth) >= 1
    # the billing system spells them its own way: ids never agree, and most names are written differently
    with sqlite3.connect(tmp_path / "customers.sqlite") as con:
        names = dict(con.execute("SELECT customer_id, name FROM customers").fetchall())
    holders = {r["account_no"]: r["holder_name"] for r in export}
    assert not accounts & set(registry)
    assert sum(holders[t["account_no"]] != names[t["customer_id"]] for t in matched) >= len(matched) // 2


def test_demo_weather_provider_sets_and_restores_the_url(monkeypatch):
    import requests

    from lakehouse.sim.demo import WEATHER_URL_ENV, weather_provider

    monkeypatch.delenv(WEATHER_URL_ENV, raising=False)
    with weather_provider(port=0) as url:
        assert os.environ[WEATHER_URL_ENV] == url
        body = requests.get(f"{url}/stations/USW00024233/daily/2015-12.csv", timeout=5).text
        assert body.splitlines()[1].startswith("USW00024233,2015-12-01,")
    assert WEATHER_URL_ENV not in os.environ
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=2)


def test_file_drop_inbox_that_does_not_exist_is_an_error_not_an_empty_month(make_project, tmp_path):
    project = make_project()
    source = project.source("meter_readings")
    folder = month_dir(project, "meter_readings")
    inbox = tmp_path / "world" / "inbox" / "meter_readings"
    with pytest.raises(
        CollectorError, match=rf"'meter_readings' month {MONTH}: the inbox {re.escape(str(inbox))} does not exist"
    ):
        collect(project, source, MONTH, folder)
    assert landed_nothing(folder)

    inbox.mkdir(parents=True)  # an inbox with nothing for the month is an empty month
    assert collect(project, source, MONTH, folder).landed == []


def test_http_body_over_max_bytes_fails_and_lands_nothing(project, weather):
    folder = month_dir(project, "weather")
    with pytest.raises(CollectorError, match=r"'weather' month 2012-03: .*more than max_bytes 100"):
        collect(project, http_source(project, max_bytes=100), MONTH, folder)
    assert landed_nothing(folder)


def test_http_deadline_bounds_a_provider_that_drips(project):
    """A provider sending one byte every 0.1 s never trips the per-read timeout; the collect's deadline
    stops it."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"{")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/stations/{{station}}/daily.json?start={{start}}"
        started = time.monotonic()
        with pytest.raises(CollectorError, match=r"longer than its deadline of 1s \(collector.deadline_s\)"):
            collect(
                project, http_source(project, url=url, timeout_s=2, retries=0, deadline_s=1), MONTH, month_dir(project, "weather")
            )
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()
