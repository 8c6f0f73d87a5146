"""SQL: a snapshot per month through SQLAlchemy, landed as CSV text (header + one line per row).

The database URL comes from the environment variable named by ``url_env`` (read through
:func:`lakehouse.settings.secret`), falling back to the credential-free ``default_url`` of the config.
A relative SQLite path is resolved against the project root, and a SQLite file that does not exist is an
error (SQLite would otherwise create an empty database and the query would report a missing table).

The query may use the bound parameters ``:month``, ``:month_start`` and ``:month_end`` (end exclusive).
Values are written as text: ``NULL`` → empty field, dates/times → ISO 8601, floats → ``repr`` (no loss).
Every failure — unreachable or missing database, bad query — raises :class:`CollectorError` naming the
source, the month and the cause, with any password in the URL masked.
"""

from __future__ import annotations

import csv
import io
import re
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


def _reason(exc: SQLAlchemyError) -> str:
    cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return f"{type(exc).__name__}: {cause}"


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
    try:
        try:
            conn = engine.connect()
            if url.get_backend_name() == "sqlite":
                # SQLite opens lazily: a file that is not a database only fails on first read
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").fetchall()
        except SQLAlchemyError as exc:
            raise CollectorError(f"{where}: database unreachable ({shown}): {_reason(exc)}") from None
        with conn:
            try:
                result = conn.execute(query, {k: v for k, v in bounds.items() if k in wanted})
                columns = list(result.keys())
                rows = [tuple(r) for r in result.fetchall()]
            except SQLAlchemyError as exc:
                raise CollectorError(f"{where}: query failed ({shown}): {_reason(exc)}") from None
    finally:
        engine.dispose()
    if not columns:
        raise CollectorError(f"{where}: the query returned no result set (is it a SELECT?)")
    name = spec.file_name.format(**template_values(month))
    yield Fetched(name=name, data=rows_to_csv(columns, rows), origin=f"sql:{shown}")
