"""Landing automation: an inbox sensor per file-drop source, a monthly schedule per periodic source.

Both start runs of one asset job per source, ``<source>_landing`` (the source's landing asset, monthly
partitioned); the zones downstream follow through the project's automation policy.

**Inbox sensor** ``<source>_inbox`` (every 30 s, running by default; switch it in the UI under
*Automation*). Which files a tick requests is decided by :func:`lakehouse.collectors.inbox.plan_tick`
(a cursor of the last file handled, sha256 of each new file against the landing manifest, files grouped
by the month in their name): **one run request per month**, ``partition_key`` = the month, ``run_key`` =
source + month + a digest of the files' names and sha256s. So:

* the same file never triggers twice (a re-touch without new bytes is recognised by its sha256);
* a late file for an old month re-triggers that month only;
* a file that comes back with new bytes triggers its month again (landing supersedes the old copy);
* a tick over 50,000 unchanged files costs one directory listing (see ``benchmarks/sensor_tick.py``).

Skipped files are counted in the tick's log.

**Schedules** ``<source>_monthly`` for every source with a ``schedule`` (cron, UTC) and a collector that
is not a file drop: each tick requests the source's landing run for the month that ended last — the
latest month partition at the tick's time (a monthly partition exists once its month is over). For a
snapshot source (the registry) that is the registry as of the month's end. When the partition range has
ended (``months.end`` in lakehouse.yaml), ticks are skipped with the reason shown in the UI. Schedules run
by default as well.
"""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from lakehouse import settings
from lakehouse.collectors.inbox import MAX_FILES_PER_TICK, SETTLE_SECONDS, InboxCursor, plan_tick
from lakehouse.factories.automation import run_tags
from lakehouse.factories.common import key, monthly
from lakehouse.specs.models import FileDropCollector, Project, SourceSpec

SENSOR_INTERVAL_SECONDS = 30
#: what ``dg.define_asset_job`` returns (an asset job resolved when the definitions load; Dagster does
#: not export its class)
LandingJob = Any


def run_key(source: str, month: str, files: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256("\n".join(f"{n}:{s}" for n, s in sorted(files)).encode()).hexdigest()[:16]
    return f"{source}:{month}:{digest}"


# -------------------------------------------------------------------------------------- definitions
def landing_job(project: Project, source: SourceSpec) -> LandingJob:
    return dg.define_asset_job(
        name=f"{source.name}_landing",
        selection=dg.AssetSelection.assets(key("landing", source.name)),
        description=f"Collect and land {source.name} for one month ({source.collector.type} collector).",
        tags={"zone": "landing", "source": source.name, **run_tags(project)},
    )


def build_inbox_sensor(
    project: Project,
    source: SourceSpec,
    job: LandingJob,
    *,
    settle_seconds: float = SETTLE_SECONDS,
    limit: int = MAX_FILES_PER_TICK,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """The inbox sensor of a file-drop ``source`` (each call builds exactly one sensor)."""
    spec = source.collector
    if not isinstance(spec, FileDropCollector):
        raise ValueError(f"source {source.name!r}: an inbox sensor needs a file_drop collector, not {spec.type!r}")
    inbox = project.resolve(spec.inbox)
    lake = settings.lake(project)
    partitions = monthly(project, source)
    months = project.months_of(source)

    def in_range(month: str) -> bool:
        return month >= months.start and (months.end is None or month < months.end)

    @dg.sensor(
        name=f"{source.name}_inbox",
        job=job,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=default_status,
        description=f"Watches {inbox} for {spec.pattern} and requests the landing of {source.name} "
        "for each month with new files (one run per month; the same file never twice).",
    )
    def _inbox(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = InboxCursor.parse(context.cursor)
        # the partition keys once per tick: has_partition_key costs milliseconds per call
        keys = frozenset(partitions.get_partition_keys())
        plan = plan_tick(
            source,
            inbox,
            lake,
            cursor,
            has_month=keys.__contains__,
            may_become_month=in_range,
            settle_seconds=settle_seconds,
            limit=limit,
        )
        context.log.info(f"{source.name} inbox {inbox}: {plan.summary()}")
        requests = [
            dg.RunRequest(
                run_key=run_key(source.name, month, files),
                partition_key=month,
                tags={
                    "lakehouse/trigger": "inbox",
                    "lakehouse/source": source.name,
                    "lakehouse/files": str(len(files)),
                    **run_tags(project),
                },
            )
            for month, files in sorted(plan.requests.items())
        ]
        if not requests:
            return dg.SensorResult(skip_reason=f"no new files: {plan.summary()}", cursor=plan.cursor.dump())
        return dg.SensorResult(run_requests=requests, cursor=plan.cursor.dump())

    return _inbox


def previous_month(when: datetime) -> str:
    """The month before the one ``when`` falls in (UTC)."""
    when = when.astimezone(UTC)
    year, month = (when.year - 1, 12) if when.month == 1 else (when.year, when.month - 1)
    return f"{year:04d}-{month:02d}"


def build_source_schedule(
    project: Project,
    source: SourceSpec,
    job: LandingJob,
    *,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING,
) -> dg.ScheduleDefinition:
    """The monthly schedule of a periodic ``source`` (each call builds exactly one schedule)."""
    if not source.schedule:
        raise ValueError(f"source {source.name!r}: no schedule")
    partitions = monthly(project, source)
    decorate = dg.schedule(
        name=f"{source.name}_monthly",
        cron_schedule=source.schedule,
        job=job,
        execution_timezone="UTC",
        default_status=default_status,
        description=f"Collects {source.name} for the month that ended last ({source.schedule}, UTC).",
    )

    def _monthly(context: dg.ScheduleEvaluationContext):
        when = context.scheduled_execution_time or datetime.now(UTC)
        # the partitions that exist at the tick's time: a month is a partition once it is over
        keys = partitions.get_partition_keys(current_time=when)
        month = keys[-1] if keys else None
        if month is None or month < previous_month(when):
            return dg.SkipReason(
                f"{source.name}: no partition for {previous_month(when)}, the month that ended last: the"
                f" partition range is {project.months_of(source).start}..{project.months_of(source).end or 'open'}"
                " (end exclusive, lakehouse.yaml months)"
            )
        return dg.RunRequest(
            run_key=f"{source.name}:{month}:{when.astimezone(UTC).isoformat(timespec='minutes')}",
            partition_key=month,
            tags={"lakehouse/trigger": "schedule", "lakehouse/source": source.name, **run_tags(project)},
        )

    try:  # Dagster validates the cron expression when it builds the schedule
        return decorate(_monthly)
    except dg.DagsterInvalidDefinitionError as exc:
        raise ValueError(f"source {source.name!r}: schedule {source.schedule!r} is not a valid cron expression") from exc


@dataclass
class LandingAutomation:
    jobs: list[LandingJob]
    sensors: list[dg.SensorDefinition]
    schedules: list[dg.ScheduleDefinition]


def build_source_automation(project: Project, source: SourceSpec) -> LandingAutomation:
    """The source's landing job, and its inbox sensor (a file drop) or monthly schedule (a periodic source)."""
    job = landing_job(project, source)
    out = LandingAutomation(jobs=[job], sensors=[], schedules=[])
    if source.collector.type == "file_drop":
        out.sensors.append(build_inbox_sensor(project, source, job))
    elif source.schedule:
        out.schedules.append(build_source_schedule(project, source, job))
    return out
