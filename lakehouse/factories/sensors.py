"""Landing automation: an inbox sensor per file-drop source, a monthly schedule per periodic source.

Both start runs of one asset job per source, ``<source>_landing`` (the source's landing asset, monthly
partitioned); the zones downstream follow through the project's automation policy.

**Inbox sensor** ``<source>_inbox`` (every 30 s, running by default; switch it in the UI under
*Automation*). A tick lists the inbox once (``os.scandir`` + one ``stat`` per entry, no reads) and only
looks further at files changed since the cursor. The cursor is the high-water mark ``(change time, name)``
of the last file handled — change time = ``max(mtime, ctime)``, and ``ctime`` is set by the kernel on every
write or rename, so a file copied in with an old ``mtime`` still counts as new. Files are handled in that
order, at most :data:`MAX_FILES_PER_TICK` per tick (a backlog drains over a few ticks, each tick stays
short), and files changed in the last ``settle_seconds`` wait for the next tick (a writer may still be busy).

Each new file is hashed (sha256) and skipped when these exact bytes have already landed under that name
(the month's landing manifest is the truth) or were already requested and not landed yet (a small
per-name sha cache in the cursor, pruned once the manifest lists them). The remaining files are grouped
by the month in their name: **one run request per month**, ``partition_key`` = the month, ``run_key`` =
source + month + a digest of the files' names and sha256s. So:

* the same file never triggers twice (a re-touch without new bytes is recognised by its sha256);
* a late file for an old month re-triggers that month only;
* a file that comes back with new bytes triggers its month again (landing supersedes the old copy);
* a tick over 50,000 unchanged files costs one directory listing (see ``benchmarks/sensor_tick.py``).

Names without a month, or with a month outside the partition range, are skipped and counted in the
tick's log. A file for a month that is still running (in the range, but a monthly partition exists only
once its month is over) is remembered in the cursor and requested on the first tick after the month ends. The cursor assumes the inbox is a local filesystem whose clock does not run backwards.

**Schedules** ``<source>_monthly`` for every source with a ``schedule`` (cron, UTC) and a collector that
is not a file drop: each tick requests the source's landing run for the month that ended last — the
latest month partition at the tick's time (a monthly partition exists once its month is over). For a
snapshot source (the registry) that is the registry as of the month's end. When the partition range has
ended (``months.end`` in lakehouse.yaml), ticks are skipped with the reason shown in the UI. Schedules run
by default as well.
"""

import fnmatch
import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from lakehouse import settings
from lakehouse.collectors.file_drop import file_month
from lakehouse.collectors.landing import read_manifest, safe_name, sha256_file
from lakehouse.factories.automation import run_tags
from lakehouse.factories.common import key, monthly
from lakehouse.io.lake import Lake
from lakehouse.specs.models import FileDropCollector, Project, SourceSpec

#: files handled per tick at most; a bigger backlog drains over the next ticks
MAX_FILES_PER_TICK = 10_000
#: requested-but-not-landed files remembered in the cursor at most (older ones fall back on the manifest)
MAX_PENDING = 2_000
SENSOR_INTERVAL_SECONDS = 30
SETTLE_SECONDS = 1.0
#: what ``dg.define_asset_job`` returns (an asset job resolved when the definitions load; Dagster does
#: not export its class)
LandingJob = Any


# ------------------------------------------------------------------------------------------ the scan
@dataclass
class InboxCursor:
    """Where the previous tick stopped, and what it requested that has not landed yet."""

    changed_ns: int = -1
    name: str = ""
    #: name -> [sha256, month] of files requested but not yet seen in the landing manifest
    pending: dict[str, list[str]] = field(default_factory=dict)
    #: name -> month of files whose month is in the range but not a partition yet (still running)
    deferred: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "InboxCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            changed_ns=int(data["changed_ns"]),
            name=str(data["name"]),
            pending=dict(data.get("pending", {})),
            deferred=dict(data.get("deferred", {})),
        )

    def dump(self) -> str:
        data = {"changed_ns": self.changed_ns, "name": self.name, "pending": self.pending, "deferred": self.deferred}
        return json.dumps(data, separators=(",", ":"))


@dataclass
class TickPlan:
    """What one tick found: files per month to request, the next cursor, and counts for the log."""

    requests: dict[str, list[tuple[str, str]]]
    cursor: InboxCursor
    listed: int = 0
    changed: int = 0
    hashed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    backlog: int = 0

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()) if n) or "none"
        months = ", ".join(f"{m} ({len(f)} file(s))" for m, f in sorted(self.requests.items())) or "none"
        return (
            f"listed {self.listed} inbox files, {self.changed} changed since the cursor, hashed {self.hashed};"
            f" skipped: {skipped}; months requested: {months}"
            + (f"; {self.backlog} more changed file(s) left for the next tick" if self.backlog else "")
        )


def changed_files(spec: FileDropCollector, inbox: Path, after: tuple[int, str]) -> tuple[int, list[tuple[int, str]]]:
    """How many files match the inbox pattern, and those changed after ``after`` as ``(change_ns, name)``."""
    listed = 0
    out: list[tuple[int, str]] = []
    matches = re.compile(fnmatch.translate(spec.pattern)).match  # compiled once per tick, not per name
    try:
        entries = os.scandir(inbox)
    except FileNotFoundError:
        return 0, []
    with entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(".part") or not matches(name):
                continue
            try:
                # a symlink is listed (never followed) so that its landing run records the refusal
                if not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while listing
                continue
            listed += 1
            changed = max(st.st_mtime_ns, st.st_ctime_ns)
            if (changed, name) > after:
                out.append((changed, name))
    out.sort()
    return listed, out


def plan_tick(
    source: SourceSpec,
    inbox: Path,
    lake: Lake,
    cursor: InboxCursor,
    *,
    has_month,
    may_become_month=None,
    now_ns: int | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    limit: int = MAX_FILES_PER_TICK,
) -> TickPlan:
    """Decide one tick of ``source``'s inbox sensor (pure apart from reading the inbox and manifests).

    ``has_month(month)``: the month is a partition now. ``may_become_month(month)``: it is not yet but
    will be (the month is still running); such files are remembered in the cursor and requested once
    their month is a partition. Other months are skipped for good.
    """
    spec = source.collector
    assert isinstance(spec, FileDropCollector)
    now_ns = time.time_ns() if now_ns is None else now_ns
    has_month = functools.cache(has_month)  # asked once per month, not once per file
    listed, changed = changed_files(spec, inbox, (cursor.changed_ns, cursor.name))
    settled = [c for c in changed if c[0] <= now_ns - int(settle_seconds * 1e9)]
    batch, backlog = settled[:limit], len(changed) - min(len(settled), limit)
    pending = dict(cursor.pending)
    manifests: dict[str, set[tuple[str, str]]] = {}

    def landed(month: str) -> set[tuple[str, str]]:
        if month not in manifests:
            entries = read_manifest(lake.landing_month(source.name, month))
            manifests[month] = {(e.name, e.sha256) for e in entries if e.status == "landed"}
        return manifests[month]

    # forget requests whose files have landed since
    for name, (sha, requested) in list(pending.items()):
        if (safe_name(name), sha) in landed(requested):
            del pending[name]

    plan = TickPlan(requests={}, cursor=cursor, listed=listed, changed=len(changed), backlog=backlog)
    skipped = {
        "without a month in the name": 0,
        "month outside the partitions": 0,
        "month not over yet": 0,
        "already landed": 0,
        "already requested": 0,
        "vanished": 0,
    }
    deferred = dict(cursor.deferred)
    # files of a month that was still running: their turn comes when the month is a partition
    due = [
        (0, name) for name, pending_month in deferred.items() if has_month(pending_month) and name not in {n for _, n in batch}
    ]
    for _, name in due:
        del deferred[name]
    for _, name in [*due, *batch]:
        month = file_month(spec, name)
        if month is None:
            skipped["without a month in the name"] += 1
            continue
        if not has_month(month):
            if may_become_month is not None and may_become_month(month):
                deferred[name] = month
                skipped["month not over yet"] += 1
            else:
                skipped["month outside the partitions"] += 1
            continue
        deferred.pop(name, None)
        try:
            sha = sha256_file(inbox / name)
        except FileNotFoundError:
            skipped["vanished"] += 1
            continue
        plan.hashed += 1
        if (safe_name(name), sha) in landed(month):
            skipped["already landed"] += 1
            continue
        if pending.get(name, [None])[0] == sha:
            skipped["already requested"] += 1
            continue
        pending.pop(name, None)
        pending[name] = [sha, month]
        plan.requests.setdefault(month, []).append((name, sha))
    if len(pending) > MAX_PENDING:  # keep the newest requests
        pending = dict(list(pending.items())[-MAX_PENDING:])
    last = batch[-1] if batch else (cursor.changed_ns, cursor.name)
    plan.cursor = InboxCursor(changed_ns=last[0], name=last[1], pending=pending, deferred=deferred)
    plan.skipped = skipped
    return plan


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


def build_landing_automation(project: Project) -> LandingAutomation:
    """One landing job per source; an inbox sensor per file drop, a schedule per periodic source."""
    out = LandingAutomation(jobs=[], sensors=[], schedules=[])
    for source in project.sources:
        job = landing_job(project, source)
        out.jobs.append(job)
        if source.collector.type == "file_drop":
            out.sensors.append(build_inbox_sensor(project, source, job))
        elif source.schedule:
            out.schedules.append(build_source_schedule(project, source, job))
    return out
