"""``python -m benchmarks``: generate worlds, run every contender in a fresh process, write RESULTS.md.

    python -m benchmarks                                   # default: 10x12 and 40x48, 3 repeats
    python -m benchmarks --scales 40x48,200x48 --repeats 3 --extras incremental,write_path,demo
    python -m benchmarks --scales 1440x48 --repeats 1 --budget 3600 --append
    python -m benchmarks --ref HEAD --before-ref be29335   # the lakehouse at two commits, in the same run

A scale is ``<meters>x<months>`` (hourly readings: ≈730 per meter-month). Each repeat runs every contender
once, interleaved, so the ratios of one repeat come from the same minutes of machine load; the report
gives medians (min–max) over repeats. Results are outputs, never committed: they accumulate in the git-ignored
``benchmarks/out/results.json`` (one session per invocation) and are rendered to ``benchmarks/out/RESULTS.md``
and ``benchmarks/out/cost_vs_size.png``; docs/benchmarks.md carries the current figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import report, runner, snapshot
from benchmarks.world import WORK, Scale, ensure_world

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = OUT / "results.json"
CONTENDERS = {
    "lakehouse": "benchmarks.contenders.lakehouse",
    "spark_same": "benchmarks.contenders.spark_same",
    "spark_monthly": "benchmarks.contenders.spark_monthly",
    "pyspark": "benchmarks.contenders.pyspark_script",
    "pandas": "benchmarks.contenders.pandas_baseline",
    "floor": "benchmarks.contenders.pyarrow_floor",
    "duckdb_trusted": "benchmarks.contenders.duckdb_trusted",
}
EXTRAS = ("incremental", "write_path", "demo")


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    import psutil

    versions = {}
    for pkg in ("dagster", "pyspark", "deltalake", "pyarrow", "pandas", "numpy", "duckdb"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            versions[pkg] = "?"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True)
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "java": (java.stderr.splitlines() or ["?"])[0],
        "versions": versions,
    }


def git_head() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "lakehouse", "configs"], cwd=HERE.parent, capture_output=True, text=True
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def all_sessions() -> list[dict]:
    """Every saved session of every ``benchmarks/out/results*.json``, oldest first."""
    sessions = [s for f in sorted(OUT.glob("results*.json")) for s in json.loads(f.read_text())]
    return sorted(sessions, key=lambda s: s["started"])


def progress(lake: Path) -> str:
    """What a stopped lakehouse run had committed: months and rows per zone table."""
    import pyarrow as pa
    from deltalake import DeltaTable

    parts = []
    for zone, table in (("formatted", "meter_readings"), ("trusted", "meter_readings"), ("exploitation", "daily_consumption")):
        uri = lake / zone / table
        if not DeltaTable.is_deltatable(str(uri)):
            parts.append(f"{zone} 0 months")
            continue
        actions = pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True))
        months = len(set(actions.column("partition.month").to_pylist())) if actions.num_rows else 0
        rows = sum(int(n or 0) for n in actions.column("num_records").to_pylist())
        parts.append(f"{zone} {months} months ({rows:,} rows)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scales", default="10x12,40x48", help="comma-separated <meters>x<months>")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    p.add_argument("--extras", default="", help=f"subset of {','.join(EXTRAS)}")
    p.add_argument("--ref", default=None, help="run the lakehouse at this commit (default: the working tree)")
    p.add_argument("--before-ref", default=None, help="also run the lakehouse at this commit as 'lakehouse@before'")
    p.add_argument("--budget", type=float, default=1800, help="seconds per contender run before it is killed")
    p.add_argument("--rss-limit", type=float, default=12_000, help="MB of process-tree RSS before a run is killed")
    p.add_argument("--skip", default="", help="contender@scale pairs to skip, e.g. pandas@1440x48 (reported as skipped)")
    p.add_argument("--skip-reason", default="", help="why the --skip pairs were skipped (goes into the report)")
    p.add_argument("--incremental-scale", default=None, help="scale of the incremental-month figure (default: the largest)")
    p.add_argument(
        "--append", action="store_true", help="add this session to benchmarks/out/results.json instead of replacing it"
    )
    p.add_argument("--note", default="", help="a note printed with this session in the report")
    p.add_argument("--report-only", action="store_true", help="re-render RESULTS.md and the plot from results*.json")
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where this session is saved (sessions running at once need one file each); the report "
        "renders every benchmarks/out/results*.json",
    )
    args = p.parse_args(argv)

    if args.report_only:
        report.render(all_sessions(), OUT)
        return 0
    scales = [Scale.parse(s) for s in args.scales.split(",") if s]
    contenders = [c for c in args.contenders.split(",") if c]
    extras = [e for e in args.extras.split(",") if e]
    unknown = (set(contenders) - set(CONTENDERS)) | (set(extras) - set(EXTRAS))
    if unknown:
        p.error(f"unknown contender/extra {sorted(unknown)}")
    skip = {s for s in args.skip.split(",") if s}

    code: dict[str, tuple[str, Path | None]] = {}
    if args.ref:
        sha, path = snapshot.export(args.ref)
        code["lakehouse"] = (sha[:12], path)
    else:
        code["lakehouse"] = (git_head(), None)
    if args.before_ref:
        sha, path = snapshot.export(args.before_ref)
        code["lakehouse@before"] = (sha[:12], path)
        contenders.insert(contenders.index("lakehouse") + 1 if "lakehouse" in contenders else 0, "lakehouse@before")

    session = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "code": {k: v[0] for k, v in code.items()},
        "args": vars(args),
        "note": args.note,
        "worlds": {},
        "runs": [],
        "skipped": [],
    }
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_dir = WORK / "runs" / stamp  # one per session: sessions may run at once on the same scale
    logs = WORK / "logs" / stamp

    def save() -> None:
        sessions = json.loads(args.results.read_text()) if (args.append and args.results.exists()) else []
        if args.append:
            sessions = [s for s in sessions if s["started"] != session["started"]]
        sessions.append(session)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(sessions, indent=1, default=str))
        report.render(all_sessions(), OUT)

    def one(name: str, module_args: list[str], scale: Scale, repeat: int, work: Path, world: dict, keep: bool = False) -> dict:
        base = name.split("@")[0] if name.startswith("lakehouse") else name
        module = CONTENDERS.get(base, module_args[0] if module_args else "")
        sha_path = code.get(name) if name.startswith("lakehouse") else None
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        cmd = (
            [module, "--world", world["path"], "--work", str(work), *module_args[1:]]
            if module_args
            else [module, "--world", world["path"], "--work", str(work)]
        )
        log(f"{scale.label} r{repeat} {name} ...")
        r = runner.run(
            name,
            cmd,
            scale=scale.label,
            repeat=repeat,
            budget_s=args.budget,
            rss_limit_mb=args.rss_limit,
            log_dir=logs,
            python_path=str(HERE.parent) if sha_path and sha_path[1] else None,
            cwd=sha_path[1] if sha_path and sha_path[1] else None,
            env={"DAGSTER_HOME": str(work / "dagster_home")},
        )
        if r.status in ("timeout", "memory") and (work / "lake").is_dir():
            r.note += "; committed when stopped: " + progress(work / "lake")
        log(f"    {r.status} {r.wall_s:.1f}s peak {r.peak_rss_mb:.0f} MB {r.note}")
        rec = r.to_json()
        session["runs"].append(rec)
        save()
        return rec

    for scale in scales:
        world = ensure_world(scale, log)
        session["worlds"][scale.label] = world
        for repeat in range(1, args.repeats + 1):
            for name in contenders:
                if f"{name}@{scale.label}" in skip:
                    if repeat == 1:
                        session["skipped"].append(
                            {"contender": name, "scale": scale.label, "reason": args.skip_reason or "skipped by --skip"}
                        )
                    continue
                if repeat > 1 and any(
                    r["contender"] == name and r["scale"] == scale.label and r["status"] in ("timeout", "memory")
                    for r in session["runs"]
                ):
                    continue  # it did not fit the budget once; do not spend it again
                one(name, [], scale, repeat, runs_dir / scale.label / name, world)
            if "write_path" in extras and repeat == 1:  # two Spark runs per scale: once is enough
                for mode in ("collect", "executors"):
                    one(
                        f"write_{mode}",
                        ["benchmarks.contenders.write_path", "--mode", mode],
                        scale,
                        repeat,
                        runs_dir / scale.label / f"write_{mode}",
                        world,
                    )
        shutil.rmtree(runs_dir / scale.label, ignore_errors=True)

    if "incremental" in extras:
        scale = Scale.parse(args.incremental_scale) if args.incremental_scale else max(scales, key=lambda s: s.meters * s.months)
        world = ensure_world(scale, log)
        session["worlds"].setdefault(scale.label, world)
        months = scale.month_keys
        work = runs_dir / f"incremental-{scale.label}"
        shutil.rmtree(work, ignore_errors=True)
        steps = [
            ("month_first", f"{months[0]}:{months[0]}"),
            ("months_middle", f"{months[1]}:{months[-2]}"),
            ("month_last", f"{months[-1]}:{months[-1]}"),
        ]
        for step, rng in steps:
            rec = one("lakehouse", ["benchmarks.contenders.lakehouse", "--months", rng], scale, 1, work, world, keep=True)
            rec["incremental"] = step
            save()
        shutil.rmtree(work, ignore_errors=True)

    if "demo" in extras:
        work = runs_dir / "demo"
        shutil.rmtree(work, ignore_errors=True)
        (work / "dagster_home").mkdir(parents=True)
        shutil.copy(HERE.parent / "dagster_home" / "dagster.yaml", work / "dagster_home" / "dagster.yaml")
        sha_path = code["lakehouse"]
        log("demo: python -m lakehouse.sim.demo (default scale, 40 meters x 48 months) ...")
        r = runner.run(
            "demo",
            ["benchmarks.contenders.demo", "--world", str(work / "world"), "--work", str(work)],
            scale="40x48",
            repeat=1,
            budget_s=max(args.budget, 1800),
            rss_limit_mb=args.rss_limit,
            log_dir=logs,
            python_path=str(HERE.parent) if sha_path[1] else None,
            cwd=sha_path[1],
            env={
                "DAGSTER_HOME": str(work / "dagster_home"),
                "LAKEHOUSE_ROOT": str(work / "lake"),
                "LAKEHOUSE_DEMO_ROOT": str(work / "world"),
            },
        )
        log(f"    {r.status} {r.wall_s:.1f}s peak {r.peak_rss_mb:.0f} MB {r.note}")
        session["runs"].append(r.to_json())
        shutil.rmtree(work, ignore_errors=True)

    session["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    session["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    save()
    log(f"wrote {OUT / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
