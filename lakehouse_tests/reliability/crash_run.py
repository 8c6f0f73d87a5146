"""A materialization that can be killed: ``python -m lakehouse_tests.reliability.crash_run``.

Runs the zone assets of the meter source (and ``--views``) over ``--start..--end`` on the lake
``--lake`` with the demo world ``--world``, in this process, like ``make demo`` does. Every write the run
makes goes through two functions, wrapped here to report it on stdout (``WRITE <n> <kind> <target>``):

* :meth:`lakehouse.io.storage.Storage.write` — a landed file or a manifest version (in this process);
* :meth:`lakehouse.io.lake.Lake._commit` — one Delta transaction.

With ``--kill-at N --kind commit|file --phase before|during|after`` the process SIGKILLs itself at its
``N``-th write of that kind: before it starts, while it runs (a timer fires inside it), or right after it
returned. Without it the parent kills
the process at a random moment (``SIGKILL`` from outside). :func:`record_writes` gives the same write
list for an in-process run, so a test can choose its kill points among the writes that really happen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

#: a "during" kill fires this long (at most) after the write started: delta-rs commits of test-sized
#: months take 10-200 ms, a landed file a few ms
DURING_MAX_S = {"commit": 0.15, "file": 0.004}


def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def instrument(on_write: Callable[[int, str, str], Callable[[], None] | None]) -> Iterator[list[tuple[str, str]]]:
    """Wrap the two write paths; ``on_write(n, kind, target)`` runs before write ``n`` and may return a
    function to run after it. Yields the list of writes seen (kind, target)."""
    from lakehouse.io import lake as lake_mod
    from lakehouse.io.storage import Storage

    seen: list[tuple[str, str]] = []
    real_write, real_commit = Storage.write, lake_mod.Lake._commit

    def write(self, uri: str, data: bytes, **kwargs) -> bool:
        seen.append(("file", "/".join(uri.rsplit("/", 2)[-2:])))
        after = on_write(len(seen), *seen[-1])
        done = real_write(self, uri, data, **kwargs)
        if after:
            after()
        return done

    def commit(self, zone: str, table: str, write, *args, **kwargs):
        seen.append(("commit", f"{zone}/{table}"))
        after = on_write(len(seen), *seen[-1])
        version = real_commit(self, zone, table, write, *args, **kwargs)
        if after:
            after()
        return version

    Storage.write = write
    lake_mod.Lake._commit = commit
    try:
        yield seen
    finally:
        Storage.write = real_write
        lake_mod.Lake._commit = real_commit


def killer(kill_at: int | None, kill_kind: str, phase: str, seed: int) -> Callable[[int, str, str], Callable[[], None] | None]:
    rng = random.Random(seed)
    counts = {"file": 0, "commit": 0}

    def on_write(n: int, kind: str, target: str) -> Callable[[], None] | None:
        counts[kind] += 1
        print(f"WRITE {n} {kind} {target}", flush=True)
        if kind != kill_kind or counts[kind] != kill_at:
            return None
        print(f"KILL {n} {phase} {kind} {target}", flush=True)
        if phase == "before":
            _kill_now()
        if phase == "during":
            threading.Timer(rng.uniform(0, DURING_MAX_S[kind]), _kill_now).start()
            return None
        return _kill_now

    return on_write


def run(lake: Path, world: Path, start: str, end: str, views: list[str]):
    from lakehouse_tests.reliability.helpers import materialize, project_at, zone_definitions

    project = project_at(lake, world)
    # the corpus month is mostly broken files on purpose: lift the rejected-rows guard (max_rejected_rate,
    # a blocking check that would hold the month) so the run shows what each zone does with every line
    project = project.model_copy(update={"sources": [s.model_copy(update={"max_rejected_rate": 1.0}) for s in project.sources]})
    defs = zone_definitions(project, views=views)
    keys = [k for a in defs.assets for k in a.keys]
    return materialize(defs, keys, start, end, raise_on_error=False)


def record_writes(lake: Path, world: Path, start: str, end: str, views: list[str]):
    """Run in this process and return (result, the writes it made in order)."""
    with instrument(lambda n, kind, target: None) as seen:
        result = run(lake, world, start, end, views)
    return result, list(seen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--end", required=True)
    ap.add_argument("--views", default="")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--kind", choices=("commit", "file"), default="commit")
    ap.add_argument("--phase", choices=("before", "during", "after"), default="during")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with instrument(killer(args.kill_at, args.kind, args.phase, args.seed)):
        result = run(args.lake, args.world, args.start, args.end, [v for v in args.views.split(",") if v])
    print("RESULT " + json.dumps({"success": result.success}), flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
