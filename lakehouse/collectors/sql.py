"""SQL: a snapshot per month through SQLAlchemy, landed as CSV text (header + one line per row).

The database URL comes from the environment variable named by ``url_env`` (read through
:func:`lakehouse.settings.secret`), falling back to the credential-free ``default_url`` of the config.
A relative SQLite path is resolved against the project root, and a SQLite file that does not exist is an
error (SQLite would otherwise create an empty database and the query would report a missing table).

The query may use the bound parameters ``:month``, ``:month_start`` and ``:month_end`` (end exclusive).
Values are written as text: ``NULL`` → empty field, dates/times → ISO 8601, floats → ``repr`` (no loss).
Every failure — unreachable or missing database, bad query — raises :class:`CollectorError` naming the
source, the month and the cause, with any password in the URL masked (and scrubbed from the driver's text).

Two limits bound a collect, on every dialect:

* ``timeout_s`` per statement, enforced by the database where it has a session setting — PostgreSQL
  ``statement_timeout``, MySQL ``max_execution_time``, MariaDB ``max_statement_time``, Oracle's
  ``call_timeout``, SQL Server's (pyodbc) query ``timeout`` — and by a progress handler on SQLite;
* ``deadline_s`` per collect (connect, query, fetch): a watchdog thread interrupts, cancels or else closes
  the connection when it passes, which also covers every dialect without a statement timeout.
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
import time as clock
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from lakehouse import settings
from lakehouse.collectors.base import Fetched, template_values
from lakehouse.collectors.landing import CollectorError
from lakehouse.specs.models import SqlCollector


def month_bounds(month: str) -> dict[str, str]:
    year, mm = (int(p) for p in month.split("-"))
    start = date(year, mm, 1)
    end = date(year + (mm == 12), 1 if mm == 12 else mm + 1, 1)
    return {"month": month, "month_start": start.isoformat(), "month_end": end.isoformat()}


def resolve_url(spec: SqlCollector, root: Path, where: str) -> URL:
    """The database URL: ``$url_env`` if set, else ``default_url``; relative SQLite paths under ``root``."""
    raw = settings.secret(spec.url_env) or spec.default_url
    if not raw:
        raise CollectorError(f"{where}: environment variable {spec.url_env} is not set and the config has no default_url")
    try:
        url = make_url(raw)
    except ArgumentError:
        # never echo the value: it may hold a password
        raise CollectorError(f"{where}: the database URL from {spec.url_env}/default_url is not a valid SQLAlchemy URL") from None
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            return url
        path = Path(database)
        if not path.is_absolute():
            path = root / path
            url = url.set(database=str(path))
        if not path.is_file():
            raise CollectorError(f"{where}: database unreachable: SQLite file {path} does not exist")
    return url


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def rows_to_csv(columns: list[str], rows: list[tuple]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_text(v) for v in row] for row in rows)
    return buffer.getvalue().encode("utf-8")


def _reason(exc: BaseException, url: URL) -> str:
    cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return f"{type(exc).__name__}: {scrub(cause, url)}"[:500]


def scrub(text: str, url: URL) -> str:
    """``text`` (a driver's message) without the URL's password or query values, should the driver echo them."""
    secrets = [url.password, *(v for vs in url.query.values() for v in ((vs,) if isinstance(vs, str) else vs))]
    for value in sorted({str(v) for v in secrets if v and len(str(v)) >= 3}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


#: words of the errors databases raise when a statement timeout or a cancel stopped a query
_TIMEOUT_WORDS = (
    "statement timeout",
    "max_execution_time",
    "max_statement_time",
    "maximum statement execution time",
    "call timeout",
    "dpy-4024",
    "query timeout expired",
)


def session_setup(dialect: str, server_version: str, timeout_s: float) -> list[str]:
    """The statements that give a new session of ``dialect`` a per-statement timeout of ``timeout_s``."""
    ms = max(1, math.ceil(timeout_s * 1000))
    if dialect == "postgresql":
        return [f"SET statement_timeout = {ms}"]
    if dialect in ("mysql", "mariadb"):
        if "mariadb" in server_version.lower():
            return [f"SET SESSION max_statement_time = {ms / 1000:.3f}"]
        return [f"SET SESSION max_execution_time = {ms}"]
    return []


class Limits:
    """The statement timeout and the collect's deadline of one collect, on one engine."""

    def __init__(self, engine: sa.Engine, dialect: str, timeout_s: float, deadline_s: float) -> None:
        self.dialect, self.timeout_s, self.deadline_s = dialect, timeout_s, deadline_s
        self.deadline = clock.monotonic() + deadline_s
        self.statement_started = clock.monotonic()
        self.fired: str | None = None  # which limit stopped the query
        self._timer: threading.Timer | None = None
        sa.event.listen(engine, "connect", self._on_connect)
        sa.event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_connect(self, dbapi_conn, _record) -> None:
        dialect = self.dialect
        if dialect == "sqlite":
            # checked every few thousand virtual machine steps: interrupts the statement past either limit
            dbapi_conn.set_progress_handler(self._sqlite_progress, 10_000)
        elif dialect == "oracle" and hasattr(dbapi_conn, "call_timeout"):
            dbapi_conn.call_timeout = max(1, math.ceil(self.timeout_s * 1000))
        elif dialect == "mssql" and hasattr(dbapi_conn, "timeout"):
            dbapi_conn.timeout = max(1, math.ceil(self.timeout_s))
        else:
            cursor = dbapi_conn.cursor()
            try:
                version = ""
                if dialect in ("mysql", "mariadb"):
                    cursor.execute("SELECT VERSION()")
                    version = str(cursor.fetchone()[0])
                for statement in session_setup(dialect, version, self.timeout_s):
                    cursor.execute(statement)
            finally:
                cursor.close()
        self._watch(dbapi_conn)

    def _on_execute(self, *_args) -> None:
        self.statement_started = clock.monotonic()

    def _sqlite_progress(self) -> int:
        now = clock.monotonic()
        if now > self.deadline:
            self.fired = "deadline"
        elif now - self.statement_started > self.timeout_s:
            self.fired = "timeout"
        return 1 if self.fired else 0

    def _watch(self, dbapi_conn) -> None:
        """Stop ``dbapi_conn`` when the deadline passes: interrupt (SQLite), cancel (PostgreSQL, Oracle,
        ...), or close it (any other driver: the blocked call then fails)."""

        def stop() -> None:
            self.fired = self.fired or "deadline"
            for name in ("interrupt", "cancel", "close"):
                method = getattr(dbapi_conn, name, None)
                if callable(method):
                    try:
                        method()
                        return
                    except Exception:  # noqa: BLE001, S112 - try the next, harder way
                        continue

        self.cancel()
        self._timer = threading.Timer(max(0.0, self.deadline - clock.monotonic()), stop)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def check(self) -> None:
        if clock.monotonic() > self.deadline:
            self.fired = "deadline"
            raise TimeoutError

    def explain(self, exc: BaseException | None, where: str) -> CollectorError | None:
        """The error to raise when a limit stopped the collect (``None`` when ``exc`` is another failure)."""
        text = str(getattr(exc, "orig", None) or exc or "").lower()
        if self.fired == "deadline" or clock.monotonic() > self.deadline:
            return CollectorError(
                f"{where}: the collect took longer than its deadline of {self.deadline_s:g}s (collector.deadline_s)"
            )
        if self.fired == "timeout" or any(w in text for w in _TIMEOUT_WORDS):
            return CollectorError(f"{where}: the query ran longer than its timeout of {self.timeout_s:g}s (collector.timeout_s)")
        return None


def shown_url(url: URL) -> str:
    """``url`` safe for manifests, logs and errors: password and every query value masked (drivers take
    credentials in the query too, e.g. ``?password=``, ``?odbc_connect=...PWD=...``, tokens)."""
    text = url.set(query={}).render_as_string(hide_password=True)
    return text + ("?" + "&".join(f"{k}=***" for k in sorted(url.query)) if url.query else "")


def fetch(spec: SqlCollector, month: str, *, root: Path, source: str = "?") -> Iterator[Fetched]:
    """Run ``spec.query`` for ``month`` and yield its result as one CSV file."""
    where = f"source {source!r} month {month}"
    url = resolve_url(spec, root, where)
    shown = shown_url(url)
    query = sa.text(spec.query)
    bounds = month_bounds(month)
    wanted = set(re.findall(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)", spec.query))
    unknown = sorted(wanted - set(bounds))
    if unknown:
        raise CollectorError(f"{where}: query uses unknown parameter(s) {unknown}; known: {sorted(bounds)}")
    connect_args = {"timeout": spec.timeout_s} if url.get_backend_name() == "sqlite" else {}
    try:
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    except (NoSuchModuleError, ImportError) as exc:
        raise CollectorError(f"{where}: no driver for {shown}: {exc}") from None
    limits = Limits(engine, url.get_backend_name(), spec.timeout_s, spec.deadline_s)
    try:
        try:
            conn = engine.connect()
            if url.get_backend_name() == "sqlite":
                # SQLite opens lazily: a file that is not a database only fails on first read
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").fetchall()
        except SQLAlchemyError as exc:
            raise limits.explain(exc, where) or CollectorError(
                f"{where}: database unreachable ({shown}): {_reason(exc, url)}"
            ) from None
        with conn:
            try:
                result = conn.execute(query, {k: v for k, v in bounds.items() if k in wanted})
                columns = list(result.keys())
                rows = []
                while batch := result.fetchmany(10_000):
                    rows += [tuple(r) for r in batch]
                    limits.check()
            except (SQLAlchemyError, TimeoutError) as exc:
                raise limits.explain(exc, where) or CollectorError(
                    f"{where}: query failed ({shown}): {_reason(exc, url)}"
                ) from None
    finally:
        limits.cancel()
        engine.dispose()
    if not columns:
        raise CollectorError(f"{where}: the query returned no result set (is it a SELECT?)")
    name = spec.file_name.format(**template_values(month))
    yield Fetched(name=name, data=rows_to_csv(columns, rows), origin=f"sql:{shown}")
