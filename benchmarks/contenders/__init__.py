"""The contenders, each a module run as ``python -m benchmarks.contenders.<name> --world W --work D --result F``.

Every contender reads the same meter files (``<world>/inbox/meter_readings/meter_<device>_<YYYY-MM>.csv``)
and writes its figures (seconds per stage, rows per zone) as JSON to ``--result``; the harness measures
wall time and peak RSS from outside.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

MONTH_RE = re.compile(r"_(\d{4}-\d{2})\.csv$")


def arguments(prog: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="a scratch directory for outputs")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--months", default=None, help="START:END (inclusive) of the world's months; all by default")
    if extra:
        extra(parser)
    return parser.parse_args()


def meter_files(world: Path, months: str | None = None) -> dict[str, list[Path]]:
    """The world's meter files grouped by the month in their name, optionally within START:END."""
    lo, _, hi = (months or ":").partition(":")
    out: dict[str, list[Path]] = {}
    for path in sorted((world / "inbox" / "meter_readings").glob("meter_*.csv")):
        m = MONTH_RE.search(path.name)
        if not m or (lo and m.group(1) < lo) or (hi and m.group(1) > hi):
            continue
        out.setdefault(m.group(1), []).append(path)
    return dict(sorted(out.items()))


class Clock:
    """Seconds per named stage, in the order they ran."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._t = time.monotonic()
        self.started = self._t

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self.stages[name] = round(self.stages.get(name, 0.0) + now - self._t, 3)
        self._t = now
        return self.stages[name]


def write_result(path: Path, figures: dict) -> None:
    path.write_text(json.dumps(figures, indent=1, default=str))


def finish_spark(spark, out: Path, clock: Clock, result: Path, **extra) -> None:
    """Count the rows a Spark contender wrote (Parquet folders ``formatted``, ``trusted``, ``daily`` under
    ``out``), stop the session and write the figures (and ``extra`` ones)."""
    rows = {
        zone: spark.read.parquet(str(out / name)).count()
        for zone, name in (("formatted", "formatted"), ("trusted", "trusted"), ("exploitation", "daily"))
    }
    spark.stop()
    write_result(result, {"zone_seconds": clock.stages, "rows": rows, **extra})
