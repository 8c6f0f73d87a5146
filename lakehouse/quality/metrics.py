"""``quality/metrics``: the assessment of every dataset, stage and month, kept across runs.

One long table (a row per figure), append-only, partitioned by month::

    dataset  stage  month  run_id  batch_id  written_at  metric  rule  column  value

``metric`` is one of ``rows_in``, ``rows_out``, ``rows_kept``, ``rows_rejected``, ``rows_merged``,
``rows_imputed``, ``rows_quarantined``, ``violations`` / ``violation_rate`` / ``rows_rejected`` /
``rows_merged`` / ``repaired_cells`` (per ``rule``), ``completeness_in`` / ``completeness_out`` (per
``column``), ``key_uniqueness_in`` / ``key_uniqueness_out``, ``formatted_rows`` / ``trusted_rows`` /
``imputed_rows`` / ``conserved`` (the conservation figures, read back from the written tables) and
``check_passed`` (per check ``rule``, 1 or 0).

Each write of a dataset/stage/month is a *batch* (``batch_id``); its ``rows_quarantined`` row is written
last and *publishes* the batch: the current quarantine and repairs of a slice are the rows of its newest
published batch (:func:`current`). Rows of a batch that crashed before publishing stay in the tables —
append-only — but are never current. The months a run computes in one plan publish their batches in one
commit (:func:`publish`), after each month's data commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.io.lake import Lake

if TYPE_CHECKING:
    from lakehouse.quality.cleaning import CleanResult

TABLE = ("quality", "metrics")
PUBLISH_METRIC = "rows_quarantined"
#: the write a row of an append-only quality table belongs to (:meth:`Batch.stamp`)
BATCH_FIELDS = (
    pa.field("run_id", pa.string()),
    pa.field("batch_id", pa.string()),
    pa.field("written_at", pa.timestamp("us", tz="UTC")),
)
SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("stage", pa.string()),
        *BATCH_FIELDS,
        pa.field("metric", pa.string()),
        pa.field("rule", pa.string()),
        pa.field("column", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("month", pa.string()),
    ]
)
BATCH_COLUMNS = tuple(f.name for f in BATCH_FIELDS)


@dataclass(frozen=True)
class Batch:
    """One write of a dataset/stage/month: the ids every row it writes carries."""

    dataset: str
    stage: str
    month: str
    run_id: str
    batch_id: str
    written_at: dt.datetime

    @classmethod
    def new(cls, *, dataset: str, stage: str, month: str, run_id: str) -> Batch:
        return cls(dataset, stage, month, run_id, uuid.uuid4().hex, dt.datetime.now(dt.UTC))

    def stamp(self, rows: pa.Table) -> pa.Table:
        """``rows`` with this batch's ``run_id``, ``batch_id`` and ``written_at`` columns set."""
        n = rows.num_rows
        values = {
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "batch_id": pa.array([self.batch_id] * n, pa.string()),
            "written_at": pa.array([self.written_at] * n, pa.timestamp("us", tz="UTC")),
        }
        for name, arr in values.items():
            if name in rows.column_names:
                rows = rows.set_column(rows.column_names.index(name), name, arr)
            else:
                rows = rows.append_column(name, arr)
        return rows


def by_month(staged: Mapping[Batch, Sequence[dict]]) -> dict[str, Sequence[dict]]:
    """The staged files of batches of distinct months, by month (what :meth:`Lake.commit_append` takes)."""
    months = [batch.month for batch in staged]
    if len(set(months)) != len(months):
        raise ValueError(f"one commit of staged rows takes one batch per month, got months {sorted(months)}")
    return {batch.month: files for batch, files in staged.items()}


def rows(batch: Batch, figures: Iterable[tuple[str, str | None, str | None, float | None]]) -> pa.Table:
    """Metric rows ``(metric, rule, column, value)`` of ``batch``."""
    figures = list(figures)
    data = {
        "dataset": [batch.dataset] * len(figures),
        "stage": [batch.stage] * len(figures),
        "run_id": [batch.run_id] * len(figures),
        "batch_id": [batch.batch_id] * len(figures),
        "written_at": [batch.written_at] * len(figures),
        "metric": [f[0] for f in figures],
        "rule": [f[1] for f in figures],
        "column": [f[2] for f in figures],
        "value": [None if f[3] is None else float(f[3]) for f in figures],
        "month": [batch.month] * len(figures),
    }
    return pa.Table.from_pydict(data, schema=SCHEMA)


def append(lake: Lake, table: pa.Table) -> int:
    return lake.append(*TABLE, table.select(SCHEMA.names).cast(SCHEMA))


def publish(lake: Lake, marks: Mapping[Batch, int], extra: pa.Table | None = None) -> int | None:
    """Write ``extra`` metric rows and the ``rows_quarantined`` row of every batch of ``marks`` (batch ->
    the rows it quarantined) in one commit: it publishes all those batches at once, or none of them if it
    fails. The batches of a run's months go together (one commit for a batch of months, not one per
    month); None when there is nothing to write."""
    tables = [] if extra is None else [extra.cast(SCHEMA)]
    tables += [rows(batch, [(PUBLISH_METRIC, None, None, n)]) for batch, n in marks.items()]
    return append(lake, pa.concat_tables(tables)) if tables else None


def read(lake: Lake, *, months: list[str] | None = None) -> pa.Table:
    if not lake.exists(*TABLE):
        return SCHEMA.empty_table()
    return lake.read_arrow(*TABLE, months=months)


def current_batches(lake: Lake, *, months: list[str] | None = None) -> pa.Table:
    """The newest published batch of every dataset/stage/month: ``dataset, stage, month, batch_id``."""
    t = read(lake, months=months)
    t = t.filter(pc.equal(t["metric"], PUBLISH_METRIC)).select(["dataset", "stage", "month", "batch_id", "written_at"])
    if t.num_rows == 0:
        return t.select(["dataset", "stage", "month", "batch_id"])
    ordered = t.sort_by([("dataset", "ascending"), ("stage", "ascending"), ("month", "ascending"), ("written_at", "descending")])
    seen, keep = set(), []
    for i, (d, s, m) in enumerate(
        zip(ordered["dataset"].to_pylist(), ordered["stage"].to_pylist(), ordered["month"].to_pylist(), strict=True)
    ):
        if (d, s, m) not in seen:
            seen.add((d, s, m))
            keep.append(i)
    return ordered.take(keep).select(["dataset", "stage", "month", "batch_id"])


def current(
    lake: Lake, table: tuple[str, str], *, dataset: str | None = None, stage: str | None = None, months: list[str] | None = None
) -> pa.Table:
    """The rows of ``table`` (quarantine or repairs) that belong to the newest published batch of their
    slice — what a rerun-free world would hold. Older batches stay in the table (append-only)."""
    if not lake.exists(*table):
        return pa.table({})
    data = lake.read_arrow(*table, months=months)
    batches = current_batches(lake, months=months)
    if dataset is not None:
        batches = batches.filter(pc.equal(batches["dataset"], dataset))
    if stage is not None:
        batches = batches.filter(pc.equal(batches["stage"], stage))
    return data.filter(pc.is_in(data["batch_id"], value_set=batches["batch_id"]))


# -------------------------------------------------------------------------------------- checks
@dataclass
class CheckEval:
    """One check's verdict for one month."""

    name: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    blocking: bool
    description: str
    violations: int | None = None
    rate: float | None = None


@dataclass
class Conservation:
    formatted_rows: int
    trusted_rows: int
    imputed_rows: int
    rejected_rows: int
    merged_rows: int

    @property
    def holds(self) -> bool:
        return self.formatted_rows == self.trusted_rows - self.imputed_rows + self.rejected_rows + self.merged_rows

    def describe(self) -> str:
        rhs = self.trusted_rows - self.imputed_rows + self.rejected_rows + self.merged_rows
        return (
            f"formatted {self.formatted_rows} {'=' if self.holds else '!='} trusted {self.trusted_rows}"
            f" - imputed {self.imputed_rows} + quarantined {self.rejected_rows} + merged {self.merged_rows}"
            f" (= {rhs})"
        )


def evaluate(result: CleanResult, conservation: Conservation) -> list[CheckEval]:
    """The month's verdict for every rule and step, and for conservation."""
    n = max(result.counts["rows_in"], 1)
    out = []
    for o in result.outcomes.values():
        rate = o.violations / n
        if not o.evaluated:
            out.append(CheckEval(o.name, False, "WARN", o.action == "fail", o.note, None, None))
            continue
        if o.action == "fail":
            limit = o.max_rate or 0.0
            passed = rate <= limit
            desc = f"{o.violations} violation(s), rate {rate:.4%} (allowed {limit:.4%})"
            out.append(CheckEval(o.name, passed, "ERROR", True, desc, o.violations, rate))
            continue
        if o.action == "warn":
            # a warning that found something fails with WARN severity; max_rate tolerates up to that share
            passed = o.violations == 0 if o.max_rate is None else rate <= o.max_rate
        else:  # quarantined, repaired or merged: handled; only a share above max_rate is worth a warning
            passed = o.max_rate is None or rate <= o.max_rate
        what = {"quarantine": "quarantined", "repair": "repaired", "warn": "kept (warn)", "merge": "merged"}.get(
            o.action, o.action
        )
        desc = f"{o.violations} row(s) flagged, rate {rate:.4%}; {what}"
        if o.max_rate is not None:
            desc += f" (warn above {o.max_rate:.4%})"
        out.append(CheckEval(o.name, passed, "WARN", False, desc, o.violations, rate))
    out.append(CheckEval("conservation", conservation.holds, "ERROR", True, conservation.describe()))
    return out


def figures(result: CleanResult, conservation: Conservation, checks: list[CheckEval]) -> list[tuple]:
    """The month's metric rows ``(metric, rule, column, value)``."""
    n = result.counts["rows_in"]
    f: list[tuple] = [(k, None, None, v) for k, v in result.counts.items()]
    for o in result.outcomes.values():
        ok = o.evaluated
        f += [
            ("violations", o.name, None, o.violations if ok else None),
            ("violation_rate", o.name, None, (o.violations / n if n else 0.0) if ok else None),
            ("rows_rejected", o.name, None, o.rejected),
            ("rows_merged", o.name, None, o.merged),
            ("repaired_cells", o.name, None, o.repaired_cells),
        ]
    f += [("completeness_in", None, c, v) for c, v in result.completeness_in.items()]
    f += [("completeness_out", None, c, v) for c, v in result.completeness_out.items()]
    if result.key_uniqueness_in is not None:
        f += [
            ("key_uniqueness_in", None, None, result.key_uniqueness_in),
            ("key_uniqueness_out", None, None, result.key_uniqueness_out),
        ]
    f += [
        ("formatted_rows", None, None, conservation.formatted_rows),
        ("trusted_rows", None, None, conservation.trusted_rows),
        ("imputed_rows", None, None, conservation.imputed_rows),
        ("conserved", None, None, 1.0 if conservation.holds else 0.0),
    ]
    f += [("check_passed", c.name, None, 1.0 if c.passed else 0.0) for c in checks]
    return f


#: the columns of :func:`summary_rows` (name, type), for a table in the materialization metadata
SUMMARY_COLUMNS = (
    ("check", "string"),
    ("action", "string"),
    ("flagged", "int"),
    ("rate", "float"),
    ("quarantined", "int"),
    ("merged", "int"),
    ("cells_repaired", "int"),
    ("result", "string"),
)


def summary_rows(result: CleanResult, checks: list[CheckEval]) -> list[dict[str, Any]]:
    """One month's account, a row per rule and step (:data:`SUMMARY_COLUMNS`), for the month's materialization."""
    n = max(result.counts["rows_in"], 1)
    verdict = {ch.name: ch for ch in checks}
    rows = []
    for o in result.outcomes.values():
        v = verdict.get(o.name)
        status = "not evaluated" if not o.evaluated else ("pass" if v is None or v.passed else v.severity)
        rows.append(
            {
                "check": o.name,
                "action": o.action,
                "flagged": int(o.violations),
                "rate": float(o.violations / n),
                "quarantined": int(o.rejected),
                "merged": int(o.merged),
                "cells_repaired": int(o.repaired_cells),
                "result": status,
            }
        )
    return rows
