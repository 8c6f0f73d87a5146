"""Tick time of the meter inbox sensor with a large inbox (default 50,000 files). A script, not a test.

    .venv/bin/python -m benchmarks.sensor_tick [--files 50000] [--bytes 1000] [--repeat 5]

Writes ``--files`` meter files (``meter_<device>_<YYYY-MM>.csv`` spread over the 48 demo months) into a
temporary inbox and evaluates the real ``meter_readings`` inbox sensor (``dg.build_sensor_context`` with
an ephemeral instance) tick after tick:

* **backlog**: the first ticks, which hash every file once (at most ``MAX_FILES_PER_TICK`` per tick);
* **steady**: a tick over the full, unchanged inbox (the cost paid every 30 s in production);
* **late file**: a tick after one late file for an old month arrived (must request that month only);
* **full rehash**: for scale, what a cursor-less sensor would pay per tick — hashing every file.

Prints one line per figure and a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from lakehouse.collectors.inbox import MAX_FILES_PER_TICK, InboxCursor
from lakehouse.collectors.landing import sha256_file
from lakehouse.factories.common import resources
from lakehouse.factories.landing import build_landing_asset
from lakehouse.factories.sensors import build_inbox_sensor, landing_job
from lakehouse.specs import load_project

REPO = Path(__file__).resolve().parent.parent


def months() -> list[str]:
    return [f"{y}-{m:02d}" for y in range(2012, 2016) for m in range(1, 13)]


def fill_inbox(inbox: Path, n: int, size: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    all_months = months()
    line = "M{dev:05d};{month}-01T{h:02d}:00:00Z;1.234\n"
    for i in range(n):
        month = all_months[i % len(all_months)]
        dev = i // len(all_months)
        body = ["device_id;timestamp;reading_kwh\n"]
        h = 0
        while sum(len(b) for b in body) < size:
            body.append(line.format(dev=dev, month=month, h=h % 24))
            h += 1
        (inbox / f"meter_M{dev:05d}_{month}.csv").write_text("".join(body))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sensor_tick", description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--bytes", type=int, default=1_000, help="approximate size of each file")
    parser.add_argument("--repeat", type=int, default=5, help="steady-state ticks to time")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sensor_tick_") as tmp:
        root = Path(tmp)
        project = load_project(
            REPO / "configs", env={"LAKEHOUSE_ROOT": str(root / "lake"), "LAKEHOUSE_DEMO_ROOT": str(root / "world")}
        )
        source = project.source("meter_readings")
        inbox = project.resolve(source.collector.inbox)
        t0 = time.perf_counter()
        fill_inbox(inbox, args.files, args.bytes)
        write_s = time.perf_counter() - t0
        total_mb = sum(e.stat().st_size for e in os.scandir(inbox)) / 1e6
        print(f"inbox: {args.files} files, {total_mb:.1f} MB, written in {write_s:.1f}s ({inbox})", file=sys.stderr)

        job = landing_job(project, source)
        sensor = build_inbox_sensor(project, source, job, settle_seconds=0)
        defs = dg.Definitions(
            assets=[build_landing_asset(project, source)], jobs=[job], sensors=[sensor], resources=resources(project)
        )
        instance = dg.DagsterInstance.ephemeral()
        cursor: str | None = None

        def tick() -> tuple[float, list[str]]:
            nonlocal cursor
            started = time.perf_counter()
            result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
            elapsed = time.perf_counter() - started
            cursor = result.cursor
            return elapsed, sorted(r.partition_key for r in result.run_requests)

        backlog, requested = [], []
        while True:
            elapsed, req = tick()
            if not req:
                break
            backlog.append(elapsed)
            requested += req
        print(
            f"backlog: {len(backlog)} tick(s) of <= {MAX_FILES_PER_TICK} files: "
            + ", ".join(f"{s:.2f}s" for s in backlog)
            + f"; {len(requested)} month requests, {len(set(requested))} distinct months",
            file=sys.stderr,
        )
        steady = [tick()[0] for _ in range(args.repeat)]
        print(
            f"steady tick, {args.files} unchanged files: median {statistics.median(steady) * 1000:.0f} ms"
            f" (min {min(steady) * 1000:.0f}, max {max(steady) * 1000:.0f}, {args.repeat} ticks)",
            file=sys.stderr,
        )

        (inbox / "meter_M99999_2012-03.csv").write_text("device_id;timestamp;reading_kwh\nM99999;2012-03-01T00:00:00Z;1.0\n")
        late_s, late_req = tick()
        assert late_req == ["2012-03"], late_req
        print(f"late file for 2012-03: {late_s * 1000:.0f} ms, requests {late_req}", file=sys.stderr)
        assert InboxCursor.parse(cursor).name == "meter_M99999_2012-03.csv"

        started = time.perf_counter()
        for entry in os.scandir(inbox):
            sha256_file(Path(entry.path))
        rehash_s = time.perf_counter() - started
        print(f"for scale, rehashing every file once: {rehash_s:.2f}s", file=sys.stderr)

    figures = {
        "files": args.files,
        "inbox_mb": round(total_mb, 1),
        "backlog_ticks": len(backlog),
        "backlog_tick_s": [round(s, 3) for s in backlog],
        "steady_tick_ms_median": round(statistics.median(steady) * 1000, 1),
        "late_file_tick_ms": round(late_s * 1000, 1),
        "full_rehash_s": round(rehash_s, 2),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
