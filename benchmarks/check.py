"""The trusted meter table of two contenders compared month by month: rows, imputed rows, the sum of
``reading_kwh`` and the quarantined rows per rule.

A contender reports these figures as ``check`` (month -> figures, see :func:`lake_figures` for the
lakehouse and ``benchmarks.contenders.duckdb_trusted.month_figures``); :func:`compare` lists where two
reports differ, and the report shows the result beside the timings.
"""

from __future__ import annotations

from typing import Any

#: relative tolerance on a month's sum of readings: the same values summed in another order
SUM_RTOL = 1e-9


def lake_figures(lake: Any, source: str = "meter_readings") -> dict[str, dict]:
    """The check figures of the lakehouse's ``trusted/<source>`` and its rows in ``quality/quarantine``
    (the trusted stage's; a fresh lake holds one batch per month)."""
    import pyarrow.compute as pc

    from lakehouse.quality import quarantine

    trusted = lake.read_arrow("trusted", source, columns=["month", "reading_kwh", "_source_line"])
    per_month = trusted.group_by("month").aggregate(
        [("month", "count", pc.CountOptions(mode="all")), ("reading_kwh", "sum"), ("_source_line", "count")]
    )
    out: dict[str, dict] = {}
    for r in per_month.to_pylist():
        out[r["month"]] = {
            "rows": r["month_count"],
            "imputed": r["month_count"] - r["_source_line_count"],
            "sum_kwh": round(float(r["reading_kwh_sum"] or 0.0), 6),
            "quarantine": {},
        }
    if lake.exists(*quarantine.TABLE):
        q = lake.read_arrow(*quarantine.TABLE, columns=["dataset", "stage", "rule", "month"])
        q = q.filter(pc.and_(pc.equal(q["dataset"], source), pc.equal(q["stage"], "trusted")))
        for r in sorted(q.group_by(["month", "rule"]).aggregate([("rule", "count")]).to_pylist(), key=lambda r: r["rule"]):
            out.setdefault(r["month"], {"rows": 0, "imputed": 0, "sum_kwh": 0.0, "quarantine": {}})
            out[r["month"]]["quarantine"][r["rule"]] = r["rule_count"]
    return dict(sorted(out.items()))


def compare(expected: dict[str, dict], got: dict[str, dict]) -> list[str]:
    """Where ``got`` differs from ``expected`` (empty: they agree), one line per month and figure."""
    diffs = []
    for month in sorted(set(expected) | set(got)):
        a, b = expected.get(month), got.get(month)
        if a is None or b is None:
            diffs.append(f"{month}: only in {'the second' if a is None else 'the first'}")
            continue
        for name in ("rows", "imputed"):
            if a[name] != b[name]:
                diffs.append(f"{month} {name}: {a[name]} vs {b[name]}")
        if abs(a["sum_kwh"] - b["sum_kwh"]) > SUM_RTOL * max(1.0, abs(a["sum_kwh"])):
            diffs.append(f"{month} sum_kwh: {a['sum_kwh']} vs {b['sum_kwh']}")
        for rule in sorted(set(a["quarantine"]) | set(b["quarantine"])):
            x, y = a["quarantine"].get(rule, 0), b["quarantine"].get(rule, 0)
            if x != y:
                diffs.append(f"{month} quarantine {rule}: {x} vs {y}")
    return diffs


def summary(expected: dict[str, dict], got: dict[str, dict]) -> str:
    """One line for the report: agreement over how many months, rows and quarantined rows, or the first
    differences."""
    diffs = compare(expected, got)
    if diffs:
        return f"{len(diffs)} difference(s): " + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
    rows = sum(m["rows"] for m in expected.values())
    quarantined = sum(sum(m["quarantine"].values()) for m in expected.values())
    return f"identical: {len(expected)} months, {rows:,} trusted rows, sums, {quarantined:,} quarantined rows by rule"
