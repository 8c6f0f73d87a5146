"""What every zone factory shares: resources, the month partitions, and the per-month loop.

Resources:
    ``lake``   the lake root (:class:`lakehouse.io.lake.Lake`): every path and Delta read/write.
    ``spark``  this process's Spark session (local or Spark Connect), built once per process.
"""

from __future__ import annotations

import hashlib
import threading
import time
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pydantic import BaseModel
from pyspark.sql import SparkSession

from lakehouse import __version__, settings
from lakehouse.io.lake import Lake
from lakehouse.io.spark import session_conf, session_from_conf
from lakehouse.specs.models import Project, SourceSpec, StorageSpec
from lakehouse.specs.tables import TableRef


class LakeResource(dg.ConfigurableResource):
    """The lake root (a local path or ``s3://...``); the only way assets reach the lake's data.

    ``storage``: the ``storage:`` section of ``lakehouse.yaml`` — endpoint, region, options and the *names* of
    the credential variables (their values are read from the environment when the lake opens, so they never
    appear in the run's config).
    """

    root: str
    storage: dict[str, Any] = {}

    @property
    def lake(self) -> Lake:
        return Lake(self.root, StorageSpec(**self.storage), env=settings.env())


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
        "lake": LakeResource(root=project.lake_root, storage=project.lakehouse.storage.model_dump(exclude_none=True)),
        "spark": SparkResource(spark_config=session_conf(project.lakehouse.spark)),
    }


def monthly(project: Project, source: SourceSpec | None = None) -> dg.MonthlyPartitionsDefinition:
    """The month partitions of ``source`` (its own ``months`` if it declares them), else the lakehouse's."""
    months = project.months_of(source) if source is not None else project.lakehouse.months
    return dg.MonthlyPartitionsDefinition(start_date=months.start, end_date=months.end, fmt="%Y-%m")


def key(zone: str, table: str) -> dg.AssetKey:
    return dg.AssetKey([zone, table])


def table_key(name: str) -> dg.AssetKey:
    """The asset of a config's ``<zone>/<table>``."""
    return key(*TableRef.of(name))


def months_of(context: dg.AssetExecutionContext) -> list[str]:
    """The months of this run: one key, or every key of a backfilled range."""
    return list(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else []


def spec_version(*specs: BaseModel) -> str:
    """An asset's ``code_version``: a hash of the specs it is built from and of the package version, so
    editing a source's YAML (or upgrading the package) shows the asset's code as changed in the UI."""
    digest = hashlib.sha256(__version__.encode())
    for spec in specs:
        digest.update(spec.model_dump_json().encode())
    return f"{__version__}-{digest.hexdigest()[:12]}"


def escape_md(text: str) -> str:
    """Text from a config shown as Markdown: ``<device>`` stays visible instead of vanishing as an HTML tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def month_check_spec(
    name: str, asset: dg.AssetKey, partitions_def: dg.PartitionsDefinition, *, blocking: bool = False, description: str = ""
) -> dg.AssetCheckSpec:
    """A check with one result per month of ``asset`` (``AssetCheckSpec(partitions_def=...)``, a Dagster
    preview: its PreviewWarning is expected here and silenced only for this call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, blocking=blocking, description=description, partitions_def=partitions_def)


@dataclass
class Months:
    """What a run's months came to: the committed months' figures, the failed and the held months."""

    what: str
    months: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


#: materialization metadata key listing the blocking checks a month failed (read by :func:`held_months`)
BLOCKING_FAILED = "blocking_failed"


#: observation metadata key of a month a step held (read by :func:`held_months` further downstream)
HELD = "held"


def held_months(context: dg.AssetExecutionContext, upstream: Sequence[dg.AssetKey], months: Sequence[str]) -> dict[str, str]:
    """Months an ``upstream`` asset cannot vouch for: ``month -> why``.

    A month is held when the upstream month's latest materialization failed a blocking check
    (:data:`BLOCKING_FAILED`), or when the upstream step held that month itself since (an observation
    with :data:`HELD`). Dagster's own blocking stops a whole step; here a range goes on with the months
    whose inputs passed (see docs/operations.md). A month whose upstream was never materialized in this
    instance is not held: nothing says it failed.
    """
    held: dict[str, str] = {}
    for up in upstream:
        for month in months:
            where = dg.AssetRecordsFilter(asset_key=up, asset_partitions=[month])
            mats = context.instance.fetch_materializations(where, limit=1).records
            obs = context.instance.fetch_observations(where, limit=1).records
            latest = mats[0].storage_id if mats else -1
            if obs and obs[0].storage_id > latest and HELD in obs[0].asset_observation.metadata:
                held.setdefault(
                    month, f"held: {up.to_user_string()} {month} was held ({obs[0].asset_observation.metadata[HELD].value})"
                )
                continue
            failed = mats[0].asset_materialization.metadata.get(BLOCKING_FAILED) if mats else None
            names = list(failed.value) if failed is not None else []
            if names:
                held.setdefault(month, f"held: {up.to_user_string()} {month} failed blocking check(s) {', '.join(names)}")
    return held


#: computations of one month in one step when its inputs keep changing under it (see :func:`run_months`)
STALE_ATTEMPTS = 3


class StaleInputsError(RuntimeError):
    """A month's inputs changed while it was computed, on every attempt."""


def _fresh(
    context: dg.AssetExecutionContext,
    what: str,
    step: Callable[[str], dict[str, Any]],
    inputs: Callable[[str], Any] | None,
    month: str,
) -> dict[str, Any]:
    """``step(month)``, run again while ``inputs(month)`` changed during it (see :func:`run_months`)."""
    for _ in range(STALE_ATTEMPTS):
        before = inputs(month) if inputs else None
        figures = step(month)
        if inputs is None or inputs(month) == before:
            return figures
        context.log.warning(
            f"{what} {month}: its inputs changed while it was computed (a concurrent run landed or committed"
            " newer data); computing the month again from the new inputs"
        )
    raise StaleInputsError(
        f"{what} {month}: its inputs changed during each of {STALE_ATTEMPTS} attempts; the last commit may"
        " hold superseded data — materialize the month again once the concurrent runs are done"
    )


class _MonthRunner:
    """The months of one :func:`run_months` call as they are computed: each month's figures or failure,
    logged as it completes, with progress."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        what: str,
        step: Callable[[str], dict[str, Any]],
        inputs: Callable[[str], Any] | None,
        plan: Callable[[list[str]], PlanResults] | None,
        total: int,
        ordered: bool = False,
    ) -> None:
        self.context, self.what, self.step, self.inputs, self.plan, self.total = context, what, step, inputs, plan, total
        self.ordered = ordered
        self.results: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, BaseException] = {}
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def record(self, month: str, got: dict[str, Any] | BaseException, seconds: float) -> None:
        if isinstance(got, BaseException):
            with self.lock:
                self.failures[month] = got
            self.context.log.error(f"{self.what} {month}: {type(got).__name__}: {got}")
            return
        got["seconds"] = round(seconds, 2)
        with self.lock:
            self.results[month] = got
            done = len(self.results) + len(self.failures)
        elapsed = time.monotonic() - self.started
        left = f", ~{elapsed / done * (self.total - done):.0f}s left" if done < self.total else ""
        self.context.log.info(
            f"{self.what} {month} ({done}/{self.total}, {elapsed:.0f}s{left}): "
            + ", ".join(f"{k}={_short(v)}" for k, v in got.items() if _is_figure(v))
        )

    def one(self, month: str) -> None:
        """``month`` alone (its inputs checked for changes, see :func:`_fresh`)."""
        t0 = time.monotonic()
        try:
            got: dict[str, Any] | BaseException = _fresh(self.context, self.what, self.step, self.inputs, month)
        except Exception as exc:  # noqa: BLE001 - reported per month
            got = exc
        self.record(month, got, time.monotonic() - t0)

    def batch(self, chunk: list[str]) -> None:
        """``chunk`` in one plan (each month alone without a plan, or when the plan fails as a whole); a
        month whose inputs changed meanwhile is computed again alone, and when each month builds on the one
        before (``ordered``), so is every later month of the chunk, after it."""
        if self.plan is None or len(chunk) == 1:
            for month in chunk:
                self.one(month)
            return
        t0 = time.monotonic()
        before = {m: self.inputs(m) for m in chunk} if self.inputs else {}
        try:
            out = self.plan(chunk)
        except Exception as exc:  # noqa: BLE001 - each month is computed again alone below
            self.context.log.warning(
                f"{self.what} {chunk[0]}..{chunk[-1]}: the plan of {len(chunk)} months failed ({type(exc).__name__}:"
                f" {exc}); computing each month alone"
            )
            for month in chunk:
                self.one(month)
            return
        each = (time.monotonic() - t0) / len(chunk)
        again: str | None = None  # the month computed again that the later months of an ordered chunk build on
        for month in chunk:
            got = out.get(
                month, RuntimeError(f"{self.what} {month}: the plan of {chunk[0]}..{chunk[-1]} returned nothing for it")
            )
            if again is not None:
                self.context.log.warning(f"{self.what} {month}: computed again after {again}, which it builds on")
                self.one(month)
                continue
            if self.inputs and not isinstance(got, BaseException) and self.inputs(month) != before[month]:
                self.context.log.warning(
                    f"{self.what} {month}: its inputs changed while it was computed (a concurrent run landed or"
                    " committed newer data); computing the month again from the new inputs"
                )
                self.one(month)
                again = month if self.ordered else None
                continue
            self.record(month, got, each)


#: what a month plan returns for each month it was given: the month's figures, or why the month failed
PlanResults = Mapping[str, "dict[str, Any] | BaseException"]


def run_months(
    context: dg.AssetExecutionContext,
    step: Callable[[str], dict[str, Any]] | None,
    what: str,
    *,
    workers: int = 1,
    upstream: Sequence[dg.AssetKey] = (),
    inputs: Callable[[str], Any] | None = None,
    plan: Callable[[list[str]], PlanResults] | None = None,
    months_per_plan: int = 1,
    ordered: bool = False,
) -> Months:
    """Run ``step`` for each month of the run, each committing on its own.

    ``plan`` (instead of ``step``) computes up to ``months_per_plan`` consecutive months in one Spark plan
    and commits each of them on its own: a table whose months are independent pays the fixed cost of a
    Spark job and of planning once per batch of months instead of once per month. It returns each month's
    figures or the exception that month failed with. When the whole plan fails, each of its months is
    computed again alone (a plan of one month), so one bad month fails alone.

    ``inputs(month)`` identifies what the month is computed from (a landing manifest's version, the data
    files of an input table's month). It is read before and after the step's commit; when it changed, a
    concurrent run landed or committed newer inputs meanwhile and this commit may hold superseded data, so
    the month is computed again from the new inputs (up to :data:`STALE_ATTEMPTS` times, then it fails with
    :class:`StaleInputsError`). Whichever run commits last has read the newest inputs: the newest data wins.
    ``ordered``: each month of a plan builds on the one before (a merge view folds them into one table), so
    the months of the plan after one computed again are computed again too, after it.

    A month that fails does not stop the others; :func:`report` then reports the committed months (one
    materialization each, with that month's own figures) and fails the step naming every failed month.
    A month whose ``upstream`` month failed a blocking check is held (not run; :func:`held_months`).

    ``workers`` > 1 runs months (or batches of months) in that many threads sharing the process's Spark
    session, in month order (a month is a few small Spark jobs and Delta commits, so one month at a time
    leaves the cores mostly idle). Months that read each other's output must wait for it inside ``step``
    (see the trusted assets' ``_InOrder``). The first month (batch) runs alone: it creates the tables the
    others commit to. Commits to one table from several threads are retried when they lose a race
    (:meth:`lakehouse.io.lake.Lake._commit`); the content of every month is the same in any order.
    """
    if plan is not None:
        planned = plan

        def alone(month: str) -> dict[str, Any]:
            got = planned([month])[month]
            if isinstance(got, BaseException):
                raise got
            return got

        step = alone
    if step is None:
        raise TypeError("run_months needs a step or a plan")
    all_months = months_of(context)
    held = held_months(context, upstream, all_months) if upstream else {}
    for month, why in held.items():
        context.log.error(f"{what} {month}: {why}; the month is not processed")
    months = [m for m in all_months if m not in held]
    runner = _MonthRunner(context, what, step, inputs, plan, len(months), ordered)
    size = max(1, months_per_plan) if plan is not None else 1
    chunks = [months[i : i + size] for i in range(0, len(months), size)]
    if chunks:
        runner.batch(chunks[0])
    rest = chunks[1:]
    if workers > 1 and len(rest) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(rest)), thread_name_prefix="month") as pool:
            list(pool.map(runner.batch, rest))
    else:
        for chunk in rest:
            runner.batch(chunk)
    results, failures = runner.results, runner.failures
    return Months(
        what,
        all_months,
        {m: results[m] for m in months if m in results},
        {m: failures[m] for m in months if m in failures},
        held,
        time.monotonic() - runner.started,
    )


def report(
    context: dg.AssetExecutionContext,
    done: Months,
    *,
    checks: Mapping[str, Sequence[dg.AssetCheckResult]] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """The events of a monthly asset's step, in this order (the asset function ``yield from``s it):

    1. one materialization per committed month with that month's own figures (``rows``, ``delta_version``,
       ``dagster/row_count`` ...) plus ``metadata`` (the same for every month), and the month's blocking
       check failures under :data:`BLOCKING_FAILED`; range totals go to the run's log only;
    2. per month and check, one check evaluation of that partition (``checks``: month -> results), tied to
       the month's materialization. A failed blocking check does not fail the step: downstream assets hold
       that month only (:func:`held_months`), the other months go on;
    3. a step failure naming the failed and held months, if any (the held ones also as an observation
       of the month, so the months downstream of them are held in turn).
    """
    checks = checks or {}
    specs = {spec.name: spec for spec in context.assets_def.check_specs if spec.asset_key == context.asset_key}
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == context.asset_key}
    blocking = {n for n, s in specs.items() if s.blocking}
    per_month = _month_metadata(done, checks, blocking, metadata or {})
    if done.results:
        context.log.info(f"{done.what}: {summarize(done.results, done.seconds)}")
    if done.failures or done.held:
        # the months that committed are materialized (their Delta versions stand): report them before
        # failing, so the UI shows them done and only the failed months failed. (A range's output would
        # materialize every month of the range, the held ones too: so the step fails instead.)
        for month, meta in per_month.items():
            context.log_event(dg.AssetMaterialization(asset_key=context.asset_key, partition=month, metadata=meta))
        for month, why in done.held.items():
            context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=month, metadata={HELD: why}))
    elif done.results:
        for month, meta in per_month.items():
            context.add_asset_metadata(meta, partition_key=month)
        yield dg.MaterializeResult()
    _log_check_evaluations(context, done, checks, specs, selected)
    if done.failures or done.held:
        raise _failure(done) from next(iter(done.failures.values()), None)
    # check outputs: their results are the per-month evaluations above
    for name in sorted(selected):
        yield dg.Output(
            None, output_name=context.assets_def.get_output_name_for_asset_check_key(dg.AssetCheckKey(context.asset_key, name))
        )


def _fails_blocking(result: dg.AssetCheckResult, blocking: set[str]) -> bool:
    """A blocking check that failed with an error (a warning never holds a month)."""
    return result.check_name in blocking and not result.passed and result.severity == dg.AssetCheckSeverity.ERROR


def _month_metadata(
    done: Months, checks: Mapping[str, Sequence[dg.AssetCheckResult]], blocking: set[str], metadata: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each committed month's materialization metadata: its own figures, ``metadata``, the blocking checks
    it failed (:data:`BLOCKING_FAILED`) and its ``dagster/row_count``."""
    per_month = {}
    for month, figures in done.results.items():
        meta = {**{k: _md(v) for k, v in figures.items()}, **metadata}
        if blocking:
            meta[BLOCKING_FAILED] = sorted(r.check_name or "" for r in checks.get(month, ()) if _fails_blocking(r, blocking))
        if "rows" in figures and "dagster/row_count" not in figures:
            meta["dagster/row_count"] = int(figures["rows"])
        per_month[month] = meta
    return per_month


def _log_check_evaluations(
    context: dg.AssetExecutionContext,
    done: Months,
    checks: Mapping[str, Sequence[dg.AssetCheckResult]],
    specs: Mapping[str, dg.AssetCheckSpec],
    selected: set[str],
) -> None:
    """One evaluation per committed month and selected check, tied to the month's materialization of this run."""
    targets = _targets(context, list(done.results))
    blocking = {n for n, s in specs.items() if s.blocking}
    for month in done.results:
        for result in checks.get(month, ()):
            if result.check_name not in selected:
                continue
            if _fails_blocking(result, blocking):
                context.log.error(
                    f"{done.what} {month}: blocking check {result.check_name} failed: {result.description}; "
                    "downstream assets hold this month"
                )
            context.log_event(
                dg.AssetCheckEvaluation(
                    asset_key=context.asset_key,
                    check_name=result.check_name or "",
                    passed=result.passed,
                    metadata=result.metadata,
                    target_materialization_data=targets.get(month),
                    severity=result.severity,
                    description=result.description,
                    blocking=specs[result.check_name].blocking,
                    partition=month,
                )
            )


def _failure(done: Months) -> dg.Failure:
    """The step's failure naming every failed and held month."""
    problems = [f"{m}: {type(e).__name__}: {e}" for m, e in done.failures.items()]
    problems += [f"{m}: {why}" for m, why in done.held.items()]
    return dg.Failure(
        description=f"{done.what}: {len(done.failures) + len(done.held)} of {len(done.months)} month(s) failed: "
        + "; ".join(problems),
        metadata={
            "failed_months": sorted(done.failures),
            "held_months": sorted(done.held),
            "committed_months": sorted(done.results),
        },
    )


def _target_type() -> type:
    """The class of ``AssetCheckEvaluation.target_materialization_data``, which Dagster does not export.

    A per-partition evaluation is current (shown for the month, counted by ``all_deps_blocking_checks_passed``)
    only when it names the month's materialization; ``AssetCheckResult`` fills it in for one-partition
    runs only, so a range run builds it here, from the public class's type hints.
    """
    hint = typing.get_type_hints(dg.AssetCheckEvaluation)["target_materialization_data"]
    return next(arg for arg in typing.get_args(hint) if arg is not type(None))


def _targets(context: dg.AssetExecutionContext, months: list[str]) -> dict[str, Any]:
    """This run's materialization of each month (storage id, run, time), for its check evaluations."""
    if not months:
        return {}
    target = _target_type()
    out = {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=months), limit=len(months) * 4
    ).records
    for record in records:  # newest first
        if record.run_id == context.run.run_id and record.partition_key not in out:
            out[record.partition_key] = target(storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp)
    return out


def summarize(results: dict[str, dict[str, Any]], seconds: float) -> str:
    """A range's totals for the run's log (never onto a month's materialization)."""
    numeric = sorted({k for r in results.values() for k, v in r.items() if isinstance(v, int) and not isinstance(v, bool)})
    totals = ", ".join(f"{k}={sum(int(r.get(k, 0)) for r in results.values())}" for k in numeric if k != "delta_version")
    return f"{len(results)} month(s) in {seconds:.0f}s; totals: {totals}"


def _is_figure(value: Any) -> bool:
    return not isinstance(value, (dict, list, dg.TableMetadataValue, dg.MarkdownMetadataValue, dg.JsonMetadataValue))


def _short(value: Any) -> Any:
    """A metadata value as a progress line shows it (a path, not its repr)."""
    return value.value if isinstance(value, dg.MetadataValue) else value


def _md(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return dg.MetadataValue.json(value)
    return value
