"""R2 crash safety and R3 idempotency: SIGKILL the materializing process during its writes.

A reference run (uninterrupted, in this process) fixes the content every table must converge to. Then a
separate process (:mod:`lakehouse_tests.reliability.crash_run`) materializes the same months on another
lake and is killed with SIGKILL — at a chosen write (before / during / after a landed file, a manifest or
a Delta commit) or at a random moment. After every kill:

* every Delta table opens and reads, and each of its slices (a month; a dataset/stage/month of the
  quality logs) is either absent or exactly the reference's slice — a previous or a new version, never a
  half-written one;
* every manifest entry names a file that is there with the recorded sha256.

The kills accumulate on one lake; a final rerun must reach the reference's content hash. Rerunning the
reference (R3) changes no content, adds no duplicates and leaves the manifests as they were.

Fast: the session's corpus run (every bad-file kind, see conftest) is the reference; 2 kills (one in
landing, one in a Delta commit of the formatted zone) + one delta-rs writer killed 3 times. Slow
(``make reliability``): a three-month meter world, 20 kills, half at injected writes, half at random
moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lakehouse.collectors.landing import read_manifest, sha256_file
from lakehouse.io.lake import Lake
from lakehouse.sim import corpus as bad
from lakehouse.sim.world import MeterWorld, WorldConfig
from lakehouse_tests.reliability import crash_run
from lakehouse_tests.reliability.helpers import (
    REPO,
    RUN_COLUMNS,
    SOURCE,
    VIEWS,
    duplicates,
    landing_state,
    quarantine_rows,
    repair_rows,
    rows_hash,
)

#: random but reproducible: RELIABILITY_SEED=<n> replays a failing sequence of kills
SEED = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 100_000))
#: quality logs read through their current view, keyed by these columns besides the month
LOG_SLICES = {("quality", "quarantine"): ("dataset", "stage"), ("quality", "repairs"): ("dataset",)}
#: tables whose rows describe runs (timings, batches): checked for readability only
RUN_TABLES = {("quality", "metrics")}


def build_world(world: Path, months: list[str], meters: int) -> None:
    MeterWorld(WorldConfig(meters=meters, fault_rate=0.01, seed=5)).write(world, months)
    # a few bad deliveries, so parse quarantine and file-level entries are part of what must survive
    kinds = ["gzip_file", "truncated_last_line", "wrong_delimiter", "exact_duplicates"]
    corpus = bad.build(months[:1], days=[1, 2], kinds=kinds)
    for f in corpus.files:  # the corpus numbers its devices from 1: keep them apart from the world's
        f.name = f.name.replace("meter_M", "meter_K")
    corpus.write(world)


def delta_tables(lake: Lake) -> list[tuple[str, str]]:
    out = []
    for zone in lake.storage.folders(lake.root):
        for table in lake.storage.folders(lake.storage.uri(zone)):
            if DeltaTable.is_deltatable(lake.storage.uri(zone, table)):
                out.append((zone, table))
    return out


def slices(lake: Lake) -> dict[str, str]:
    """A content hash per slice of every table (reading each one: an unreadable table raises)."""
    out: dict[str, str] = {}
    for zone, table in delta_tables(lake):
        dt = lake.delta(zone, table)
        full = dt.to_pyarrow_table()  # readable at its latest version, every file present
        if (zone, table) in RUN_TABLES:
            continue
        if (zone, table) in LOG_SLICES:
            rows = quarantine_rows(lake, dataset=None) if table == "quarantine" else repair_rows(lake, dataset=None)
            keys = (*LOG_SLICES[(zone, table)], "month")
        else:
            rows = full.select([c for c in full.column_names if c not in RUN_COLUMNS]).to_pylist()
            keys = ("month",) if "month" in full.column_names else ()
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            groups[tuple(r[k] for k in keys)].append({k: v for k, v in r.items() if k not in RUN_COLUMNS})
        for k, rs in groups.items():
            out[f"{zone}/{table}/{'/'.join(map(str, k))}"] = rows_hash(rs)
    for month, entries in landing_state(lake).items():
        out[f"landing/{SOURCE}/{month}"] = rows_hash(entries)
    return out


def check_after_kill(lake: Lake, reference: dict) -> list[str]:
    """Every slice present equals the reference's; every manifest entry's file is there, intact."""
    problems = []
    try:
        now = slices(lake)
    except Exception as exc:  # noqa: BLE001 - an unreadable table is the failure we look for
        return [f"a table does not read: {type(exc).__name__}: {exc}"]
    for name, digest in now.items():
        if name.startswith("landing/"):
            continue  # a manifest may hold fewer files than the reference (checked entry by entry below)
        if name not in reference["content"]:
            problems.append(f"{name}: a slice the reference does not have")
        elif digest != reference["content"][name]:
            problems.append(f"{name}: content differs from the reference (half-written?)")
    ref_entries = {m: {json.dumps(e, sort_keys=True) for e in es} for m, es in reference["landing"].items()}
    for month, entries in landing_state(lake).items():
        for e in entries:
            if json.dumps(e, sort_keys=True) not in ref_entries.get(month, set()):
                problems.append(f"landing {month}: manifest entry {e['name']} differs from the reference")
        for entry in read_manifest(lake.landing_month(SOURCE, month)):
            path = Path(lake.uri("landing", SOURCE, month, entry.name))
            if entry.status == "landed" and (not path.is_file() or sha256_file(path) != entry.sha256):
                problems.append(f"landing {month}: {entry.name} listed but missing or changed")
    return problems


def kill_run(
    lake: Path,
    world: Path,
    months: list[str],
    *,
    kill_at: int | None = None,
    kind: str = "commit",
    phase: str = "during",
    after_s: float | None = None,
    seed: int = 0,
    timeout: float = 1800,
) -> dict:
    """Run crash_run in a child process; kill it (itself at its ``kill_at``-th write of ``kind``, or from
    here ``after_s`` seconds after its first write). Returns what happened."""
    args = [
        sys.executable,
        "-m",
        "lakehouse_tests.reliability.crash_run",
        "--lake",
        str(lake),
        "--world",
        str(world),
        "--start",
        months[0],
        "--end",
        months[-1],
        "--views",
        ",".join(VIEWS),
        "--seed",
        str(seed),
    ]
    if kill_at is not None:
        args += ["--kill-at", str(kill_at), "--kind", kind, "--phase", phase]
    log = lake.parent / f"child-{time.time_ns()}.log"
    t0 = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        writes, last, timer_started = 0, "", False
        for line in proc.stdout:
            if line.startswith("WRITE "):
                writes += 1
                last = line.strip()
                if after_s is not None and not timer_started:
                    timer_started = True
                    _kill_later(proc, after_s)
            elif line.startswith(("KILL", "RESULT")):
                last = line.strip()
        proc.wait(timeout=timeout)
    _kill_group(proc.pid)  # the child's Spark JVM, if the kill left it behind
    return {
        "returncode": proc.returncode,
        "writes": writes,
        "last": last,
        "seconds": round(time.monotonic() - t0, 1),
        "killed": proc.returncode == -signal.SIGKILL,
        "log": str(log),
    }


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_later(proc: subprocess.Popen, delay: float) -> None:
    import threading

    def fire() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    threading.Timer(delay, fire).start()


def lake_content(lake: Lake) -> dict[str, str]:
    return dict(sorted(slices(lake).items()))


def make_reference(root: Path, months: list[str], meters: int) -> dict:
    """The uninterrupted run: its content per slice, its writes in order, its duration."""
    build_world(root / "world", months, meters=meters)
    t0 = time.monotonic()
    result, writes = crash_run.record_writes(root / "ref", root / "world", months[0], months[-1], VIEWS)
    return describe(root, months, result, writes, time.monotonic() - t0)


def describe(root: Path, months: list[str], result, writes: list, seconds: float) -> dict:
    assert result.success
    lake = Lake(root / "ref")
    return {
        "root": root,
        "months": months,
        "lake": lake,
        "writes": writes,
        "content": lake_content(lake),
        "landing": landing_state(lake),
        "seconds": seconds,
    }


@pytest.fixture(scope="module")
def reference(corpus_run):
    """The session's corpus run (every bad-file kind, see conftest) is the fast reference."""
    return describe(corpus_run.root, corpus_run.months, corpus_run.result, corpus_run.writes, corpus_run.seconds)


@pytest.fixture(scope="module")
def reference_long(spark, tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("crash_long"), ["2012-01", "2012-02", "2012-03"], meters=4)


def test_rerun_changes_nothing(reference):
    """R3: every zone, every month materialized again: same content, no duplicates, manifests as they were."""
    lake, months = reference["lake"], reference["months"]
    manifests = {m: read_manifest(lake.landing_month(SOURCE, m)) for m in months}
    versions = {t: lake.version(*t) for t in delta_tables(lake)}
    result, writes = crash_run.record_writes(Path(lake.root), reference["root"] / "world", months[0], months[-1], VIEWS)
    assert result.success
    assert lake_content(lake) == reference["content"]
    # ... and it did rewrite every zone table (a skipped month would prove nothing)
    assert all(lake.version(*t) > v for t, v in versions.items() if t[0] in ("formatted", "trusted", "exploitation"))
    # the landing zone wrote nothing: every file had landed already, the manifests stay as they were
    # (the formatted zone's Spark lane stages its month's Parquet through the same storage: month=…/part-…)
    assert not [w for w in writes if w[0] == "file" and not w[1].startswith("month=")]
    assert {m: read_manifest(lake.landing_month(SOURCE, m)) for m in months} == manifests
    for entries in manifests.values():
        assert not duplicates([e.__dict__ for e in entries], ["name", "sha256"])
    trusted = lake.read_arrow("trusted", SOURCE).to_pylist()
    assert not duplicates([r for r in trusted if r["_source_file"]], ["_source_file", "_source_line"])
    assert not duplicates(trusted, ["meter_id", "ts"])
    assert not duplicates(lake.read_arrow("exploitation", "daily_consumption").to_pylist(), ["meter_id", "date"])
    q = quarantine_rows(lake, dataset=None)
    assert not duplicates(q, ["dataset", "stage", "rule", "source_file", "source_line", "month"])


def crash_and_converge(reference, tmp_name: str, kills: int, next_kill) -> list[dict]:
    """Kill runs on one lake until ``kills`` of them died by SIGKILL (``next_kill(i)`` plans kill ``i``; a
    run that finished before its kill point counts as an attempt, not a kill), checking the lake after
    each; then rerun once and compare with the reference."""
    lake_dir = reference["root"] / tmp_name
    outcomes: list[dict] = []
    attempts = 0
    while sum(o["killed"] for o in outcomes) < kills:
        attempts += 1
        assert attempts <= 3 * kills, f"seed {SEED}: only {sum(o['killed'] for o in outcomes)} kills in {attempts} runs"
        kill = next_kill(len(outcomes))
        out = kill_run(lake_dir, reference["root"] / "world", reference["months"], seed=SEED + attempts, **kill)
        assert out["killed"] or out["returncode"] == 0, f"the run failed without a kill: {out}"
        problems = check_after_kill(Lake(lake_dir), reference) if lake_dir.exists() else []
        outcomes.append({**kill, **out, "problems": problems})
        assert not problems, f"seed {SEED}, run {attempts} {kill}: {out}\n" + "\n".join(problems[:10])
    result, _ = crash_run.record_writes(
        lake_dir, reference["root"] / "world", reference["months"][0], reference["months"][-1], VIEWS
    )
    assert result.success
    assert lake_content(Lake(lake_dir)) == reference["content"], f"seed {SEED}: no convergence after {outcomes}"
    return outcomes


def test_two_kills_then_rerun_converges(reference):
    """One kill between a landed file and its manifest, one inside a Delta commit of the formatted zone
    (the first kill happens on a fresh lake, so the landing write is sure to come)."""
    rng = random.Random(SEED)
    writes = reference["writes"]
    files = sum(1 for kind, _ in writes if kind == "file")
    # the commits of the formatted zone and its quarantine (before the costly trusted step)
    commits = [w for w in writes if w[0] == "commit"]
    formatted = [i for i, (_, target) in enumerate(commits, 1) if target in ("formatted/meter_readings", "quality/quarantine")][
        :4
    ]
    assert files > 4 and formatted
    plan = [
        {"kill_at": rng.randint(1, files // 2), "kind": "file", "phase": "after"},
        {"kill_at": rng.choice(formatted), "kind": "commit", "phase": "during"},
    ]
    outcomes = crash_and_converge(reference, "crashed", 2, lambda i: plan[i] if i < len(plan) else plan[-1])
    assert [o["killed"] for o in outcomes[:2]] == [True, True], outcomes


def test_delta_writer_killed_mid_commit_keeps_whole_versions(tmp_path):
    """A writer replacing months in a loop, SIGKILLed at random moments 3 times: each month always holds
    exactly one whole write (any version it committed), and the table's history only grows."""
    from lakehouse_tests.reliability.delta_writer import payload

    rng = random.Random(SEED)
    root = tmp_path / "lake"
    versions = []
    for round_ in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lakehouse_tests.reliability.delta_writer",
                "--root",
                str(root),
                "--writer",
                f"w{round_}",
                "--month",
                f"2012-0{1 + round_ % 2}",
                "--writes",
                "400",
                "--rows",
                "5000",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout.readline().startswith('{"ready"')
        committed = 0
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            committed += '"ok": true' in line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lake = Lake(root)
        table = lake.read_arrow("formatted", "stress").to_pylist()
        held = defaultdict(set)
        for r in table:
            held[r["month"]].add((r["writer"], r["write"]))
        for month, writes in held.items():
            assert len(writes) == 1, f"seed {SEED}: month {month} mixes writes {writes}"
            ((writer, i),) = writes
            expected = payload(writer, i, month, 5000).to_pylist()
            assert sorted(json.dumps(r, sort_keys=True) for r in table if r["month"] == month) == sorted(
                json.dumps(r, sort_keys=True) for r in expected
            )
        versions.append(lake.version("formatted", "stress"))
        assert committed > 0
    assert versions == sorted(versions)


@pytest.mark.slow
def test_twenty_kills_then_rerun_converges(reference_long):
    """20 SIGKILLs on one lake: 10 at injected writes (random write, random phase), 10 at random moments
    of the run; after each every table reads at a previous or new version; the rerun converges."""
    reference = reference_long
    rng = random.Random(SEED)
    commits = sum(1 for kind, _ in reference["writes"] if kind == "commit")
    files = sum(1 for kind, _ in reference["writes"] if kind == "file")

    def next_kill(i: int) -> dict:
        if i == 0:  # a fresh lake: kill while landing
            return {"kill_at": rng.randint(1, files), "kind": "file", "phase": rng.choice(["before", "during", "after"])}
        if i % 2 == 0:
            return {"kill_at": rng.randint(1, commits), "kind": "commit", "phase": rng.choice(["before", "during", "after"])}
        return {"after_s": rng.uniform(0.0, reference["seconds"])}

    outcomes = crash_and_converge(reference, "crashed20", 20, next_kill)
    report = reference["root"] / "kills.json"
    report.write_text(json.dumps(outcomes, indent=1, default=str))
    killed = [o for o in outcomes if o["killed"]]
    print(f"\nR2: {len(killed)} kills survived in {len(outcomes)} runs, seed {SEED}; details in {report}")
