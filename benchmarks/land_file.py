"""Peak memory of landing one large inbox file through the file-drop collector. A script, not a test.

    .venv/bin/python -m benchmarks.land_file [--mib 512]

Writes one meter file of ``--mib`` MiB into a temporary inbox, runs ``collect()`` of the ``meter_readings``
source for its month on a temporary lake, and prints the rows and bytes landed, the collect's seconds and
the process's peak resident memory (``ru_maxrss``) before and after.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from lakehouse.collectors import collect
from lakehouse.io.lake import Lake
from lakehouse.specs import load_project

REPO = Path(__file__).resolve().parent.parent
LINE = b"M0001;2012-01-01T00:00:00Z;1.25\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lakehouse-land-"))
    try:
        env = {"LAKEHOUSE_ROOT": str(tmp / "lake"), "LAKEHOUSE_DEMO_ROOT": str(tmp / "world")}
        project = load_project(REPO / "configs", env=env)
        source = project.source("meter_readings")
        inbox = project.resolve(source.collector.inbox)
        inbox.mkdir(parents=True)
        block = LINE * ((1 << 20) // len(LINE))
        with open(inbox / "meter_M0001_2012-01.csv", "wb") as fh:
            fh.write(b"device_id;timestamp;reading_kwh\n")
            fh.writelines(block for _ in range(args.mib))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        month = Lake(project.lake_root).landing_month("meter_readings", "2012-01")
        (entry,) = collect(project, source, "2012-01", month).landed
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"{args.mib} MiB file: rows={entry.rows:,} bytes={entry.bytes:,} seconds={seconds:.1f} "
            f"peak_rss_mib={peak / 1024:.0f} (before the collect {before / 1024:.0f})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
