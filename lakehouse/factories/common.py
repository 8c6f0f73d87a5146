"""What every zone factory shares: resources, the month partitions, and the per-month loop.

Resources:
    ``lake``   the lake root (:class:`lakehouse.io.lake.Lake`): every path and Delta read/write.
    ``spark``  this process's Spark session (local or Spark Connect), built once per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import SparkSession

from lakehouse.io.lake import Lake
from lakehouse.io.spark import session_conf, session_from_conf
from lakehouse.specs.models import Project, SourceSpec


class LakeResource(dg.ConfigurableResource):
    """The lake root; the only way assets reach data on disk."""

    root: str

    @property
    def lake(self) -> Lake:
        return Lake(self.root)


class SparkResource(LazyPySparkResource):
    """This process's Spark session, created on first use (dagster-pyspark's lazy resource).

    ``spark_config`` is the flat builder configuration of ``spark`` in lakehouse.yaml
    (:func:`lakehouse.io.spark.session_conf`): ``spark.remote`` (Spark Connect) or ``spark.master``,
    then every setting. The session is this process's one (:func:`lakehouse.io.spark.session_from_conf`:
    Java check, Python workers on this interpreter, the package shipped to a cluster's executors).
    """

    def _init_session(self) -> None:
        if self._spark_session is None:
            self._spark_session = session_from_conf(self.spark_config)

    def session(self) -> SparkSession:
        return self.spark_session


def resources(project: Project) -> dict[str, Any]:
    return {
        "lake": LakeResource(root=str(project.lake_root)),
        "spark": SparkResource(spark_config=session_conf(project.lakehouse.spark)),
    }


def monthly(project: Project, source: SourceSpec | None = None) -> dg.MonthlyPartitionsDefinition:
    """The month partitions of ``source`` (its own ``months`` if it declares them), else the lakehouse's."""
    months = project.months_of(source) if source is not None else project.lakehouse.months
    return dg.MonthlyPartitionsDefinition(start_date=months.start, end_date=months.end, fmt="%Y-%m")


def key(zone: str, table: str) -> dg.AssetKey:
    return dg.AssetKey([zone, table])


def months_of(context: dg.AssetExecutionContext) -> list[str]:
    """The months of this run: one key, or every key of a backfilled range."""
    return list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else []


def run_months(
    context: dg.AssetExecutionContext,
    step: Callable[[str], dict[str, Any]],
    what: str,
    *,
    workers: int = 1,
) -> dict[str, Any]:
    """Run ``step`` for each month of the run, each committing on its own.

    A month that fails does not stop the others (their commits stand, and are reported as one
    materialization per month); the step fails at the end naming every failed month. Returns the run's
    metadata: the last month's figures when one month ran, totals and a per-month table for a range.

    ``workers`` > 1 runs months in that many threads sharing the process's Spark session, in month order
    (a month is a few small Spark jobs and Delta commits, so one month at a time leaves the cores mostly
    idle). Months that read each other's output must wait for it inside ``step`` (see the trusted
    assets' ``_InOrder``). The first month runs alone: it creates the tables the others
    commit to. Commits to one table from several threads are retried when they lose a race
    (:meth:`lakehouse.io.lake.Lake._commit`); the content of every month is the same in any order.
    """
    months = months_of(context)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, BaseException] = {}
    started = time.monotonic()
    lock = threading.Lock()

    def one(month: str) -> None:
        t0 = time.monotonic()
        try:
            figures = step(month)
        except Exception as exc:  # noqa: BLE001 - reported below, per month
            with lock:
                failures[month] = exc
            context.log.error(f"{what} {month}: {type(exc).__name__}: {exc}")
            return
        figures["seconds"] = round(time.monotonic() - t0, 2)
        with lock:
            results[month] = figures
            done = len(results) + len(failures)
        elapsed = time.monotonic() - started
        left = f", ~{elapsed / done * (len(months) - done):.0f}s left" if done < len(months) else ""
        context.log.info(
            f"{what} {month} ({done}/{len(months)}, {elapsed:.0f}s{left}): "
            + ", ".join(f"{k}={_short(v)}" for k, v in figures.items() if not isinstance(v, (dict, list)))
        )

    if months:
        one(months[0])
    rest = months[1:]
    if workers > 1 and len(rest) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(rest)), thread_name_prefix="month") as pool:
            list(pool.map(one, rest))
    else:
        for month in rest:
            one(month)
    results = {m: results[m] for m in months if m in results}
    failures = {m: failures[m] for m in months if m in failures}
    if failures:
        # the months that committed are materialized (their Delta versions stand); report them before
        # failing, so the UI shows them done and only the failed months failed
        for month, figures in results.items():
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=context.asset_key, partition=month, metadata={k: _md(v) for k, v in figures.items()}
                )
            )
        first = next(iter(failures.values()))
        raise dg.Failure(
            description=f"{what}: {len(failures)} of {len(months)} month(s) failed: "
            + "; ".join(f"{m}: {type(e).__name__}: {e}" for m, e in failures.items()),
            metadata={"failed_months": sorted(failures), "committed_months": sorted(results)},
        ) from first
    return summarize(results, time.monotonic() - started)


def summarize(results: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    if len(results) == 1:
        return {k: _md(v) for k, v in next(iter(results.values())).items()}
    numeric = sorted({k for r in results.values() for k, v in r.items() if isinstance(v, int) and not isinstance(v, bool)})
    totals = {f"total_{k}": sum(int(r.get(k, 0)) for r in results.values()) for k in numeric if k != "delta_version"}
    header = "| month | " + " | ".join(numeric) + " |\n|---|" + "---|" * len(numeric) + "\n"
    rows = "".join(f"| {m} | " + " | ".join(str(r.get(k, "")) for k in numeric) + " |\n" for m, r in results.items())
    return {
        **totals,
        "months": len(results),
        "seconds": round(seconds, 2),
        "per_month": dg.MetadataValue.md(header + rows),
    }


def _short(value: Any) -> Any:
    """A metadata value as a progress line shows it (a path, not its repr)."""
    return value.value if isinstance(value, dg.MetadataValue) else value


def _md(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return dg.MetadataValue.json(value)
    return value
