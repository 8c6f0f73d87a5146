"""``python -m lakehouse.sim build --out .demo --start 2012-01 --end 2015-12 --meters 40``

Writes the demo world: the meters' inbox files, the customer registry (SQLite) and the billing exports,
and the ground truth of both. The weather provider is a server: ``python -m lakehouse.sim.weather_server``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lakehouse.sim.customers import CustomerWorld
from lakehouse.sim.world import FAULT_KINDS, MeterWorld, WorldConfig, months_between


def _progress(done: int, total: int, month: str, started: float = time.monotonic()) -> None:
    elapsed = time.monotonic() - started
    print(f"\r  meters: {done}/{total} months ({month}), {elapsed:.0f}s", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the demo world's files (inbox, databases, truth)")
    build.add_argument("--out", type=Path, default=Path(".demo"))
    build.add_argument("--start", default="2012-01")
    build.add_argument("--end", default="2015-12", help="last month, inclusive")
    build.add_argument("--meters", type=int, default=40)
    build.add_argument("--seed", type=int, default=7)
    build.add_argument("--fault-rate", type=float, default=0.002, help="per meter-day and fault kind")
    build.add_argument("--kinds", default=",".join(FAULT_KINDS), help="fault kinds to inject")
    args = parser.parse_args(argv)

    config = WorldConfig(
        meters=args.meters,
        start=args.start,
        end=args.end,
        seed=args.seed,
        fault_rate=args.fault_rate,
        kinds=tuple(k for k in args.kinds.split(",") if k),
    )
    months = months_between(config.start, config.end)
    print(f"demo world: {config.meters} meters x {len(months)} months -> {args.out}/", file=sys.stderr)
    summary = MeterWorld(config).write(args.out, months, progress=_progress)
    print(f"  wrote {summary['files']} meter files, {summary['faults']} injected faulty rows", file=sys.stderr)
    customers = CustomerWorld(config).write(args.out, months)
    print(
        f"  wrote the registry ({customers['customers']} customers, {args.out}/customers.sqlite) and"
        f" {customers['billing_files']} billing exports ({customers['accounts']} accounts:"
        f" {customers['matched_accounts']} matched, {customers['billing_only']} billing-only;"
        f" {customers['registry_only']} registry-only customers)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
