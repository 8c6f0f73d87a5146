"""One real UI (``python -m lakehouse.ui``: the guarded webserver + the daemon, what ``make ui`` runs) for
the e2e and browser tests, and one monthly backfill.

The server runs on a free port on 127.0.0.1 with a temporary ``DAGSTER_HOME`` (the project's
``dagster_home/dagster.yaml``), a temporary lake and a small demo world (2 meters, 2012-01..2012-03, no
faults) whose :data:`BAD_MONTH` is broken on purpose: every reading of that month is negative, so the
trusted zone quarantines all of them and the month fails its blocking ``rejected_rate`` check. It is started in its own session (``start_new_session``: default signal handlers, its own
process group) and stopped by signalling that group, by the PID this fixture started: the launcher and
its webserver, daemon, code servers and run workers all go.

The child gets default SIGINT/SIGQUIT handlers (see :func:`default_signals`).

Sensors are on by default; the fixture records their states, then stops them before the inbox fills,
so the only runs are the backfill's (deterministic and quick).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from lakehouse_tests.conftest import REPO, free_port

MONTHS = ["2012-01", "2012-02", "2012-03"]
#: every reading of this month is negated in the world's files: trusted rejects them all (blocking check)
BAD_MONTH = "2012-02"
METERS = 2
#: what the backfill materializes: one meter source through every zone to its daily view
BACKFILL_ASSETS = [
    ["landing", "meter_readings"],
    ["formatted", "meter_readings"],
    ["trusted", "meter_readings"],
    ["exploitation", "daily_consumption"],
]
LOCATION = "lakehouse.definitions"
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
STARTUP_TIMEOUT_S = 300
BACKFILL_TIMEOUT_S = 420


def poll(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """``check()`` until it returns something truthy; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def negate_readings(inbox: Path, month: str) -> int:
    """Every reading of ``month``'s meter files made negative (``7.5`` -> ``-7.5``); returns the files changed."""
    files = sorted(inbox.glob(f"meter_*_{month}.csv"))
    for path in files:
        header, *lines = path.read_text().splitlines()
        path.write_text(
            "\n".join([header, *(f"{line.rsplit(';', 1)[0]};-{line.rsplit(';', 1)[1]}" for line in lines if line)]) + "\n"
        )
    return len(files)


def default_signals() -> None:
    """In the child before exec: SIGINT/SIGQUIT back to default. A pytest started as a background job of a
    non-interactive shell inherits them *ignored*, exec keeps that, and the launcher (which stops the
    daemon and its code servers by sending them SIGINT) then cannot stop anything."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class DagsterServer:
    url: str
    proc: subprocess.Popen
    home: Path
    lake: Path
    world: Path
    log: Path
    initial_sensor_states: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def _location_loaded(server: DagsterServer) -> bool:
    if not server.alive():
        raise AssertionError(f"the UI exited with {server.proc.returncode}:\n{server.log_tail()}")
    try:
        data = server.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename"
            " ... on PythonError { message } } } } } }",
            timeout=10,
        )
    except (requests.RequestException, AssertionError):
        return False
    entries = data["workspaceOrError"].get("locationEntries") or []
    for entry in entries:
        loaded = entry.get("locationOrLoadError") or {}
        if loaded.get("__typename") == "PythonError":
            raise AssertionError(f"code location failed to load: {loaded['message']}")
        if loaded.get("__typename") == "RepositoryLocation":
            return True
    return False


SENSORS = """query { sensorsOrError(repositorySelector: %s) { __typename
  ... on Sensors { results { id name sensorType sensorState { status ticks(limit: 1) { status } } } }
  ... on PythonError { message } } }"""
STOP_SENSOR = """mutation($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } } ... on Error { message } } }"""


def _selector_literal() -> str:
    return "{" + ", ".join(f'{k}: "{v}"' for k, v in REPOSITORY.items()) + "}"


def sensor_states(server: DagsterServer) -> dict[str, dict]:
    data = server.graphql(SENSORS % _selector_literal())["sensorsOrError"]
    assert data["__typename"] == "Sensors", data
    return {s["name"]: s for s in data["results"]}


def stop_sensors(server: DagsterServer) -> bool:
    """Stop every running sensor; whether none was running and none is in the middle of a tick. A tick in
    flight when its sensor is stopped writes the sensor's state back when it ends (running again), and
    may see files that arrive meanwhile: call it until it holds."""
    states = sensor_states(server)
    running = [s for s in states.values() if s["sensorState"]["status"] == "RUNNING"]
    for s in running:
        result = server.graphql(STOP_SENSOR, {"id": s["id"]})["stopSensor"]
        assert result.get("instigationState", {}).get("status") == "STOPPED", result
    ticking = [s for s in states.values() if s["sensorState"]["ticks"] and s["sensorState"]["ticks"][0]["status"] == "STARTED"]
    return not running and not ticking


def stop_process_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the group this fixture started, SIGKILL if it does not go within ``timeout``."""
    pgid = proc.pid  # start_new_session: the child leads its own group, id = its PID
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 15)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
    raise AssertionError(f"process group {pgid} survived SIGKILL")


@pytest.fixture(scope="session")
def dagster_server(tmp_path_factory) -> Iterator[DagsterServer]:
    root = tmp_path_factory.mktemp("e2e")
    t0 = time.monotonic()
    staging, world, home = root / "staging", root / "world", root / "dagster_home"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "lakehouse.sim",
            "build",
            "--out",
            str(staging),
            "--meters",
            str(METERS),
            "--start",
            MONTHS[0],
            "--end",
            MONTHS[-1],
            "--fault-rate",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert negate_readings(staging / "inbox" / "meter_readings", BAD_MONTH) == METERS
    # the inbox stays empty until the sensors are stopped (the staging world moves in later)
    shutil.copytree(staging, world, ignore=shutil.ignore_patterns("inbox"))
    (world / "inbox" / "meter_readings").mkdir(parents=True)
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "LAKEHOUSE_UI_TOKEN"},  # on loopback the UI needs none
        "DAGSTER_HOME": str(home),
        "LAKEHOUSE_ROOT": str(root / "lake"),
        "LAKEHOUSE_DEMO_ROOT": str(world),
        "PYTHONUNBUFFERED": "1",
        "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5",
    }
    log = root / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lakehouse.ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=default_signals,
        )
    server = DagsterServer(url=f"http://127.0.0.1:{port}", proc=proc, home=home, lake=root / "lake", world=world, log=log)
    try:
        poll("the code location to load", lambda: _location_loaded(server), STARTUP_TIMEOUT_S, every=2)
        server.timings["startup_s"] = round(time.monotonic() - t0, 1)
        states = sensor_states(server)
        server.initial_sensor_states = {name: s["sensorState"]["status"] for name, s in states.items()}
        # twice in a row, a second apart: a tick the daemon was about to begin has begun and ended
        quiet = False

        def stopped() -> bool:
            nonlocal quiet
            was, quiet = quiet, stop_sensors(server)
            return was and quiet

        poll("every sensor stopped, no tick in flight", stopped, 120, every=1)
        shutil.copytree(staging / "inbox", world / "inbox", dirs_exist_ok=True)
        yield server
    finally:
        stop_process_group(proc)


LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { id status numPartitions error { message }
    runs { runId status tags { key value } startTime endTime
      assetMaterializations { assetKey { path } partition timestamp
        metadataEntries { label __typename ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
          ... on JsonMetadataEntry { jsonString } } } } }
  ... on Error { message } } }"""
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@dataclass
class Backfill:
    id: str
    status: str
    runs: list[dict]
    seconds: float


@pytest.fixture(scope="session")
def monthly_backfill(dagster_server: DagsterServer) -> Backfill:
    """A backfill of :data:`MONTHS` for :data:`BACKFILL_ASSETS`, launched through GraphQL, awaited."""
    t0 = time.monotonic()
    params = {
        "partitionsByAssets": [
            {"assetKey": {"path": path}, "partitions": {"range": {"start": MONTHS[0], "end": MONTHS[-1]}}}
            for path in BACKFILL_ASSETS
        ],
        "title": "e2e monthly backfill",
    }
    launched = dagster_server.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished():
        data = dagster_server.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert data["__typename"] == "PartitionBackfill", data
        return data if data["status"] in DONE else None

    data = poll(f"backfill {backfill_id}", finished, BACKFILL_TIMEOUT_S, every=3)
    seconds = round(time.monotonic() - t0, 1)
    dagster_server.timings["backfill_s"] = seconds
    return Backfill(id=backfill_id, status=data["status"], runs=data["runs"], seconds=seconds)
