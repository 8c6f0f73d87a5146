"""Benchmark worlds: the demo world's meter files at a chosen scale, generated once and cached.

A world is ``meters × months`` hourly readings written by :class:`lakehouse.sim.world.MeterWorld` — the same
files the demo writes (same seeds, same faults), minus the simulator's ground truth, which benchmarks do
not need. Generation runs in a few processes, one month per task; worlds are cached under
``benchmarks/_work/worlds/<meters>x<months>/`` (git-ignored) and reused while ``world.json`` is there.
"""

from __future__ import annotations

import csv
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lakehouse.sim.world import MeterWorld, WorldConfig, months_between

WORK = Path(__file__).resolve().parent / "_work"
FIRST_MONTH = "2012-01"
FAULT_RATE = 0.002
SEED = 7
SOURCE = "meter_readings"


@dataclass(frozen=True)
class Scale:
    meters: int
    months: int

    @property
    def label(self) -> str:
        return f"{self.meters}x{self.months}"

    @property
    def month_keys(self) -> list[str]:
        start = FIRST_MONTH
        y, m = int(start[:4]), int(start[5:])
        m += self.months - 1
        end = f"{y + (m - 1) // 12}-{(m - 1) % 12 + 1:02d}"
        return months_between(start, end)

    @classmethod
    def parse(cls, text: str) -> Scale:
        meters, _, months = text.lower().partition("x")
        return cls(int(meters), int(months or 48))


def world_dir(scale: Scale) -> Path:
    return WORK / "worlds" / scale.label


def inbox(world: Path) -> Path:
    return world / "inbox" / SOURCE


_WORLD: MeterWorld | None = None


def _init(meters: int) -> None:
    global _WORLD
    _WORLD = MeterWorld(WorldConfig(meters=meters, fault_rate=FAULT_RATE, seed=SEED))


def _write_month(args: tuple[str, str]) -> int:
    """One month of every meter, exactly as ``MeterWorld.write`` writes it; the number of readings."""
    out, month = args
    world = _WORLD
    assert world is not None
    folder = inbox(Path(out))
    rows_total = 0
    for b in world.buildings:
        import numpy as np

        rng = np.random.default_rng([world.config.seed, int(month.replace("-", "")), int(b.device_id[1:])])
        stamps, values, _truth = world.month_rows(b, month, rng)
        rows, _faults = world.inject(b.device_id, stamps, values, rng)
        path = folder / f"meter_{b.device_id}_{month}.csv"
        tmp = path.with_suffix(".csv.part")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter=";", lineterminator="\n")
            w.writerow(["device_id", "timestamp", "reading_kwh"])
            w.writerows((b.device_id, t, v) for t, v in rows)
        tmp.rename(path)
        rows_total += len(rows)
    return rows_total


def write_months(world: Path, meters: int, months: list[str], workers: int | None = None) -> int:
    """Write the meter files of ``months`` into ``world``'s inbox; the number of readings written."""
    inbox(world).mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    if workers == 1 or len(months) == 1:
        _init(meters)
        return sum(_write_month((str(world), m)) for m in months)
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(meters,)) as pool:
        return sum(pool.map(_write_month, [(str(world), m) for m in months]))


def ensure_world(scale: Scale, log=print) -> dict:
    """The cached world of ``scale`` (generated on first use): its path, files, readings and bytes."""
    folder = world_dir(scale)
    meta_path = folder / "world.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    log(f"generating world {scale.label} ({scale.meters} meters x {scale.months} months) in {folder}")
    t0 = time.monotonic()
    readings = write_months(folder, scale.meters, scale.month_keys)
    files = sorted(inbox(folder).glob("meter_*.csv"))
    meta = {
        "path": str(folder),
        "meters": scale.meters,
        "months": scale.months,
        "first_month": scale.month_keys[0],
        "last_month": scale.month_keys[-1],
        "files": len(files),
        "readings": readings,
        "bytes": sum(f.stat().st_size for f in files),
        "fault_rate": FAULT_RATE,
        "seed": SEED,
        "generated_seconds": round(time.monotonic() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"  {readings:,} readings in {len(files):,} files ({meta['bytes'] / 1e6:.0f} MB), {meta['generated_seconds']}s")
    return meta
