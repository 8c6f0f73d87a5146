"""The R1 table of docs/reliability.md: ``python -m lakehouse_tests.reliability.report [--full]``.

Runs the corpus (:mod:`lakehouse.sim.corpus`) through landing → formatted → trusted on a temporary lake,
and every source fault against the local weather provider and databases, then prints one markdown row
per kind: where its lines ended and whether that matches the corpus's truth. ``--full``: twelve full
months instead of three days of one month.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def file_rows(months: list[str], days: list[int] | None, huge: int) -> tuple[list[str], dict]:
    from lakehouse.io.spark import get_spark
    from lakehouse.sim import corpus as bad
    from lakehouse.specs.models import SparkSpec
    from lakehouse_tests.reliability.test_bad_input import KNOWN_GAPS, check_file, outcome_table, run_corpus

    get_spark(SparkSpec(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"}))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        o = run_corpus(Path(tmp), months, days, huge)
        seconds = time.monotonic() - t0
        table = outcome_table(o)
        descriptions = {k.name: k.description for k in bad.FILE_KINDS}
        lines = [
            "| kind | what | caught by | lines | parse quarantine | quality quarantine | repaired | trusted as is | file-level entry | as the truth says |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in table:
            verdict = (
                "yes" if r["problems"] == 0 else ("**known gap**" if r["kind"] in KNOWN_GAPS else f"**no** ({r['problems']})")
            )
            lines.append(
                f"| `{r['kind']}` | {descriptions[r['kind']]} | {r['caught_by']} | {r['lines']} | {r.get('quarantined_parse', 0)}"
                f" | {r.get('quarantined_quality', 0)} | {r.get('repaired', 0)} | {r.get('trusted', 0)} | {r['file_level_entries']} | {verdict} |"
            )
        landed = sum(e.rows for m in o.manifests.values() for e in m.values())
        stats = {
            "files": len(o.corpus.files),
            "kinds": len(table),
            "seconds": round(seconds, 1),
            "rows_landed": landed,
            "formatted": len(o.formatted),
            "trusted": len(o.trusted_rows),
            "problems": sum(len(check_file(o, f)) for f in o.corpus.files),
            "success": o.result.success,
        }
    return lines, stats


def source_rows() -> list[str]:
    import pytest  # noqa: F401 - the kinds reuse the tests' helpers

    from lakehouse.collectors import collect
    from lakehouse.collectors.landing import CollectorError, read_manifest
    from lakehouse.io.lake import Lake
    from lakehouse.sim import corpus as bad
    from lakehouse.sim.weather_server import WeatherServer
    from lakehouse_tests.conftest import free_port
    from lakehouse_tests.reliability.helpers import project_at

    lines = ["| kind | what | outcome | collector message (excerpt) |", "|---|---|---|---|"]
    with WeatherServer(port=0) as server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        project = project_at(tmp / "lake", tmp / "world", LAKEHOUSE_WEATHER_URL=server.url)
        weather = project.source("weather")
        collector = weather.collector.model_copy(update={"timeout_s": 0.4, "backoff_s": 0.01})
        weather = weather.model_copy(update={"collector": collector})
        for i, kind in enumerate(bad.source_kinds(retries=collector.retries, timeout_s=0.4)):
            month = f"2013-{i % 12 + 1:02d}"
            faults = dict(kind.faults)
            source = weather
            if kind.channel == "sql":
                source = project.source("customers")
                url = {
                    "unreachable": "postgresql+psycopg2://reader:pw@127.0.0.1:1/registry",
                    "missing_file": f"sqlite:///{tmp / 'gone.sqlite'}",
                    "empty_db": f"sqlite:///{tmp / f'empty{i}.sqlite'}",
                }[faults["url"]]
                if faults["url"] == "empty_db":
                    import sqlite3

                    sqlite3.connect(tmp / f"empty{i}.sqlite").close()
                os.environ[source.collector.url_env] = url
                faults = {}
            if faults.pop("port", None):
                closed = free_port()
                source = weather.model_copy(
                    update={
                        "collector": collector.model_copy(
                            update={"url": collector.url.replace(f":{server.port}/", f":{closed}/")}
                        )
                    }
                )
            month = faults.pop("month", month)
            if faults:
                server.inject(match=month, **faults)
            folder = Lake(project.lake_root).landing_month(source.name, f"{month}")
            try:
                result = collect(project, source, month, folder)
                outcome, message = f"landed {len(result.landed)} file ({result.landed[0].rows} rows)", ""
            except CollectorError as exc:
                landed = [e for e in read_manifest(folder)]
                outcome = "CollectorError, nothing landed" if not landed else "CollectorError, BUT LANDED"
                message = str(exc)
            ok = (outcome.startswith("landed") == kind.survive) and (kind.survive or kind.needle in message)
            lines.append(
                f"| `{kind.name}` | {kind.description} | {outcome}{'' if ok else ' **unexpected**'} |"
                f" {message[:150].replace('|', '/')} |"
            )
            server.clear()
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lakehouse_tests.reliability.report", description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="twelve full months (2012) instead of three days of 2012-11")
    args = ap.parse_args(argv)
    months = [f"2012-{m:02d}" for m in range(1, 13)] if args.full else ["2012-11"]
    days = None if args.full else [3, 4, 5]
    lines, stats = file_rows(months, days, (16 << 20) if args.full else (1 << 20))
    print("\n".join(lines))
    print(f"\n{stats}\n")
    print("\n".join(source_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
