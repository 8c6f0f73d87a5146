"""Render ``results.json`` (a list of sessions) as ``RESULTS.md`` and ``cost_vs_size.png``.

Every ratio is computed inside one repeat of one session (the contenders of a repeat ran back to back
under the same machine load) and then summarised as the median (min–max) over repeats.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median

from benchmarks import check

ORDER = (
    "lakehouse",
    "lakehouse@before",
    "spark_same",
    "spark_monthly",
    "pyspark",
    "pandas",
    "floor",
    "duckdb_trusted",
    "write_collect",
    "write_executors",
)
ZONES = ("landing", "formatted", "trusted", "exploitation")


def _fmt_range(values: list[float], unit: str = "", digits: int = 1) -> str:
    if not values:
        return "–"
    med = median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}{unit}"
    return f"{med:,.{digits}f}{unit} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def _ratio(values: list[float]) -> str:
    return _fmt_range(values, "×", 2 if min(values) >= 0.1 else 4)


def _runs(session: dict, scale: str, contender: str, ok: bool = True) -> list[dict]:
    return [
        r
        for r in session["runs"]
        if r["scale"] == scale and r["contender"] == contender and not r.get("incremental") and (r["status"] == "ok" or not ok)
    ]


def _paired(session: dict, scale: str, a: str, b: str, value) -> list[float]:
    """value(run_a) / value(run_b) for each repeat where both ran."""
    out = []
    by_b = {r["repeat"]: r for r in _runs(session, scale, b)}
    for ra in _runs(session, scale, a):
        rb = by_b.get(ra["repeat"])
        if rb is None:
            continue
        va, vb = value(ra), value(rb)
        if va and vb:
            out.append(va / vb)
    return out


def _zone_s(run: dict, zone: str) -> float | None:
    return (run.get("figures", {}).get("zone_seconds") or {}).get(zone)


def _scales(session: dict) -> list[str]:
    seen = []
    for r in session["runs"]:
        if r["scale"] not in seen and not r.get("incremental") and r["contender"] != "demo":
            seen.append(r["scale"])
    return seen


def _checks(session: dict, scale: str) -> list[str]:
    """Each contender reporting ``check`` figures against the lakehouse's, repeat by repeat
    (:mod:`benchmarks.check`): identical trusted rows, sums and quarantined rows per rule, or where not."""
    lines = []
    for run in _runs(session, scale, "lakehouse"):
        expected = run["figures"].get("check")
        for other in _runs(session, scale, "duckdb_trusted"):
            if expected and other["repeat"] == run["repeat"] and other["figures"].get("check"):
                lines.append(f"| duckdb_trusted | {run['repeat']} | {check.summary(expected, other['figures']['check'])} |")
    if not lines:
        return []
    return [
        "Trusted rows checked against the lakehouse's, month by month:",
        "",
        "| contender | repeat | check |",
        "|---|---|---|",
        *lines,
        "",
    ]


def session_md(s: dict) -> list[str]:
    m = s["machine"]
    out = [
        f"### Session {s['started']}" + (f" — {s['note']}" if s.get("note") else ""),
        "",
        f"- machine: {m['cpus']} CPUs, {m['memory_gb']} GiB, {m['platform']}; Python {m['python']}; {m['java']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "- code: " + ", ".join(f"{k} at `{v}`" for k, v in s.get("code", {}).items()),
        f"- load average (1/5/15 min) at start {s['loadavg_start']}, at end {s.get('loadavg_end', '(unfinished)')}; "
        "per-run load is in results.json. "
        + (
            "The load was above the core count + 1 at the start or the end: other work, or the end of an earlier "
            "heavy run, may have shared the machine (the session's note says which when known); compare ratios, "
            "not seconds."
            if max(s["loadavg_start"][0], (s.get("loadavg_end") or [0])[0]) > (m["cpus"] or 1) + 1
            else "The load stayed within the core count + 1: no other heavy work shared the machine."
        ),
        f"- repeats: {s['args']['repeats']}; budget {s['args']['budget']:.0f} s and {s['args']['rss_limit']:.0f} MB RSS per run",
        "",
    ]
    for scale in _scales(s):
        w = s["worlds"].get(scale, {})
        readings = w.get("readings", 0)
        out += [
            f"#### Scale {scale}: {readings:,} readings, {w.get('files', 0):,} files, {w.get('bytes', 0) / 1e6:,.0f} MB",
            "",
            "| contender | runs ok | wall s, median (min–max) | peak RSS MB | readings/s end to end | rows formatted / trusted / daily |",
            "|---|---|---|---|---|---|",
        ]
        names = [c for c in ORDER if any(r["contender"] == c and r["scale"] == scale for r in s["runs"])]
        for c in names:
            all_runs = _runs(s, scale, c, ok=False)
            ok = [r for r in all_runs if r["status"] == "ok"]
            walls = [r["wall_s"] for r in ok]
            rows = ok[-1]["figures"].get("rows", {}) if ok else {}
            rows_txt = " / ".join(
                f"{rows[z]:,}" for z in ("formatted", "trusted", "exploitation") if isinstance(rows, dict) and z in rows
            ) or (f"{rows:,}" if isinstance(rows, int) else "–")
            failed = [f"{r['status']}: {r['note']}" for r in all_runs if r["status"] != "ok"]
            out.append(
                f"| {c} | {len(ok)}/{len(all_runs)}{' — ' + '; '.join(failed)[:200] if failed else ''} | {_fmt_range(walls)} | "
                f"{_fmt_range([r['peak_rss_mb'] for r in ok], '', 0)} | "
                f"{_fmt_range([readings / x for x in walls], '', 0) if walls else '–'} | {rows_txt} |"
            )
        for sk in s.get("skipped", []):
            if sk["scale"] == scale:
                out.append(f"| {sk['contender']} | skipped — {sk['reason']} | – | – | – | – |")
        out.append("")
        # rows/s per zone
        zone_lines = []
        for c in (c for c in ORDER if not c.startswith("write_")):
            ok = _runs(s, scale, c)
            if not ok:
                continue
            cells = []
            for z in ZONES:
                secs = [x for x in (_zone_s(r, z) for r in ok) if x]
                cells.append(_fmt_range([readings / x for x in secs], "", 0) if secs else "–")
            start = [
                x for x in (_zone_s(r, "spark_start") or (r["figures"].get("stages") or {}).get("spark_start") for r in ok) if x
            ]
            zone_lines.append(f"| {c} | " + " | ".join(cells) + f" | {_fmt_range(start)} |")
        if zone_lines:
            out += [
                "Readings per second through each zone (world readings ÷ the zone's seconds; Spark start excluded and shown apart):",
                "",
                "| contender | landing | formatted | trusted | exploitation | Spark start s |",
                "|---|---|---|---|---|---|",
                *zone_lines,
                "",
            ]
        ratios = []
        wall = lambda r: r["wall_s"]  # noqa: E731
        for label, a, b, fn, target in (
            (
                "lakehouse ÷ the same transforms in one PySpark script (spark_same), end-to-end wall",
                "lakehouse",
                "spark_same",
                wall,
                "≤ 1.25×",
            ),
            (
                "lakehouse ÷ the same transforms in one script, trusted zone seconds",
                "lakehouse",
                "spark_same",
                lambda r: _zone_s(r, "trusted"),
                "",
            ),
            (
                "lakehouse ÷ the same transforms in one script, a month at a time (spark_monthly), end-to-end wall",
                "lakehouse",
                "spark_monthly",
                wall,
                "≤ 1.25×",
            ),
            (
                "lakehouse ÷ spark_monthly, trusted zone seconds",
                "lakehouse",
                "spark_monthly",
                lambda r: _zone_s(r, "trusted"),
                "",
            ),
            ("lakehouse ÷ minimal PySpark script (dedup + negatives only), end-to-end wall", "lakehouse", "pyspark", wall, ""),
            ("lakehouse ÷ pandas baseline, end-to-end wall", "lakehouse", "pandas", wall, "< 1× at the largest scale"),
            ("lakehouse ÷ pandas baseline, peak RSS", "lakehouse", "pandas", lambda r: r["peak_rss_mb"], "flat as data grows"),
            ("lakehouse before ÷ after (same run), wall", "lakehouse@before", "lakehouse", wall, "> 1× = faster now"),
            (
                "lakehouse before ÷ after, the Dagster run alone (wall − imports − Spark start)",
                "lakehouse@before",
                "lakehouse",
                lambda r: (r["figures"].get("stages") or {}).get("materialize"),
                "> 1× = faster now",
            ),
            (
                "lakehouse ÷ PySpark script, Spark work alone (lakehouse run vs script after its Spark start)",
                "lakehouse",
                "pyspark",
                lambda r: (
                    (r["figures"].get("stages") or {}).get("materialize")
                    or sum(v for k, v in (r["figures"].get("zone_seconds") or {}).items() if k != "spark_start")
                ),
                "",
            ),
            (
                "lakehouse before ÷ after, formatted zone seconds",
                "lakehouse@before",
                "lakehouse",
                lambda r: _zone_s(r, "formatted"),
                "",
            ),
            (
                "lakehouse before ÷ after, trusted zone seconds",
                "lakehouse@before",
                "lakehouse",
                lambda r: _zone_s(r, "trusted"),
                "",
            ),
            (
                "lakehouse ÷ DuckDB (duckdb_trusted), trusted zone seconds",
                "lakehouse",
                "duckdb_trusted",
                lambda r: _zone_s(r, "trusted"),
                "≤ 1.5× (issue 27)",
            ),
            (
                "lakehouse ÷ DuckDB, peak RSS (the lakehouse runs every zone, DuckDB formatted + trusted)",
                "lakehouse",
                "duckdb_trusted",
                lambda r: r["peak_rss_mb"],
                "≤ 1.5× (issue 27)",
            ),
            (
                "formatted throughput ÷ floor throughput (floor s ÷ lakehouse formatted s)",
                "floor",
                "lakehouse",
                lambda r: _zone_s(r, "formatted"),
                "≥ 0.50",
            ),
            (
                "executors+one commit ÷ collect+write_deltalake, write seconds",
                "write_executors",
                "write_collect",
                lambda r: _zone_s(r, "write"),
                "< 1× = executors faster",
            ),
            (
                "executors+one commit ÷ collect+write_deltalake, peak RSS",
                "write_executors",
                "write_collect",
                lambda r: r["peak_rss_mb"],
                "",
            ),
        ):
            vals = _paired(s, scale, a, b, fn)
            if vals:
                ratios.append(f"| {label} | {_ratio(vals)} | {target} |")
        if ratios:
            out += ["| ratio (per repeat, then median) | value | target |", "|---|---|---|", *ratios, ""]
        out += _checks(s, scale)
    inc = [r for r in s["runs"] if r.get("incremental")]
    if inc:
        by = {r["incremental"]: r for r in inc}
        first, last = by.get("month_first"), by.get("month_last")
        out += [
            f"#### Incremental month (scale {inc[0]['scale']}, one lake, each step a fresh process)",
            "",
            "| step | status | wall s | peak RSS MB | Spark start s | zones s (landing / formatted / trusted / exploitation) |",
            "|---|---|---|---|---|---|",
        ]
        for step in ("month_first", "months_middle", "month_last"):
            r = by.get(step)
            if not r:
                continue
            zs = r["figures"].get("zone_seconds", {})
            st = (r["figures"].get("stages") or {}).get("spark_start", "–")
            out.append(
                f"| {step} | {r['status']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {st} | "
                + " / ".join(str(zs.get(z, "–")) for z in ZONES)
                + " |"
            )
        if first and last and first["status"] == last["status"] == "ok":
            out += [
                "",
                f"Last month ÷ first month, wall: **{last['wall_s'] / first['wall_s']:.2f}×** (target ≤ 1.1×); "
                f"a new month through all zones: **{last['wall_s']:.0f} s** (target ≤ 60 s), one Spark start.",
            ]
        out.append("")
    for r in s["runs"]:
        if r["contender"] == "demo":
            out += [
                "#### `make demo` (40 meters × 48 months: world build, all zones, model)",
                "",
                f"{r['status']}: **{r['wall_s']:.0f} s** wall (target ≤ 600 s), peak RSS {r['peak_rss_mb']:.0f} MB"
                + (
                    f", CPU utilisation {cpu['cpu_utilisation']:.0%} ({cpu['cpu_s']:.0f} CPU s ÷ ({cpu['wall_s']:.0f} s × {cpu['cores']}"
                    " cores); target ≥ 75%)"
                    if (cpu := r["figures"].get("cpu"))
                    else ""
                )
                + f". {r['note']}",
                "",
            ]
    return out


def plot(sessions: list[dict], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[tuple[str, int], list[dict]] = {}
    for s in sessions:
        for scale, w in s["worlds"].items():
            for c in ORDER:
                runs = _runs(s, scale, c)
                if runs:
                    latest[(c, w["readings"])] = runs
    if not latest:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for c in ORDER:
        pts = sorted((n, runs) for (cc, n), runs in latest.items() if cc == c)
        if not pts:
            continue
        xs = [n for n, _ in pts]
        ax1.plot(xs, [median(r["wall_s"] for r in runs) for _, runs in pts], marker="o", label=c)
        ax2.plot(xs, [median(r["peak_rss_mb"] for r in runs) for _, runs in pts], marker="o", label=c)
    for ax, title, unit in ((ax1, "end-to-end wall time", "seconds"), (ax2, "peak RSS of the process tree", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("readings (hourly rows)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle("Cost vs data size (median over repeats; 2 shared cores — compare lines, not seconds)", fontsize=10)
    fig.tight_layout()
    path = out / "cost_vs_size.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


HEADER = """# Benchmark results

Written by `python -m benchmarks` (`make bench`) from `benchmarks/out/results*.json` (generated, not committed);
see `docs/benchmarks.md` for what each contender is, how to read the ratios and the current figures. Every
figure below comes from the harness.

Contenders, all on the same meter files of the demo world (`meter_<device>_<YYYY-MM>.csv`, hourly):
**lakehouse** (Dagster `materialize` of landing → formatted → trusted → exploitation over the month range,
in process), **lakehouse@before** (the same at an older commit, in the same run), **spark_same** (the
lakehouse's own transforms in one PySpark script over the whole range: no Dagster, no Delta, no per-month
jobs; the overhead baseline), **pyspark** (a minimal hand-written PySpark script: parse, exact duplicates,
negative readings, daily sums), **pandas** (the plain-pandas baseline: all files into one DataFrame), **floor** (pyarrow reads the files and writes Parquet once),
**write_collect / write_executors** (the Delta write paths).

![cost vs size](cost_vs_size.png)
"""


def render(sessions: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(sessions, out)
    lines = [HEADER, "## Sessions", ""]
    for s in sessions:
        lines += session_md(s)
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
