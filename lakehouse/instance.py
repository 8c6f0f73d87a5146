"""The Dagster instance's event log on SQLite, with each database's connections kept open.

Dagster's SQLite event log (one database per run plus an ``index`` database for asset events) opens a new
engine and connection for each group of statements and closes it after. In WAL mode the last connection to
close a database checkpoints it, two more ``fsync`` calls: every check evaluation of a month costs several
of these, and a backfill of many months with a dozen checks each writes thousands of events. This storage
is Dagster's own, the same tables and files, with one small connection pool per database, kept for the most
recently used databases only (a webserver reads many runs' databases). Commits stay as durable as before
(SQLite's ``synchronous`` setting is not changed), and a run's database file is touched after each write so
that the UI's live view of a run, which watches that file, still sees each event as it comes.
``dagster_home/dagster.yaml`` selects it; the PostgreSQL instance (``dagster.postgres.yaml``) does not need it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine

#: databases whose connections stay open (the run being written and the index, plus recently read runs)
OPEN_DATABASES = 8


def _changes(conn: Connection) -> int:
    """Rows the SQLite connection has inserted, updated or deleted since it was opened."""
    return conn.connection.dbapi_connection.total_changes  # type: ignore[union-attr]


def default_base_dir() -> str:
    """Where Dagster keeps the event log when ``dagster.yaml`` names no directory: ``$DAGSTER_HOME/history/runs``."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise dg.DagsterInvariantViolationError(
            "lakehouse.instance.PooledSqliteEventLogStorage: dagster.yaml gives no base_dir and DAGSTER_HOME is not"
            " set; set DAGSTER_HOME to the instance's folder (as Dagster's CLI and webserver need it) or give base_dir"
        )
    return os.path.join(home, "history", "runs")


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's per-run SQLite event log with pooled connections (see the module's docstring).

    ``dagster.yaml``::

        event_log_storage:
          module: lakehouse.instance
          class: PooledSqliteEventLogStorage
          # config: {base_dir: /path}   (default: $DAGSTER_HOME/history/runs, as Dagster's own)
    """

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        super().__init__(base_dir or default_base_dir(), inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **dict(config_value or {}))

    def _engine(self, shard: str) -> Engine:
        """The shard's engine, made on first use; the least recently used one is closed beyond
        :data:`OPEN_DATABASES` (called under the storage's lock)."""
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                # the storage's lock serializes every use; connections move between the run's threads
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
                pool_size=1,
                max_overflow=8,  # Dagster may open a second connection to a database while one is in use
            )
        self._engines[shard] = engine
        while len(self._engines) > OPEN_DATABASES:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                changes = _changes(conn)
                with conn.begin():
                    yield conn
                wrote = _changes(conn) != changes
            if wrote and shard != INDEX_SHARD_NAME:
                # a run's live view (watch(): a file watcher on the run's database file) learns of new events
                # from the file changing; with the connection kept open the events stay in the WAL file until a
                # checkpoint, so the database file is touched instead, as the stock storage's close did
                os.utime(self.path_for_shard(shard))

    def _close_all(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        # the run databases' files are deleted: no connection may stay open on them
        self._close_all()
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._close_all()
