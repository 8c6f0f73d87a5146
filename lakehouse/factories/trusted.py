"""Trusted assets: ``trusted/<source>``, the formatted table after the source's quality rules and cleaning.

Per month: the rules and cleaning steps of ``quality:`` run in Spark (:mod:`lakehouse.quality.cleaning`);
rejected and merged rows are appended to ``quality/quarantine``, changed cells to ``quality/repairs``, the
month's assessment to ``quality/metrics``. Every rule and step is an asset check of the partition
(blocking for ``fail`` rules), plus ``conservation`` (blocking: formatted = trusted - imputed +
quarantined + merged, counted on what was written), ``rejected_rate`` (blocking: the share of rows the
month quarantined against the source's ``max_rejected_rate``) and ``pandera_schema`` (blocking). Each
check has one result per month; a month that fails a blocking check holds that month downstream only.
"""

import threading
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from lakehouse.collectors.landing import Month, received_times
from lakehouse.factories.checks import (
    PANDERA,
    failing_rows_in,
    merge_results,
    pandera_results,
    pandera_spec,
    rejected_rate_result,
    rejected_rate_spec,
    validate_written,
    verdict_results,
)
from lakehouse.factories.common import (
    LakeResource,
    Months,
    SparkResource,
    escape_md,
    key,
    month_check_spec,
    monthly,
    months_of,
    report,
    run_months,
    spec_version,
)
from lakehouse.factories.schema import column_schema, derived_lineage
from lakehouse.io.lake import Lake
from lakehouse.quality import metrics, quarantine, repairs, schemas
from lakehouse.quality.cleaning import (
    EXACT_DUPLICATE,
    MONTH,
    CleanResult,
    Staging,
    clean_month,
    clean_months,
    history_columns,
    history_months_of,
    one_plan,
    validate_quality,
)
from lakehouse.quality.constraints import CompiledRule
from lakehouse.specs.models import Project, ReferenceSpec, RulesStep, SourceSpec
from lakehouse.specs.tables import TableRef
from lakehouse.transforms.parse import LINE_COL


def _check_specs(project: Project, source: SourceSpec, rules: list[CompiledRule]) -> list[dg.AssetCheckSpec]:
    asset, months = key("trusted", source.name), monthly(project, source)
    specs = []
    if source.quality.drop_exact_duplicates:
        specs.append(
            month_check_spec(EXACT_DUPLICATE, asset, months, description="Rows identical in every column (merged, first kept).")
        )
    for cr in rules:
        r = cr.spec
        specs.append(
            month_check_spec(
                r.name,
                asset,
                months,
                blocking=r.action == "fail",
                # plain text in the UI's check table (Markdown only on the check's overview): not escaped
                description=f"[{r.action}] {r.description or ''} — denies: {cr.describe()}".strip(),
            )
        )
    for step in source.quality.cleaning:
        if isinstance(step, RulesStep):
            continue
        action = getattr(step, "action", "repair")
        specs.append(
            month_check_spec(step.name, asset, months, description=f"[{step.step}, {action}] {step.description}".strip())
        )
    specs.append(
        month_check_spec(
            "conservation",
            asset,
            months,
            blocking=True,
            description="No row lost: formatted rows = trusted rows - imputed + quarantined + merged, read back from the written tables.",
        )
    )
    specs.append(rejected_rate_spec(asset, months, source.max_rejected_rate, "trusted"))
    specs.append(pandera_spec(asset, months, blocking=True))
    return specs


def history_months(source: SourceSpec) -> int:
    """How many trusted months before a month its unit steps compare with, at least one when a rule reads
    the previous row of a series (``prev.``: a series' first row of the month has its previous row in the
    month before); 0: none, the months are independent."""
    previous = any(cr.series is not None for cr in validate_quality(source))
    return max(history_months_of(source), 1 if previous else 0)


def _history(root: Lake, source: SourceSpec, month: str) -> list[str] | None:
    """The trusted months before ``month`` that unit steps compare with and ``prev.`` rules continue from
    (None if there are none)."""
    return _reads(root, source, [month])[month] or None


def _history_rows(root: Lake, session, source: SourceSpec, months: list[str]):
    """The columns the cleaning reads of the trusted ``months``, and their month, as a Spark DataFrame (the
    unit step aggregates them per series in Spark)."""
    rows = root.read_spark(session, "trusted", source.name, months=months)
    return rows.select(*dict.fromkeys([*history_columns(source), MONTH]))


def _reads(root: Lake, source: SourceSpec, months: list[str]) -> dict[str, list[str]]:
    """For each of ``months`` (one plan), the months before it its unit steps compare with: as in a run month
    by month, the last ``history_months`` of the written months and the plan's months before it."""
    n = history_months(source)
    written = root.months("trusted", source.name) if n and root.exists("trusted", source.name) else []
    return {m: sorted({k for k in [*written, *months] if k < m})[-n:] if n else [] for m in months}


class _InOrder:
    """Months of a source whose unit step reads the trusted months before it, run in overlapping threads.

    A month may read its formatted rows, merge duplicates and standardize while the month before it is
    still cleaning; it reads its history only once every earlier month of the run has written its trusted
    rows, so each month sees exactly what a one-by-one run would show it. A month that fails still lets
    the next one go on (with the history it would have had in a one-by-one run).
    """

    def __init__(self, months: list[str]) -> None:
        self._written = {m: threading.Event() for m in months}
        self._before = dict(zip(months[1:], months, strict=False))

    def wait_for_earlier(self, month: str) -> None:
        if month in self._before:
            self._written[self._before[month]].wait()

    def written(self, month: str) -> None:
        """``month``'s trusted rows are written (or it failed): the next month may read its history."""
        self.wait_for_earlier(month)
        self._written[month].set()


def _reference_months(ref: ReferenceSpec, month: str, available: list[str]) -> list[str]:
    if ref.months == "same":
        return [month] if month in available else []
    if ref.months == "all":
        return available
    return [m for m in available if m <= month][-1:]


def _references(root: Lake, session, source: SourceSpec, months: list[str]) -> dict[str, dict[str, DataFrame]]:
    """Rule → month → the rows its reference rule reads in that month (a month whose referenced table has
    no month for it is left out). Months reading the same snapshot share one read."""
    out: dict[str, dict[str, DataFrame]] = {}
    read: dict[tuple, DataFrame] = {}
    for rule in source.quality.rules:
        if rule.reference is None:
            continue
        zone, table = TableRef.of(rule.reference.table)
        if not root.exists(zone, table):
            continue
        available = root.months(zone, table)
        for month in months:
            wanted = _reference_months(rule.reference, month, available)
            if wanted:
                if (zone, table, *wanted) not in read:
                    read[zone, table, *wanted] = root.read_spark(session, zone, table, months=wanted)
                out.setdefault(rule.name, {})[month] = read[zone, table, *wanted]
    return out


def conservation(root: Lake, source: SourceSpec, month: str, batch: metrics.Batch) -> metrics.Conservation:
    """The conservation figures of ``month``, counted on what is stored (not from the computation)."""
    formatted = root.count_rows("formatted", source.name, month)
    trusted = root.count_rows("trusted", source.name, month)
    imputed = root.count_rows("trusted", source.name, month, null=LINE_COL)
    mine = {"batch_id": batch.batch_id}
    rejected = root.count_rows(*quarantine.TABLE, month, where={**mine, "disposition": quarantine.REJECTED})
    merged = root.count_rows(*quarantine.TABLE, month, where={**mine, "disposition": quarantine.MERGED})
    return metrics.Conservation(formatted, trusted, imputed, rejected, merged)


@dataclass(frozen=True)
class _Committed:
    """A month whose trusted rows are committed, to be published: its batch, cleaning result and version."""

    month: str
    batch: metrics.Batch
    result: CleanResult
    version: int


class _TrustedMonths:
    """One run of ``source``'s trusted asset: each month cleaned and committed, and what the run's checks
    need of it afterwards (its verdicts, its batch and its rejected-rate result)."""

    def __init__(
        self, context: dg.AssetExecutionContext, root: Lake, session: SparkSession, source: SourceSpec, *, ordered: bool
    ) -> None:
        self.context, self.root, self.session, self.source = context, root, session, source
        self.path = root.table_uri("trusted", source.name)
        self.verdicts: dict[str, list[metrics.CheckEval]] = {}
        self.batches: dict[str, metrics.Batch] = {}
        self.rates: dict[str, dg.AssetCheckResult] = {}
        self.in_order = _InOrder(months_of(context)) if ordered else None

    def step(self, month: str) -> dict:
        try:
            return self._cleaned(month)
        finally:
            if self.in_order is not None:
                self.in_order.written(month)

    def plan(self, months: list[str]) -> dict[str, dict | BaseException]:
        """``months`` (consecutive) cleaned in one Spark plan (:func:`lakehouse.quality.cleaning.clean_months`),
        then each month's trusted rows committed on its own, and the committed months published together
        (:meth:`_publish`): each month's figures, or why it failed. The months the plan leaves to be cleaned
        again (a unit step decided otherwise on exact histories) are cleaned one by one after the others, and
        so are, for a source reading earlier months, the months after one whose trusted rows were not
        committed (they were computed on its rows); they are published with the others. One month:
        :meth:`step`."""
        if len(months) == 1:
            return {months[0]: self.step(months[0])}
        root, source = self.root, self.source
        batches = {m: self._batch(m) for m in months}
        reads = _reads(root, source, months)
        written = sorted({k for ks in reads.values() for k in ks} - set(months))
        results = clean_months(
            root.read_spark(self.session, "formatted", source.name, months=months),
            source,
            stagings={m: self._staging(batches[m]) for m in months},
            history=_history_rows(root, self.session, source, written) if written else None,
            reads=reads,
            references=_references(root, self.session, source, months),
            received={m: self._received(m) for m in months},
        )
        out: dict[str, dict | BaseException] = {}
        committed: list[_Committed] = []
        again = False
        for month in months:
            try:
                if again or month not in results:
                    if not again:
                        self.context.log.info(
                            f"trusted/{source.name} {month}..{months[-1]}: cleaned again one month at a time"
                            " (a unit step decides otherwise on the exact history, or an earlier month failed)"
                        )
                    again = True
                    batch = self._batch(month)
                    committed.append(self._commit_data(month, batch, self._clean(month, batch)))
                else:
                    committed.append(self._commit_data(month, batches[month], results[month]))
            except Exception as exc:  # noqa: BLE001 - the month fails alone (run_months reports it)
                out[month] = exc
                again = again or history_months(source) > 0
        return {**out, **self._publish(committed)}

    def _batch(self, month: str) -> metrics.Batch:
        return metrics.Batch.new(dataset=self.source.name, stage="trusted", month=month, run_id=self.context.run.run_id)

    def _received(self, month: str) -> dict[str, str]:
        """When each of the month's landed files was received (the landing manifest)."""
        landing = Month(self.root.storage, self.root.table_uri("landing", self.source.name))
        return received_times(landing, month, spans_months=self.source.spans_months)

    def _staging(self, batch: metrics.Batch) -> Staging:
        root = self.root
        return Staging(root.storage, self.path, root.table_uri(*quarantine.TABLE), root.table_uri(*repairs.TABLE), batch)

    def _earlier_rows(self, month: str):
        if self.in_order is not None:
            self.in_order.wait_for_earlier(month)
        earlier = _history(self.root, self.source, month)
        return None if earlier is None else _history_rows(self.root, self.session, self.source, earlier)

    def _clean(self, month: str, batch: metrics.Batch) -> CleanResult:
        """The month's rules and cleaning steps: Spark's tasks write the month's trusted, quarantine and
        repairs files; the driver gets the file lists and the figures."""
        root, source = self.root, self.source
        formatted = root.read_spark(self.session, "formatted", source.name, months=[month])
        return clean_month(
            formatted,
            source,
            month=month,
            staging=self._staging(batch),
            history=lambda: self._earlier_rows(month),
            references={rule: rows[month] for rule, rows in _references(root, self.session, source, [month]).items()},
            received=self._received(month),
        )

    def _cleaned(self, month: str) -> dict:
        """Clean ``month``, commit its tables and publish its assessment: the month's figures."""
        batch = self._batch(month)
        got = self._publish([self._commit_data(month, batch, self._clean(month, batch))])[month]
        if isinstance(got, BaseException):
            raise got
        return got

    def _commit_data(self, month: str, batch: metrics.Batch, result: CleanResult) -> _Committed:
        """Commit a cleaned month's trusted rows (its quarantine, repairs and assessment follow in
        :meth:`_publish`)."""
        version = self.root.commit_month("trusted", self.source.name, month, result.staged["trusted"], result.trusted_schema)
        if self.in_order is not None:
            self.in_order.written(month)
        for note in result.notes:
            self.context.log.info(f"trusted/{self.source.name} {month}: {note}")
        return _Committed(month, batch, result, version)

    def _publish(self, committed: list[_Committed]) -> dict[str, dict | BaseException]:
        """Publish the months whose trusted rows are ``committed``: their quarantine rows in one commit and
        their repairs in one, then each month's checks on what was written, then one metrics commit with
        every assessed month's figures and publish row (the rows written last: see quality.metrics). Each
        month's figures, or why it failed (a month not published keeps its data unpublished; a rerun
        publishes it)."""
        if not committed:
            return {}
        out: dict[str, dict | BaseException] = {}
        try:
            quarantine.commit(self.root, {c.batch: c.result.staged["quarantine"] for c in committed})
            repairs.commit(self.root, {c.batch: c.result.staged["repairs"] for c in committed})
        except Exception as exc:  # noqa: BLE001 - reported per month by run_months
            return {c.month: exc for c in committed}
        assessed: dict[str, tuple[_Committed, list[metrics.CheckEval], dg.AssetCheckResult, pa.Table]] = {}
        for c in committed:
            try:
                assessed[c.month] = (c, *self._assess(c))
            except Exception as exc:  # noqa: BLE001 - the month fails alone, the others are published
                out[c.month] = exc
        marks = {c.batch: sum(f["rows"] for f in c.result.staged["quarantine"]) for c, *_ in assessed.values()}
        try:
            metrics.publish(self.root, marks, pa.concat_tables([rows for *_, rows in assessed.values()]) if marks else None)
        except Exception as exc:  # noqa: BLE001 - reported per month by run_months
            return {**out, **dict.fromkeys(assessed, exc)}
        for month, (c, checks, rate, _) in assessed.items():
            self.verdicts[month], self.rates[month], self.batches[month] = checks, rate, c.batch
            out[month] = self._figures(c, metrics.summary_rows(c.result, checks))
        return out

    def _figures(self, c: _Committed, summary: list[dict]) -> dict:
        """A published month's figures."""
        result = c.result
        return {
            "rows": sum(f["rows"] for f in result.staged["trusted"]),
            "rows_in": result.counts["rows_in"],
            "rows_quarantined": result.counts["rows_rejected"],
            "rows_merged": result.counts["rows_merged"],
            "rows_imputed": result.counts["rows_imputed"],
            "cells_repaired": result.cells_repaired,
            "delta_version": c.version,
            "path": dg.MetadataValue.path(self.path),
            "checks": dg.MetadataValue.table([dg.TableRecord(r) for r in summary], schema=SUMMARY_SCHEMA),
        }

    def _assess(self, c: _Committed) -> tuple[list[metrics.CheckEval], dg.AssetCheckResult, pa.Table]:
        """A committed month's checks on what was written (its quarantine rows committed too): its
        verdicts, its rejected-rate result and its metric rows (to publish)."""
        cons = conservation(self.root, self.source, c.month, c.batch)
        checks = metrics.evaluate(c.result, cons)
        rate = rejected_rate_result(
            rejected=c.result.counts["rows_rejected"],
            total=c.result.counts["rows_in"],
            kept=cons.trusted_rows - cons.imputed_rows,
            limit=self.source.max_rejected_rate,
        )
        return checks, rate, metrics.rows(c.batch, metrics.figures(c.result, cons, checks))

    def check_results(self, done: Months, contract) -> dict[str, list[dg.AssetCheckResult]]:
        """Every committed month's check results, the pandera schema's included (its figures appended to
        the month's metrics)."""
        months = list(done.results)
        checks = merge_results(verdict_results({m: self.verdicts[m] for m in months}), {m: [self.rates[m]] for m in months})
        if not months:
            return checks
        report_ = validate_written(self.session, self.root, "trusted", self.source.name, months, contract)
        checks = merge_results(checks, pandera_results(report_, months, {m: done.results[m]["rows"] for m in months}))
        pandera_rows = []
        for month in months:
            failing = failing_rows_in(report_, month)
            pandera_rows.append(
                metrics.rows(
                    self.batches[month],
                    [
                        ("check_passed", PANDERA, None, 0.0 if failing else 1.0),
                        ("pandera_failing_rows", PANDERA, None, failing),
                    ],
                )
            )
        metrics.append(self.root, pa.concat_tables(pandera_rows))
        return checks


def _months_per_plan(project: Project, root: Lake, source: SourceSpec, months: list[str]) -> int:
    """How many of a run's months are cleaned in one plan: ``months_per_plan`` (none but one for a source
    with a ``prev.`` rule), fewer when the months' formatted rows average more than ``rows_per_plan``
    divided by it (a large month's cost is its rows; one plan of several would only hold more at once)."""
    if not one_plan(source) or not months:
        return 1
    settings_ = project.lakehouse
    rows = root.month_rows("formatted", source.name, months) if root.exists("formatted", source.name) else None
    average = sum(rows.values()) / len(months) if rows else 0
    return max(
        1, min(settings_.months_per_plan, int(settings_.rows_per_plan // average) if average else settings_.months_per_plan)
    )


def _description(source: SourceSpec, compiled: list[CompiledRule]) -> str:
    """The asset's description: where its rows go, its rules and cleaning steps."""
    rules = "\n".join(f"- `{cr.name}` ({cr.spec.action}): {escape_md(cr.spec.description or cr.describe())}" for cr in compiled)
    steps = "\n".join(
        f"- `{s.name}` ({s.step}): {escape_md(s.description)}" for s in source.quality.cleaning if not isinstance(s, RulesStep)
    )
    return (
        f"`{source.name}` after quality rules and cleaning; rejected rows are in "
        f"`quality/quarantine`, changed cells in `quality/repairs`, the assessment in `quality/metrics`."
        f"\n\nRules:\n{rules or '- none declared'}\n\nCleaning:\n{steps or '- none declared'}"
    )


def build_trusted_asset(project: Project, source: SourceSpec) -> dg.AssetsDefinition:
    """The trusted asset of ``source`` (each call builds exactly one asset)."""
    compiled = validate_quality(source)  # a rule or step that does not fit the table fails at load time
    # reference rules read whatever the referenced table holds when the month runs ("not evaluated" when
    # nothing): a soft dependency, kept out of the graph so a late registry never holds readings back
    references = sorted({r.reference.table for r in source.quality.rules if r.reference is not None})
    contract = schemas.source_contract(source, "trusted")
    # a unit step (or a prev. rule) reads the trusted months before a month: those months must be written
    # first, so such a source's months overlap only up to the unit step (_InOrder), two at a time; any
    # other source's months are independent
    ordered = history_months(source) > 0

    @dg.asset(
        key=key("trusted", source.name),
        deps=[key("formatted", source.name)],
        group_name="trusted",
        description=_description(source, compiled),
        partitions_def=monthly(project, source),
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"spark", "delta"},
        tags={"zone": "trusted"},
        code_version=spec_version(source),
        metadata={
            "dagster/column_schema": column_schema(source.trusted_columns),
            **({"dagster/column_lineage": lineage} if (lineage := derived_lineage(source)) else {}),
            **({"reference_tables": references} if references else {}),
        },
        check_specs=_check_specs(project, source, compiled),
    )
    def _trusted(context: dg.AssetExecutionContext, lake: LakeResource, spark: SparkResource):
        root = lake.lake
        per_plan = _months_per_plan(project, root, source, months_of(context))
        # the batches of a source reading earlier months run one after the other; its months one by one,
        # two at a time
        workers = (
            project.lakehouse.month_workers if not ordered else 1 if per_plan > 1 else min(2, project.lakehouse.month_workers)
        )
        run = _TrustedMonths(context, root, spark.session(), source, ordered=ordered and workers > 1)
        done = run_months(
            context,
            None,
            f"trusted/{source.name}",
            workers=workers,
            upstream=[key("formatted", source.name)],
            inputs=lambda month: root.month_files("formatted", source.name, [month]),
            plan=run.plan,
            months_per_plan=per_plan,
            ordered=ordered,
        )
        yield from report(context, done, checks=run.check_results(done, contract))

    return _trusted


SUMMARY_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in metrics.SUMMARY_COLUMNS])
