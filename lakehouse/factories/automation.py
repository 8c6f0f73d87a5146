"""Project-wide operating policy, applied in one place (:func:`lakehouse.factories.build_definitions`).

The zone factories build assets; this module decides how they run once built, for every asset at once
(``dg.map_asset_specs``), so no factory carries automation or freshness code:

- **Zone tables follow upstream** (``formatted``, ``trusted``, ``exploitation``): :func:`zone_condition`,
  ``AutomationCondition.eager()`` for *any* month (a late file for 2012-03 refreshes 2012-03 downstream,
  not only the latest month), on input updates only, and only once every blocking check of the inputs
  passed.
- **ML retrains on a cron** (:data:`ML_RETRAIN_CRON`): :func:`ml_condition`, when an input changed since
  the last tick, never while an input is being written, never past a failed blocking check.
- **Freshness**: every table of a source (landing, formatted, trusted) gets a
  ``FreshnessPolicy.time_window`` from the source's ``freshness.max_lag_hours``; the freshness daemon
  (``freshness: enabled`` in ``dagster.yaml``) evaluates it and the UI flags stale sources.
- **Run deadline**: every job, schedule and sensor of the project tags its runs with
  ``dagster/max_runtime`` = ``limits.run_max_runtime_s`` (:func:`run_tags`); the run monitoring daemon
  (``run_monitoring: enabled`` in ``dagster.yaml``) cancels a run that outlives it.
- **Backfills**: zone assets run a range of months in one run (``BackfillPolicy.single_run()``, one Spark
  start); ``months_per_run`` switches them to ``BackfillPolicy.multi_run(n)``.

Why this does not flood the instance with catch-up runs when the sensor is (re-)enabled: the zone
condition reacts only to *updates* of an input since the previous tick, never to months that are merely
missing (so a first tick on a half-filled lake requests nothing); the cron condition only considers the
latest tick; and one tick's requests for several months become one backfill (``emit_backfills``) that
``single_run`` executes as one run per asset range. Updates that happened while the sensor was stopped
are picked up once on its next tick (the cursor is kept), as that one backfill.
"""

import datetime as dt
from collections.abc import Sequence

import dagster as dg

from lakehouse.specs.models import Project

AUTOMATION_SENSOR = "lakehouse_automation"
#: when ML pipelines may retrain: Mondays 04:00 UTC, if their inputs changed since the last tick
ML_RETRAIN_CRON = "0 4 * * 1"
#: zones whose tables follow their inputs eagerly (landing is driven by sensors and schedules)
EAGER_ZONES = ("formatted", "trusted", "exploitation")
#: tables that carry their source's freshness policy
FRESHNESS_ZONES = ("landing", "formatted", "trusted")


def run_tags(project: Project) -> dict[str, str]:
    """The tags every run of the project carries: its maximum runtime, enforced by Dagster's run monitoring."""
    return {dg.MAX_RUNTIME_SECONDS_TAG: str(project.lakehouse.limits.run_max_runtime_s)}


def zone_condition() -> dg.AutomationCondition:
    """``eager()`` minus its two catch-up parts, plus the blocking-check gate.

    ``eager()`` = latest time window & (newly missing | any dep updated) since last handled & no dep
    missing or in progress & not in progress. Here: every month (not only the latest), only updates of
    an input trigger (a month that was never materialized is a backfill's job, not automation's: on the
    sensor's first tick ``newly_missing`` would request every such month), and only once every blocking
    check of the inputs passed.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("eager (any month, updates only, after blocking checks)")


def ml_condition(cron: str = ML_RETRAIN_CRON) -> dg.AutomationCondition:
    """Retrain once per ``cron`` tick when an input changed since the model was last built.

    Not ``on_cron()``: that waits for every input to update *after* the tick, so data that arrived
    before Monday 04:00 would wait a week. Both parts are "since last handled" (reset when the model is
    requested or materialized, and on the sensor's first tick), so a sensor re-enabled after five weeks
    requests one retrain, not five.
    """
    tick: dg.AutomationCondition = dg.AutomationCondition.cron_tick_passed(cron)
    return (
        tick.since_last_handled()
        & dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label(f"retrain on cron ({cron}) after input changes")


def freshness_policy(max_lag_hours: float) -> dg.FreshnessPolicy:
    """Fail once nothing landed for ``max_lag_hours``; warn at half of it (when that is ≥ 1 minute)."""
    fail = dt.timedelta(hours=max_lag_hours)
    warn = fail / 2
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn if warn >= dt.timedelta(minutes=1) else None)


def freshness_policies(project: Project) -> dict[dg.AssetKey, dg.FreshnessPolicy]:
    return {
        dg.AssetKey([zone, source.name]): freshness_policy(source.freshness.max_lag_hours)
        for source in project.sources
        for zone in FRESHNESS_ZONES
    }


def apply_policy(
    project: Project,
    assets: Sequence[dg.AssetsDefinition],
    *,
    months_per_run: int | None = None,
) -> list[dg.AssetsDefinition]:
    """``assets`` with the project's automation conditions, freshness policies and backfill policy.

    A condition or policy a factory set explicitly is kept (the factory knows better).
    """
    fresh = freshness_policies(project)

    def policy(spec: dg.AssetSpec) -> dg.AssetSpec:
        zone = spec.key.path[0]
        updates: dict = {}
        if spec.automation_condition is None:
            if zone == "ml":
                updates["automation_condition"] = ml_condition()
            elif zone in EAGER_ZONES and spec.deps:
                updates["automation_condition"] = zone_condition()
        if spec.freshness_policy is None and spec.key in fresh:
            updates["freshness_policy"] = fresh[spec.key]
        return spec.replace_attributes(**updates) if updates else spec

    mapped = list(dg.map_asset_specs(policy, assets))
    if months_per_run is None:
        return mapped
    if months_per_run < 1:
        raise ValueError(f"months_per_run must be >= 1, got {months_per_run}")
    multi = dg.BackfillPolicy.multi_run(max_partitions_per_run=months_per_run)
    return [a.with_attributes(backfill_policy=multi) if a.partitions_def is not None else a for a in mapped]


def automation_sensor(project: Project) -> dg.AutomationConditionSensorDefinition:
    """Evaluates every asset's condition every 30 s; on by default (switchable in the UI)."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        emit_backfills=True,
        run_tags={"lakehouse/trigger": "automation", **run_tags(project)},
        description="Zone tables follow their inputs (eager, any month, after blocking checks); ML "
        f"retrains on {ML_RETRAIN_CRON} (cron, UTC) when its inputs changed. See docs/operations.md.",
    )
