"""Run one contender in a fresh subprocess: wall time, peak RSS of its process tree, its own figures.

Peak RSS is sampled (every ``interval`` seconds) over the process and all its descendants — the Spark JVM
and its Python workers included — so it is a lower bound of the true peak, accurate to the sampling.
A run that exceeds its time budget or memory limit is killed (the whole tree) and reported as such.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    contender: str
    scale: str
    repeat: int
    status: str  # ok | failed | timeout | memory
    wall_s: float
    peak_rss_mb: float
    loadavg_before: list[float]
    loadavg_after: list[float]
    figures: dict = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


# an exception line of a Python traceback or a JVM log: ``pkg.module.SomeError: message`` (not a stack frame)
_EXCEPTION = re.compile(r"^(?:Caused by: )?(?:[\w$]+\.)*[\w$]*(?:Error|Exception|Exit)(?::.*)?$")


def failure_cause(log: str, limit: int = 600) -> str:
    """What made a run fail, from its log: the first JVM ``OutOfMemoryError`` if any, then the last
    exception line (the Python traceback's last line); the log's last lines when it names no exception."""
    lines = [line.strip() for line in log.strip().splitlines()]
    found = [line for line in lines if _EXCEPTION.match(line)]
    causes = [line for line in found if "OutOfMemoryError" in line][:1] + found[-1:]
    picked = list(dict.fromkeys(causes)) or lines[-5:]
    return " | ".join(picked)[:limit]


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _kill_tree(proc: psutil.Process) -> None:
    try:
        procs = [*proc.children(recursive=True), proc]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def run(
    contender: str,
    module_args: list[str],
    *,
    scale: str,
    repeat: int,
    env: dict[str, str] | None = None,
    budget_s: float = 1800,
    rss_limit_mb: float = 12_000,
    interval: float = 0.2,
    log_dir: Path | None = None,
    python_path: str | None = None,
    cwd: Path | None = None,
) -> Run:
    """Run ``python -m <module_args...> --result FILE`` and measure it."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_file = Path(fh.name)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYSPARK_PYTHON", sys.executable)
    full_env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if python_path:
        full_env["PYTHONPATH"] = python_path + os.pathsep + full_env.get("PYTHONPATH", "")
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{contender}-{scale}-r{repeat}.log"
    cmd = [sys.executable, "-m", *module_args, "--result", str(result_file)]
    load_before = list(os.getloadavg())
    status, note = "ok", ""
    with log_path.open("w") as log:
        t0 = time.monotonic()
        popen = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or REPO)
        proc = psutil.Process(popen.pid)
        peak = 0
        while popen.poll() is None:
            peak = max(peak, _tree_rss(proc))
            elapsed = time.monotonic() - t0
            if elapsed > budget_s:
                status, note = "timeout", f"killed after the time budget of {budget_s:.0f}s"
                _kill_tree(proc)
                break
            if peak > rss_limit_mb * 1e6:
                status, note = "memory", f"killed at {peak / 1e6:.0f} MB, over the {rss_limit_mb:.0f} MB limit"
                _kill_tree(proc)
                break
            time.sleep(interval)
        popen.wait()
        wall = time.monotonic() - t0
    figures: dict = {}
    if status == "ok":
        if popen.returncode != 0:
            status = "failed"
            note = f"exit {popen.returncode}: " + failure_cause(log_path.read_text(errors="replace"))
        elif result_file.exists() and result_file.stat().st_size:
            figures = json.loads(result_file.read_text())
    result_file.unlink(missing_ok=True)
    return Run(
        contender=contender,
        scale=scale,
        repeat=repeat,
        status=status,
        wall_s=round(wall, 2),
        peak_rss_mb=round(peak / 1e6, 1),
        loadavg_before=[round(x, 2) for x in load_before],
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
        figures=figures,
        note=note,
    )
