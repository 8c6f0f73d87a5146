"""The lake: where every zone's data lives, and Delta reads/writes through ``deltalake``.

The root is a local path or an object-store URI (``s3://bucket/lake``, :mod:`lakehouse.io.storage`); the
same code serves both. Layout under the lake root::

    landing/<source>/<YYYY-MM>/<file>           raw bytes as received, never modified
    landing/<source>/<YYYY-MM>/_manifest/<n>.json  the month's manifest, version n (created only if absent)
    formatted/<dataset>/                        Delta, partitioned by ``month``
    trusted/<dataset>/                          Delta, partitioned by ``month``
    quality/{metrics,quarantine,repairs}/       Delta, partitioned by ``month``
    exploitation/<view>/                        Delta, partitioned by ``month``
    ml/<pipeline>/...                           features, splits, models (versioned files), predictions

Spark computes, delta-rs commits: a month is replaced with one ``write_deltalake(mode="overwrite",
predicate="month = '…'")`` transaction (or, for Parquet files Spark's workers already wrote into the month
folder, one ``create_write_transaction`` with a partition filter on the month: :meth:`Lake.commit_month`),
so a rerun of a month gives the same rows and leaves the other months untouched, and a crash before the
commit leaves the previous version intact.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lakehouse.io.storage import Storage, StorageAccessError, StorageUnavailableError, options_for, parse_root

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lakehouse.io.merging import MonthRows
    from lakehouse.specs.models import StorageSpec

PARTITION_COLUMN = "month"
#: commit metadata naming the month a staged commit wrote (:meth:`Lake.history` shows it)
MONTH_KEY = "lakehouse.month"
ZONES = ("landing", "formatted", "trusted", "quality", "exploitation", "ml")


#: tries of a write whose commit keeps losing races with concurrent writers (jittered backoff, ~10 s)
COMMIT_ATTEMPTS = 8


class TableMissingError(LookupError):
    """A Delta table was read before anything was written to it."""


class CommitConflictError(RuntimeError):
    """A write kept losing commit races with concurrent writers and was given up (nothing committed)."""


def _lost_race(exc: BaseException) -> bool:
    """Whether ``exc`` means another writer committed first (the write may simply run again).

    delta-rs raises :class:`CommitFailedError` for a conflicting concurrent transaction ("a concurrent
    transaction added new data", "Metadata changed since last commit"), and a plain :class:`DeltaError`
    ("A table already exists at ...") when two writers create the same table and this one lost.
    """
    return isinstance(exc, CommitFailedError) or (isinstance(exc, DeltaError) and "already exists" in str(exc))


def normalized_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as the lake stores it: timestamps in microseconds and UTC (a naive one would become
    ``timestamp_ntz`` and raise the table protocol), ``string`` rather than ``large_string``."""
    fields = []
    for f in schema:
        if pa.types.is_timestamp(f.type) and (f.type.tz is None or f.type.unit != "us"):
            f = pa.field(f.name, pa.timestamp("us", tz=f.type.tz or "UTC"), f.nullable)
        elif pa.types.is_large_string(f.type):
            f = pa.field(f.name, pa.string(), f.nullable)
        fields.append(f)
    return pa.schema(fields)


def _utc_timestamps(table: pa.Table) -> pa.Table:
    schema = normalized_schema(table.schema)
    return table if schema.equals(table.schema) else table.cast(schema)


_TABLE_LOCKS: dict[str, threading.Lock] = {}
_TABLE_LOCKS_GUARD = threading.Lock()


def _nullable_as(schema: pa.Schema, frame: DataFrame | MonthRows) -> pa.Schema:
    """``schema`` with each of its columns nullable as ``frame``'s column of that name is."""
    nullable = {f.name: f.nullable for f in frame.schema.fields}
    return pa.schema([f.with_nullable(nullable.get(f.name, True)) for f in schema])


def _table_lock(uri: str) -> threading.Lock:
    """This process's lock for commits to the table at ``uri``."""
    with _TABLE_LOCKS_GUARD:
        return _TABLE_LOCKS.setdefault(uri, threading.Lock())


#: this thread's open Delta tables by path (see :meth:`Lake.delta`)
_OPEN = threading.local()


def _delta_error(exc: BaseException, what: str, storage: Storage) -> BaseException | None:
    """A delta-rs error that means the object store refused the credentials or could not be reached, as the
    lake's own error (naming the credential variables, never their values); None for any other error."""
    text = str(exc)
    if any(
        s in text
        for s in (
            "lacked the necessary privileges",
            "403 Forbidden",
            "401 Unauthorized",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        )
    ):
        named = ", ".join(storage.secret_names) or "no credential variables (storage.credentials is empty)"
        return StorageAccessError(f"{what}: the object store refused the credentials; check the values of {named}")
    if any(s in text for s in ("error sending request", "Connection refused", "connection error", "dns error", "timed out")):
        return StorageUnavailableError(
            f"{what}: the object store at {storage.root} could not be reached ({_first_line(text)}); nothing was committed"
        )
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[:4])[:400]


class Lake:
    """Paths and Delta tables under one lake root. The only place a table's URI is built.

    ``root``: a local path or an object-store URI; ``storage``: how to reach an object store (credentials
    read from ``env`` by variable name, see :class:`lakehouse.specs.models.StorageSpec`).
    """

    def __init__(
        self, root: str | os.PathLike[str], storage: StorageSpec | None = None, *, env: Mapping[str, str] | None = None
    ) -> None:
        uri = parse_root(os.fspath(root), os.getcwd())
        options, names = options_for(uri, storage, env if env is not None else {})
        self.storage = Storage(uri, options, names)
        self.root = uri

    # ----------------------------------------------------------------------------------------- paths
    def table_uri(self, zone: str, table: str) -> str:
        if zone not in ZONES:
            raise ValueError(f"unknown zone {zone!r}; zones are {ZONES}")
        return self.storage.uri(zone, table)

    def uri(self, zone: str, table: str, *parts: str) -> str:
        """An object or folder inside ``zone/table`` (``ml/<asset>/models/v0001/model.joblib``)."""
        return self.storage.join(self.table_uri(zone, table), *parts)

    def landing_uri(self, source: str, month: str) -> str:
        return self.uri("landing", source, month)

    def landing_month(self, source: str, month: str):
        """The landing folder of ``source`` and ``month`` (:class:`lakehouse.collectors.landing.Month`)."""
        from lakehouse.collectors.landing import Month

        return Month(self.storage, self.inside(self.landing_uri(source, month)))

    def inside(self, uri: str) -> str:
        """``uri``, refusing anything that escapes the lake root (e.g. ``../`` in a name, a symlink on disk)."""
        return self.storage.inside(uri)

    # ------------------------------------------------------------------------------------ delta: meta
    def _uri(self, zone: str, table: str) -> str:
        return self.table_uri(zone, table)

    def _guard(self, what: str, fn):
        """Run a delta-rs call, turning an object-store refusal or outage into the lake's own error."""
        try:
            return fn()
        except (DeltaError, OSError) as exc:
            mapped = _delta_error(exc, what, self.storage)
            if mapped is None:
                raise
            raise mapped from None

    def exists(self, zone: str, table: str) -> bool:
        uri = self._uri(zone, table)
        return self._guard(f"{zone}/{table}", lambda: DeltaTable.is_deltatable(uri, storage_options=self.storage.delta_options))

    def delta(self, zone: str, table: str, version: int | None = None) -> DeltaTable:
        """``zone/table`` at ``version``, or at its newest version.

        The newest version comes from this thread's open copy of the table, brought up to date with the
        commits since (``update_incremental`` reads only the new log entries): opening a table replays its
        whole log, and a month's run asks for the same tables many times.
        One copy per thread, because a ``DeltaTable`` is not shared between threads here.
        """
        uri = self._uri(zone, table)
        options = self.storage.delta_options

        def open_() -> DeltaTable:
            if version is not None:
                return DeltaTable(uri, version=version, storage_options=options)
            tables: dict[tuple, DeltaTable] = _OPEN.__dict__.setdefault("tables", {})
            cached = (uri, frozenset((options or {}).items()))  # another credential opens its own copy
            dt = tables.get(cached)
            if dt is None:
                dt = tables[cached] = DeltaTable(uri, storage_options=options)
            else:
                dt.update_incremental()
            return dt

        try:
            return self._guard(f"{zone}/{table}", open_)
        except TableNotFoundError as exc:
            raise TableMissingError(f"{zone}/{table} has no Delta table at {uri}: materialize it first") from exc

    def version(self, zone: str, table: str) -> int | None:
        return self.delta(zone, table).version() if self.exists(zone, table) else None

    def months(self, zone: str, table: str) -> list[str]:
        """The months that hold at least one row."""
        if not self.exists(zone, table):
            return []
        parts = self.delta(zone, table).partitions()
        return sorted({p[PARTITION_COLUMN] for p in parts if p.get(PARTITION_COLUMN)})

    def row_count(self, zone: str, table: str, months: Sequence[str] | None = None) -> int | None:
        """Rows of ``months`` (all: None) from the file statistics of the Delta log, without reading data;
        None when a file carries no row count."""
        import pyarrow.compute as pc

        if months is not None:
            per_month = self.month_rows(zone, table, months)
            return None if per_month is None else sum(per_month.values())
        counts = pa.table(self.delta(zone, table).get_add_actions(flatten=True))["num_records"]
        return None if counts.null_count else int(pc.sum(counts).as_py() or 0)

    def month_files(self, zone: str, table: str, months: Sequence[str]) -> tuple[str, ...]:
        """The data files of ``months`` in the newest version of ``zone/table`` (none if the table is
        missing): they change exactly when a commit rewrites one of the months, so they identify what a step
        read."""
        if not self.exists(zone, table) or not months:
            return ()
        return tuple(sorted(self.delta(zone, table).file_uris(file_pruning_predicate=[(PARTITION_COLUMN, "in", list(months))])))

    def month_rows(self, zone: str, table: str, months: Sequence[str]) -> dict[str, int] | None:
        """Rows of each of ``months`` (0 for a month without files), from the Delta log as :meth:`row_count`;
        None for a table not partitioned by month or a file without a row count."""
        files = pa.table(self.delta(zone, table).get_add_actions(flatten=True))
        column = f"partition.{PARTITION_COLUMN}"
        if column not in files.column_names or files["num_records"].null_count:
            return None
        rows = dict.fromkeys(months, 0)
        for month, n in zip(files[column].to_pylist(), files["num_records"].to_pylist(), strict=True):
            if month in rows:
                rows[month] += int(n)
        return rows

    def count_rows(
        self, zone: str, table: str, month: str, *, where: Mapping[str, str] | None = None, null: str | None = None
    ) -> int:
        """Rows of ``month`` whose ``where`` columns equal the given values (and whose ``null`` column is null,
        when given), counted from the stored files batch by batch: the driver holds a count, never the rows."""
        import pyarrow.dataset as ds

        if not self.exists(zone, table):
            return 0
        dataset = self._guard(
            f"{zone}/{table}",
            lambda: self.delta(zone, table).to_pyarrow_dataset(file_pruning_predicate=[(PARTITION_COLUMN, "=", month)]),
        )
        condition = None
        for column, value in (where or {}).items():
            term = ds.field(column) == value
            condition = term if condition is None else condition & term
        if null is not None:
            term = ds.field(null).is_null()
            condition = term if condition is None else condition & term
        return int(dataset.count_rows(filter=condition))

    # ----------------------------------------------------------------------------------- delta: write
    def _target(self, zone: str, table: str) -> DeltaTable | str:
        """What a write goes to: the table as :meth:`delta` has it (up to date, no log replay), or the path
        of a table the write creates."""
        return self.delta(zone, table) if self.exists(zone, table) else self._uri(zone, table)

    def overwrite_month(self, zone: str, table: str, data: pa.Table, month: str, *, where: dict[str, str] | None = None) -> int:
        """Replace exactly ``month`` of ``zone/table`` with ``data`` in one transaction; the new version.

        ``where`` narrows the replaced slice further (``{"dataset": "meter_readings"}``) for shared tables
        such as the quarantine; every row of ``data`` must match it.
        """
        data = _utc_timestamps(data)
        if PARTITION_COLUMN not in data.column_names:
            data = data.append_column(PARTITION_COLUMN, pa.array([month] * data.num_rows, pa.string()))
        bad = set(data.column(PARTITION_COLUMN).unique().to_pylist()) - {month}
        if bad:
            raise ValueError(f"{zone}/{table}: rows for months {sorted(bad)} in a write of month {month}")
        predicate = f"{PARTITION_COLUMN} = '{month}'"
        for column, value in (where or {}).items():
            if "'" in value:
                raise ValueError(f"{zone}/{table}: quote in predicate value {value!r}")
            predicate += f" AND {column} = '{value}'"
        return self._commit(
            zone,
            table,
            lambda: write_deltalake(
                self._target(zone, table),
                data,
                mode="overwrite",
                predicate=predicate,
                partition_by=[PARTITION_COLUMN],
                storage_options=self.storage.delta_options,
            ),
        )

    def commit_month(self, zone: str, table: str, month: str, staged: Sequence[dict], schema: pa.Schema) -> int:
        """Replace exactly ``month`` of ``zone/table`` with Parquet files already written into its month
        folder (``path``/``size``/``stats`` of each, see :func:`lakehouse.io.staging.stage_parquet`)
        in one transaction; the new version. ``schema``: the files' schema with the partition column.

        The table is created when missing. An existing table whose columns differ from ``schema`` is not
        touched (the error names both), because its other months were written with the old columns.
        """
        return self._commit_staged(zone, table, {month: staged}, schema, mode="overwrite")

    def commit_append(self, zone: str, table: str, staged: Mapping[str, Sequence[dict]], schema: pa.Schema) -> int | None:
        """Add Parquet files already written into their month's folder (month -> files) to the append-only
        ``zone/table`` (the quarantine, the repairs log) in one transaction for all the months, as
        :meth:`commit_month` does for a month it replaces; the new version, None when there is nothing to add."""
        staged = {month: files for month, files in staged.items() if files}
        if not staged:
            return None
        return self._commit_staged(zone, table, staged, schema, mode="append")

    def _commit_staged(self, zone: str, table: str, staged: Mapping[str, Sequence[dict]], schema: pa.Schema, *, mode: str) -> int:
        """Commit ``staged`` (month -> files) in one transaction: ``overwrite`` replaces its one month."""
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

        schema = normalized_schema(schema)
        if PARTITION_COLUMN in schema.names:  # a row's month is never null, however the rows were computed
            at = schema.get_field_index(PARTITION_COLUMN)
            schema = schema.set(at, schema.field(at).with_nullable(False))
        uri = self._uri(zone, table)
        months = sorted(staged)
        if mode == "overwrite" and len(months) != 1:
            raise ValueError(f"{zone}/{table}: a staged overwrite replaces one month, not {months}")
        month, named = months[0], ",".join(months)
        actions = [action for m in months for action in self._adds(staged[m], m)]
        changes: list[AddAction | RemoveAction] = [*actions]
        # the month(s) a commit wrote, in the table's own history (a staged commit records no predicate)
        props = CommitProperties(custom_metadata={MONTH_KEY: named})

        def write() -> None:
            if not DeltaTable.is_deltatable(uri, storage_options=self.storage.delta_options):
                create_table_with_add_actions(
                    uri,
                    DeltaSchema.from_arrow(schema),
                    actions,
                    mode="error",
                    partition_by=[PARTITION_COLUMN],
                    storage_options=self.storage.delta_options,
                    commit_properties=props,
                )
                return
            dt = self.delta(zone, table)
            stored = pa.schema(dt.schema().to_arrow())
            if [(f.name, f.type) for f in stored] != [(f.name, f.type) for f in schema]:
                raise ValueError(
                    f"{zone}/{table}: month {named} has columns {[f'{f.name}: {f.type}' for f in schema]} but the"
                    f" table has {[f'{f.name}: {f.type}' for f in stored]}; nothing was committed"
                )
            filters = [(PARTITION_COLUMN, "=", month)] if mode == "overwrite" else None
            dt.create_write_transaction(
                changes,
                mode=mode,
                schema=stored,
                partition_by=[PARTITION_COLUMN],
                partition_filters=filters,
                commit_properties=props,
            )

        return self._commit(zone, table, write)

    def append(self, zone: str, table: str, data: pa.Table) -> int:
        """Append rows (for append-only logs such as the quarantine); the new version."""
        data = _utc_timestamps(data)
        return self._commit(
            zone,
            table,
            lambda: write_deltalake(
                self._target(zone, table),
                data,
                mode="append",
                partition_by=[PARTITION_COLUMN],
                schema_mode="merge",
                storage_options=self.storage.delta_options,
            ),
        )

    def replace(self, zone: str, table: str, data: pa.Table, *, commit_metadata: dict[str, str] | None = None) -> int:
        """Replace the whole table (every month, and its schema) in one transaction; the new version.

        For derived tables recomputed from scratch (ML features, labels, splits). ``commit_metadata`` is
        stored in the Delta commit (e.g. the lineage of the data) and read back by :meth:`commit_info`.
        """
        data = _utc_timestamps(data)
        partition_by = [PARTITION_COLUMN] if PARTITION_COLUMN in data.column_names else None
        props = CommitProperties(custom_metadata=commit_metadata) if commit_metadata else None
        return self._commit(
            zone,
            table,
            lambda: write_deltalake(
                self._target(zone, table),
                data,
                mode="overwrite",
                schema_mode="overwrite",
                partition_by=partition_by,
                commit_properties=props,
                storage_options=self.storage.delta_options,
            ),
        )

    def commit_info(self, zone: str, table: str, version: int) -> dict:
        """The commit entry of ``version`` (operation, metrics, custom metadata)."""
        for entry in self.history(zone, table):
            if entry.get("version") == version:
                return entry
        raise LookupError(f"{zone}/{table} has no commit {version} in its history")

    def merge(
        self,
        spark: SparkSession,
        zone: str,
        table: str,
        data: DataFrame,
        *,
        on: Sequence[str],
        newer: str | None = None,
        keep_first: Sequence[str] = (),
    ) -> tuple[int, int]:
        """Upsert ``data`` into the unpartitioned ``zone/table`` on the ``on`` columns: (rows of ``data``,
        the new version). A merge of one month (:meth:`merge_months`).

        New keys are inserted; a matched row is updated from ``data`` — only when its ``newer`` column is
        not older than the stored one (if ``newer`` is given), otherwise only its ``keep_first`` columns
        move. ``keep_first`` columns always keep the smaller of the stored and the new value (see
        :mod:`lakehouse.io.merging`). The first call creates the table. ``data`` repeating a key is an
        error, found by the staging tasks; nothing is committed then.
        """
        [got] = self.merge_months(spark, zone, table, [data], on=on, newer=newer, keep_first=keep_first)
        if isinstance(got, BaseException):
            raise got
        return got

    def merge_months(
        self,
        spark: SparkSession,
        zone: str,
        table: str,
        months: Sequence[DataFrame | MonthRows | BaseException],
        *,
        on: Sequence[str],
        newer: str | None = None,
        keep_first: Sequence[str] = (),
    ) -> list[tuple[int, int] | BaseException]:
        """Upsert the rows of each of ``months`` (consecutive months, in order; an exception stands for a month
        whose rows could not be computed) into ``zone/table`` as :meth:`merge` does, one after the other: per
        month, (its rows, the version of its commit) or why it failed.

        Executors write, the driver commits: one Spark plan folds the months into the stored snapshot
        (:func:`lakehouse.io.merging.states`: the table's state after each month), its tasks stage every
        state's files in one job, and the driver replaces the table with each state in turn, one commit per
        month (only file lists and counts come back). A month that fails (its rows repeat a key, its columns
        differ from the table's) fails alone: the others are folded without it, as when merged one by one.
        When a commit fails or loses a race with another writer, no later state (built on it) is committed:
        the months after it are merged one at a time from the table as it then is.

        A month may be a :class:`lakehouse.io.merging.MonthRows`, its share of a frame holding a batch of
        months (each row with its month): that frame is computed once for the fold. When the fold's plan
        fails and its months share such a frame, nothing is committed and the error is raised: one month
        alone would compute the whole frame again, so the caller computes the months again alone.
        """
        from lakehouse.io.merging import MonthRows

        what = f"{zone}/{table}"
        if not on:
            raise ValueError(f"{what}: merge needs key columns")
        rule = (list(on), newer, list(keep_first))
        out: dict[int, tuple[int, int] | BaseException] = {}
        todo: dict[int, DataFrame | MonthRows] = {}
        for i, data in enumerate(months):
            if isinstance(data, BaseException):
                out[i] = data
            elif missing := [c for c in [*on, *([newer] if newer else []), *keep_first] if c not in data.columns]:
                out[i] = ValueError(f"{what}: merge columns {missing} are not in the data {data.columns}")
            else:
                todo[i] = data
        if len(todo) > 1:
            try:
                with _table_lock(self._uri(zone, table)):
                    self._fold(spark, zone, table, todo, rule, out, alone=False)
            except Exception:
                # nothing of the months left was committed: each is merged alone below, unless they share a frame
                if any(isinstance(data, MonthRows) for i, data in todo.items() if i not in out):
                    raise
        for i, data in todo.items():
            if i in out:
                continue

            def alone(i: int = i, data: DataFrame | MonthRows = data) -> None:
                self._fold(spark, zone, table, {i: data}, rule, out, alone=True)
                if isinstance(failed := out[i], BaseException):
                    raise failed

            try:
                self._commit(zone, table, alone)
            except Exception as exc:  # noqa: BLE001 - reported per month
                out[i] = exc
        return [out[i] for i in range(len(months))]

    def _fold(
        self,
        spark: SparkSession,
        zone: str,
        table: str,
        months: dict[int, DataFrame | MonthRows],
        rule: tuple[list[str], str | None, list[str]],
        out: dict[int, tuple[int, int] | BaseException],
        *,
        alone: bool,
    ) -> None:
        """``months`` folded into the table's newest snapshot in one plan, staged by one job and committed
        in order; each settled month into ``out``. A commit that fails ends the fold: raised ``alone`` (a
        lost race is then run again by :meth:`_commit`), else the month failed (left unsettled after a lost
        race) and the months after it are left unsettled too."""
        from lakehouse.io import merging

        what = f"{zone}/{table}"
        on, newer, keep_first = rule
        base = self.delta(zone, table).version() if self.exists(zone, table) else None
        # the snapshot read is the one committed against (the thread's open table moves on with other writes)
        stored = None if base is None else self.read_spark(spark, zone, table, version=base)
        columns = (stored if stored is not None else months[min(months)]).columns
        todo = {}
        for i, data in months.items():
            if sorted(data.columns) != sorted(columns):
                out[i] = ValueError(f"{what}: the rows to merge have columns {data.columns} but the table has {columns}")
            else:
                todo[i] = data
        while todo:
            # a month whose rows repeat a key fails: the fold is computed again without it
            frame = merging.states(stored, dict(enumerate(todo.values(), start=1)), on=on, newer=newer, keep_first=keep_first)
            found, schema, counts = merging.stage_states(frame, self.storage, self._uri(zone, table))
            # a table the fold creates declares its columns as the rows to merge do (the fold's own output
            # loses their NOT NULL)
            schema = _nullable_as(schema, months[min(months)])
            marks = {i: counts.get(n, {merging.NEW: 0, merging.REPEATED: 0}) for n, i in enumerate(todo, start=1)}
            staged = {i: found.get(n, []) for n, i in enumerate(todo, start=1)}
            repeated = [i for i, m in marks.items() if m[merging.REPEATED]]
            for i in repeated:
                out[i] = ValueError(
                    f"{what}: the rows to merge repeat a key of {on} ({marks[i][merging.REPEATED]} rows); nothing was committed"
                )
                del todo[i]
            if not repeated:
                break
        for i in todo:
            try:
                version = self._commit_state(zone, table, base, staged[i], schema)
            except Exception as exc:
                if alone:
                    raise
                if not _lost_race(exc):
                    out[i] = _delta_error(exc, what, self.storage) or exc
                return
            out[i] = (marks[i][merging.NEW], version)
            if version != (0 if base is None else base + 1):
                return  # another writer committed around this commit: the months after it start from the table as it is
            base = version

    def _commit_state(self, zone: str, table: str, base: int | None, staged: Sequence[dict], schema: pa.Schema) -> int:
        """Replace ``zone/table`` at version ``base`` (None: create it) with the staged files; the table's
        version after the commit."""
        what = f"{zone}/{table}"
        if base is None:
            self._create(zone, table, staged, schema)
            return self.delta(zone, table).version()
        dt = self.delta(zone, table, base)
        current = pa.schema(dt.schema().to_arrow())
        if [(f.name, f.type) for f in current] != [(f.name, f.type) for f in schema]:
            raise ValueError(f"{what}: the merged rows have columns {schema} but the table has {current}; nothing was committed")
        dt.create_write_transaction(
            self._adds(staged, None),
            mode="overwrite",
            schema=current,
            # every merge of the table names the same application: two merges from the same snapshot
            # conflict even when it holds no file to remove
            commit_properties=CommitProperties(app_transactions=[Transaction(f"lakehouse.merge:{what}", base + 1)]),
        )
        return self.delta(zone, table).version()

    def _adds(self, staged: Sequence[dict], month: str | None):
        from deltalake.transaction import AddAction

        now = int(time.time() * 1000)
        values = {} if month is None else {PARTITION_COLUMN: month}
        return [AddAction(s["path"], s["size"], values, now, True, s["stats"]) for s in staged]

    def _create(self, zone: str, table: str, staged: Sequence[dict], schema: pa.Schema) -> None:
        """Create the unpartitioned ``zone/table`` from staged files (fails when another writer created it)."""
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import create_table_with_add_actions

        create_table_with_add_actions(
            self._uri(zone, table),
            DeltaSchema.from_arrow(normalized_schema(schema)),
            self._adds(staged, None),
            mode="error",
            storage_options=self.storage.delta_options,
        )

    def partitioned(self, zone: str, table: str) -> bool:
        """Whether ``zone/table`` is partitioned by month (merge tables are not)."""
        return PARTITION_COLUMN in self.delta(zone, table).metadata().partition_columns

    def _commit(self, zone: str, table: str, write, attempts: int = COMMIT_ATTEMPTS) -> int:
        """Run a write, retrying it when its commit lost a race with a concurrent writer.

        A retry runs the whole write again against the newer table (an overwrite of a month or a MERGE
        is recomputed, never replayed blindly). After ``attempts`` lost races it raises
        :class:`CommitConflictError`: the write is not committed, and says so.
        """
        for attempt in range(1, attempts + 1):
            try:
                # commits to one table from this process's threads (months of a range) take turns, so the
                # version read back below is this write's own, not a later month's
                with _table_lock(self._uri(zone, table)):
                    write()
                    return self.delta(zone, table).version()
            except (DeltaError, OSError) as exc:
                mapped = _delta_error(exc, f"{zone}/{table}", self.storage)
                if mapped is not None:
                    raise mapped from None
                if not isinstance(exc, DeltaError) or not _lost_race(exc):
                    raise
                if attempt == attempts:
                    raise CommitConflictError(
                        f"{zone}/{table}: the commit lost {attempts} races with concurrent writers and was given"
                        f" up; nothing of this write was committed ({type(exc).__name__}: {exc})"
                    ) from exc
                time.sleep(min(4.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + random.random()))
        raise AssertionError("unreachable: the last attempt returns or raises")

    # ------------------------------------------------------------------------------------ delta: read
    def _filters(self, months: Sequence[str] | None):
        return None if months is None else [(PARTITION_COLUMN, "in", list(months))]

    def read_arrow(
        self,
        zone: str,
        table: str,
        *,
        months: Sequence[str] | None = None,
        version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        dt = self.delta(zone, table, version)
        if months is not None and not months:
            return dt.to_pyarrow_table(columns=list(columns) if columns else None).slice(0, 0)
        return dt.to_pyarrow_table(filters=self._filters(months), columns=list(columns) if columns else None)

    def read_spark(
        self,
        spark: SparkSession,
        zone: str,
        table: str,
        *,
        months: Iterable[str] | None = None,
        version: int | None = None,
    ) -> DataFrame:
        """A Spark DataFrame over a snapshot of the table (Spark reads the Parquet files in parallel).

        Valid for what delta-rs writes by default (no deletion vectors, no column mapping).
        """
        months = None if months is None else sorted(set(months))
        dt = self.delta(zone, table, version)
        partition_filters = None if months is None else [(PARTITION_COLUMN, "in", months)]
        files = dt.file_uris(file_pruning_predicate=partition_filters) if months != [] else []
        if not files:
            from lakehouse.io.spark import arrow_frame

            return arrow_frame(spark, normalized_schema(pa.schema(dt.schema().to_arrow())).empty_table())
        if not self.storage.spark_native:
            return self._read_spark_arrow(spark, dt, months)
        reader = spark.read.option("basePath", self._uri(zone, table))
        try:
            from pyspark.sql.pandas.types import from_arrow_schema

            # the table's schema: without it Spark runs a job per read to infer it from Parquet footers
            reader = reader.schema(from_arrow_schema(pa.schema(dt.schema().to_arrow())))
        except (TypeError, ValueError, NotImplementedError):
            pass  # a type Spark cannot take from Arrow: let Spark infer it
        df = reader.parquet(*files)
        # the partition column is rebuilt from paths; keep the table's column order
        order = [f.name for f in dt.schema().fields]
        return df.select(*order)

    def _read_spark_arrow(self, spark: SparkSession, dt: DeltaTable, months: list[str] | None) -> DataFrame:
        """The snapshot's Parquet files read by Spark's Python workers through :class:`Storage` (object stores:
        Spark's JVM has no S3 client here); partition values come from the log."""
        schema = normalized_schema(pa.schema(dt.schema().to_arrow()))
        actions = pa.table(dt.get_add_actions(flatten=True))
        column = f"partition.{PARTITION_COLUMN}"
        parts = actions[column].to_pylist() if column in actions.column_names else [None] * actions.num_rows
        files = [
            (f"{dt.table_uri.rstrip('/')}/{path}", part)
            for path, part in zip(actions["path"].to_pylist(), parts, strict=True)
            if months is None or part in months
        ]
        return read_files_spark(spark, self.storage, files, schema)

    def history(self, zone: str, table: str) -> list[dict]:
        return self.delta(zone, table).history() if self.exists(zone, table) else []


def read_files_spark(
    spark: SparkSession, storage: Storage, files: Sequence[tuple[str, str | None]], schema: pa.Schema
) -> DataFrame:
    """Parquet ``files`` (URI, its month) read by Spark's Python workers through ``storage`` (any store,
    staged files not in a table's log included), one task per share of files: the columns of ``schema``,
    its partition column (if it has one) from each file's month."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from lakehouse.io.spark import parallelism

    slots = max(1, min(len(files), parallelism(spark)))
    shares = [files[i::slots] for i in range(slots)]
    stored = [n for n in schema.names if n != PARTITION_COLUMN]

    def read(batches):
        for batch in batches:
            for slot in batch.column("id").to_pylist():
                for uri, part in shares[slot]:
                    data = storage.read_parquet(uri, columns=stored)
                    if PARTITION_COLUMN in schema.names and PARTITION_COLUMN not in data.column_names:
                        data = data.append_column(PARTITION_COLUMN, pa.array([part] * data.num_rows, pa.string()))
                    yield from data.select(schema.names).cast(schema).to_batches()

    return spark.range(slots, numPartitions=slots).mapInArrow(read, from_arrow_schema(schema))
