"""Pandera validation of small months: pandas backend first vs pandera.pyspark only. A script, not a test.

    .venv/bin/python -m benchmarks.micro_validation [--lake .lakehouse] [--world .demo] [--month 2015-11] [--pairs 4]

Needs the lake and world ``make demo`` built. On a copy of the lake, in one process and one warm Spark
session, materializes the formatted, trusted and exploitation assets of ``--month`` again and again,
alternating the validation path between runs (``schemas.LOCAL_ROWS``: 1M rows, or -1 = never local) and
the order within each pair. Prints each run's seconds and, last, a JSON summary; the first pair carries the
JVM's warm-up and is left out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_validation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", type=Path, default=REPO / ".lakehouse")
    parser.add_argument("--world", type=Path, default=REPO / ".demo")
    parser.add_argument("--month", default="2015-11")
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    if not (args.lake / "trusted").is_dir():
        raise SystemExit(f"{args.lake}: no demo lake; run `make demo` first")
    with tempfile.TemporaryDirectory(prefix="micro-validation-") as tmp:
        lake = Path(tmp) / "lake"
        shutil.copytree(args.lake, lake)
        os.environ.update(LAKEHOUSE_ROOT=str(lake), LAKEHOUSE_DEMO_ROOT=str(args.world.resolve()), DAGSTER_HOME=tmp)
        import dagster as dg

        from lakehouse import settings
        from lakehouse.factories import build_definitions
        from lakehouse.quality import schemas

        defs = build_definitions(settings.load())
        defs.resources["spark"].session()
        keys = [
            a.key
            for a in defs.assets
            if a.partitions_def is not None and a.key.path[0] in ("formatted", "trusted", "exploitation")
        ]
        instance = dg.DagsterInstance.ephemeral()
        bound = {"local": schemas.LOCAL_ROWS, "spark": -1}
        seconds: dict[str, list[float]] = {"local": [], "spark": []}
        for pair in range(args.pairs):
            for mode in ("local", "spark") if pair % 2 == 0 else ("spark", "local"):
                schemas.LOCAL_ROWS = bound[mode]
                t0 = time.monotonic()
                result = dg.materialize(
                    defs.assets,
                    selection=keys,
                    resources=defs.resources,
                    instance=instance,
                    partition_key=args.month,
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                    raise_on_error=False,
                )
                seconds[mode].append(round(time.monotonic() - t0, 1))
                print(
                    f"pair {pair}: {mode:5s} {seconds[mode][-1]:6.1f} s ({len(keys)} assets, {'ok' if result.success else 'FAILED'})",
                    flush=True,
                )
                if not result.success:
                    raise SystemExit("a run failed: the comparison would be meaningless")
    warm = {m: s[1:] or s for m, s in seconds.items()}
    print(
        json.dumps(
            {
                "month": args.month,
                "assets": len(keys),
                "seconds": seconds,
                "median_warm_s": {m: statistics.median(s) for m, s in warm.items()},
                "local_over_spark": round(statistics.median(warm["local"]) / statistics.median(warm["spark"]), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
