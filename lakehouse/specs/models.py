"""Typed models of ``configs/lakehouse.yaml`` and of the declarations (``lakehouse/defs/*/<name>/defs.yaml``).

Every model forbids unknown keys, so a typo in a config is an error that names the file and the key
(see :mod:`lakehouse.specs.loader`). Nothing here imports Dagster or Spark: specs are plain data.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lakehouse.specs.ml import PipelineSpec
from lakehouse.specs.tables import TableName, TableRef

MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
IDENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Canonical column types, as Spark SQL type names.
ColumnType = Literal["string", "int", "bigint", "double", "boolean", "date", "timestamp"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_month(value: str | None) -> str | None:
    if value is not None and not MONTH_RE.match(value):
        raise ValueError(f"{value!r} is not a month in YYYY-MM form")
    return value


def _check_ident(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError(f"{value!r} must be lower_snake_case (letters, digits, underscores)")
    return value


# ---------------------------------------------------------------------------------------------------
# configs/lakehouse.yaml
# ---------------------------------------------------------------------------------------------------
class SparkSpec(Spec):
    """Where Spark runs. ``remote`` (Spark Connect, ``sc://host:port``) wins over ``master``."""

    master: str = "local[2]"
    remote: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)


class MonthsSpec(Spec):
    """The partition range of every zone table: ``start`` inclusive, ``end`` exclusive (open if unset)."""

    start: str
    end: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _month_form(cls, value: str | None) -> str | None:
        return _check_month(value)

    @model_validator(mode="after")
    def _ordered(self) -> MonthsSpec:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"months.end ({self.end}) must come after months.start ({self.start})")
        return self


class StorageSpec(Spec):
    """How to reach an object-store lake root (ignored for a local one). Option names are ``object_store``'s
    (``endpoint``, ``region``, ``allow_http``, ...; ``aws_``/``google_``/``azure_`` is added by the scheme).

    ``credentials`` maps an option (``access_key_id``, ``secret_access_key``, ``session_token``, ...) to the
    *name* of the environment variable holding it: values never appear in a config, a log or metadata.
    """

    endpoint: str | None = None
    region: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    credentials: dict[str, str] = Field(default_factory=dict)

    @field_validator("endpoint", "region", mode="before")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("credentials")
    @classmethod
    def _variable_names(cls, value: dict[str, str]) -> dict[str, str]:
        for option, name in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
                # a value here would be a secret pasted into a config: do not repeat it
                raise ValueError(f"credentials.{option} must name an environment variable (letters, digits, _), not hold a value")
        return value

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for option in value:
            if any(w in option.lower() for w in ("secret", "key_id", "token", "password", "account_key")):
                raise ValueError(f"options.{option} looks like a credential: name its variable under credentials instead")
        return value


#: the environment variables ``${VAR}`` may name when a config does not list its own (``interpolation.allowed``):
#: the paths and endpoints the shipped configs use; never a secret (those are named by ``url_env``,
#: ``headers_env``, ``params_env`` and ``storage.credentials`` and read at run time)
DEFAULT_INTERPOLATION_ALLOWED = (
    "LAKEHOUSE_ROOT",
    "LAKEHOUSE_DEMO_ROOT",
    "LAKEHOUSE_WEATHER_URL",
    "LAKEHOUSE_S3_ENDPOINT",
    "LAKEHOUSE_S3_REGION",
)
_VARIABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: ``${VAR}`` / ``${VAR:-default}``: replaced by the loader before validation; one still in a value is the YAML
#: as written (Dagster's own pre-check of a defs.yaml), checked again by the loader once interpolated
PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class InterpolationSpec(Spec):
    """Which environment variables ``${VAR}`` in any config may read (a config naming another fails at
    load, naming the file, the line and the variable). Read from ``lakehouse.yaml`` before anything is
    interpolated, so this list itself is never interpolated."""

    allowed: tuple[str, ...] = DEFAULT_INTERPOLATION_ALLOWED

    @field_validator("allowed")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if not _VARIABLE_RE.fullmatch(v)]
        if bad:
            raise ValueError(f"interpolation.allowed must list variable names (letters, digits, _), not {bad}")
        return value


class LimitsSpec(Spec):
    """Project-wide limits (docs/reliability.md, "Limits"); per-source caps live on the collector and format."""

    #: the longest a Dagster run of this project may take; the run monitoring daemon cancels it after that
    #: (the ``dagster/max_runtime`` tag on every job, schedule and sensor request of the project)
    run_max_runtime_s: int = Field(default=6 * 3600, gt=0)
    #: staged files (``*.part``, Parquet under a Delta table that no log version lists) older than this are
    #: swept by ``table_maintenance``; younger ones may belong to a commit in flight
    staged_orphan_age_h: float = Field(default=24.0, gt=0)


class LakehouseSpec(Spec):
    lake_root: str = ".lakehouse"
    #: the defs folder of the project's declarations (``sources/<name>/defs.yaml``, ``views/...``, ``ml/...``),
    #: relative to this file's folder
    defs: str = "defs"
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @field_validator("lake_root")
    @classmethod
    def _lake_uri(cls, value: str) -> str:
        from lakehouse.io.storage import parse_root

        parse_root(value, "/")  # a malformed or unsupported URI fails here, at load time (never a local folder)
        return value

    months: MonthsSpec
    spark: SparkSpec = Field(default_factory=SparkSpec)
    #: months of a backfilled range processed at the same time (threads sharing the Spark session), for
    #: zone assets whose months are independent; 1 processes them one after the other
    month_workers: int = Field(default=3, ge=1, le=16)
    #: months of such an asset computed in one Spark plan (each still committed on its own): the fixed
    #: cost of a Spark job and of planning is paid once per batch; 1: a plan per month
    months_per_plan: int = Field(default=12, ge=1, le=120)
    #: at most this many input rows in one plan of ``trusted/*`` (fewer months per plan when months are
    #: large: their cost is their rows, not the fixed cost of a job)
    rows_per_plan: int = Field(default=1_000_000, ge=1)
    #: steps of a zone run (``make demo``'s zones job) that run at the same time when they do not depend on
    #: each other (threads sharing the Spark session, lakehouse.factories.executor); 1: one after the other
    step_workers: int = Field(default=2, ge=1, le=8)
    interpolation: InterpolationSpec = Field(default_factory=InterpolationSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)


# ---------------------------------------------------------------------------------------------------
# <defs>/sources/<source>/defs.yaml (attributes of lakehouse.components.Source)
# ---------------------------------------------------------------------------------------------------
class ColumnSpec(Spec):
    """One column of a canonical table."""

    name: str
    type: ColumnType
    #: the column's name in the raw data, when it differs from ``name``
    source: str | None = None
    unit: str | None = None
    nullable: bool = True
    description: str = ""
    #: for ``timestamp``/``date``: the Java datetime pattern of the raw text (ISO 8601 if unset)
    format: str | None = None
    #: for ``string``: a regular expression (Java syntax) every value must match in full
    pattern: str | None = None

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

    @model_validator(mode="after")
    def _pattern(self) -> ColumnSpec:
        if self.pattern is not None:
            if self.type != "string":
                raise ValueError(f"column {self.name!r}: 'pattern' applies to string columns only")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"column {self.name!r}: pattern {self.pattern!r} is not a regular expression: {exc}") from None
        return self

    @property
    def raw_name(self) -> str:
        return self.source or self.name


class DeriveSpec(Spec):
    """A column computed from the row: a Spark SQL expression over the other columns (and earlier derived
    ones), cast to ``type``. Checked at load (:mod:`lakehouse.specs.expressions`)."""

    expr: str
    type: ColumnType = "double"
    unit: str | None = None
    description: str = ""

    def column(self, name: str) -> ColumnSpec:
        """The derived column as a declared column (nullable: its inputs may be null)."""
        return ColumnSpec(name=name, type=self.type, unit=self.unit, description=self.description or f"derived: {self.expr}")


def _check_derive(derive: dict[str, DeriveSpec], known: list[str] | None, reserved: set[str], owner: str) -> dict[str, list[str]]:
    """Check ``derive`` in order (a column may use the ones before it); returns each one's input columns.

    ``known``: the columns an expression may read (None: unknown at load, only names and functions checked).
    """
    from lakehouse.specs.expressions import check_expression

    inputs, available = {}, None if known is None else set(known)
    for name, spec in derive.items():
        _check_ident(name)
        if name in reserved or (known is not None and name in known):
            raise ValueError(f"{owner}: derived column {name!r} clashes with a declared column")
        used = check_expression(spec.expr, what=f"{owner}: derive {name!r}", columns=available)
        inputs[name] = used
        if available is not None:
            available.add(name)
    return inputs


class FileDropCollector(Spec):
    """Devices push files into an inbox directory; the month is read from the file name."""

    type: Literal["file_drop"]
    inbox: str
    pattern: str = "*.csv"
    #: regular expression with one group that captures the file's month (``YYYY-MM``) from its name
    month_regex: str = r"(\d{4}-\d{2})"
    #: the largest inbox file accepted; a larger one is refused (recorded under ``_rejected/``, nothing of it lands)
    max_bytes: int = Field(default=2 << 30, gt=0)

    @field_validator("month_regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        if re.compile(value).groups != 1:
            raise ValueError("month_regex must have exactly one capture group")
        return value


def _template_fields(template: str) -> set[str]:
    """The ``{name}`` fields of a ``str.format`` template (``{{``/``}}`` are literal braces)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


#: fields every collector template may use besides its own ``params``: the month (``YYYY-MM``), its year and
#: month number, and its first day and the first day after it (``start``, ``end``: ISO dates, end exclusive)
MONTH_FIELDS = frozenset({"month", "year", "mm", "start", "end"})


def _check_template(template: str, known: set[str], what: str) -> None:
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        raise ValueError(f"{what} {template!r} is not a valid template: {exc}") from None
    unknown = sorted(f for f in fields if f not in known)
    if unknown or any(not f for f in fields):
        raise ValueError(f"{what} {template!r} uses unknown field(s) {unknown or ['{}']}; known: {sorted(known)}")


class HttpCollector(Spec):
    """Downloads one file per month from a URL template (``{month}``, ``{year}``, ``{mm}``, ``{start}`` and
    ``{end}`` for from/to-date APIs, and ``params``).

    Transient failures (connection errors, timeouts, HTTP 429/5xx) are retried ``retries`` times with
    exponential backoff (``backoff_s * 2**n``). A body that is shorter than its ``Content-Length`` or does
    not start with ``expect_prefix`` is rejected. Credentials never appear in a config: ``headers_env``
    maps a header name to the environment variable holding its value (e.g. ``Authorization``).
    """

    type: Literal["http"]
    url: str
    params: dict[str, str] = Field(default_factory=dict)
    file_name: str = "{month}.csv"
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    #: a prefix every valid response body starts with (catches HTML error pages served with 200)
    expect_prefix: str | None = None
    #: header name -> name of the environment variable holding its value (never the value itself); these
    #: headers are secrets: dropped on a redirect to another host, scrubbed from every message
    headers_env: dict[str, str] = Field(default_factory=dict)
    #: query parameter -> name of the environment variable holding its value (an API key in the URL), a
    #: secret like ``headers_env``: masked in the manifest's origin and scrubbed from every message
    params_env: dict[str, str] = Field(default_factory=dict)
    #: the longest one month's collect may take, every attempt and wait included (``timeout_s`` bounds
    #: each connect and each read only: a provider dripping a byte at a time would never hit it)
    deadline_s: float = Field(default=600.0, gt=0)
    #: the largest body accepted; a larger one fails the month (nothing lands)
    max_bytes: int = Field(default=512 << 20, gt=0)

    @model_validator(mode="after")
    def _templates(self) -> HttpCollector:
        known = set(MONTH_FIELDS) | set(self.params)
        url = PLACEHOLDER_RE.sub("", self.url)
        _check_template(url, known, "collector.url")
        _check_template(self.file_name, known, "collector.file_name")
        if url == self.url and not url.startswith(("http://", "https://")):
            raise ValueError(f"collector.url {self.url!r} must start with http:// or https://")
        for what, names in (("headers_env", self.headers_env), ("params_env", self.params_env)):
            for option, name in names.items():
                if not _VARIABLE_RE.fullmatch(name or ""):
                    # a value here would be a secret pasted into a config: do not repeat it
                    raise ValueError(
                        f"collector.{what}.{option} must name an environment variable (letters, digits, _), not hold a value"
                    )
        return self


class SqlCollector(Spec):
    """Extracts a snapshot per month with a SQL query through SQLAlchemy.

    The URL is never written in a config: ``url_env`` names the environment variable that holds it,
    ``default_url`` (credential-free, e.g. a SQLite file) is used when that variable is unset. The query
    may use the bound parameters ``:month`` (``YYYY-MM``), ``:month_start`` and ``:month_end`` (ISO dates,
    end exclusive), e.g. to extract the registry as it stood in that month.
    """

    type: Literal["sql"]
    url_env: str
    default_url: str | None = None
    query: str
    file_name: str = "{month}.csv"
    #: the longest one statement may run (PostgreSQL ``statement_timeout``, MySQL ``max_execution_time``,
    #: MariaDB ``max_statement_time``, Oracle ``call_timeout``, SQLite a progress handler; SQLite also waits
    #: that long for a lock)
    timeout_s: float = Field(default=30.0, gt=0)
    #: the longest one month's collect may take, connect and fetch included; past it the connection is
    #: cancelled (or closed) by a watchdog, whatever the dialect
    deadline_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _templates(self) -> SqlCollector:
        _check_template(self.file_name, set(MONTH_FIELDS), "collector.file_name")
        return self


class LibraryCollector(Spec):
    """Data produced by a Python library shipped with the lakehouse (e.g. the ``holidays`` calendar)."""

    type: Literal["library"]
    name: Literal["holidays_calendar"]
    options: dict[str, Any] = Field(default_factory=dict)
    file_name: str = "{month}.csv"

    @model_validator(mode="after")
    def _templates(self) -> LibraryCollector:
        _check_template(self.file_name, set(MONTH_FIELDS), "collector.file_name")
        return self


CollectorSpec = Annotated[FileDropCollector | HttpCollector | SqlCollector | LibraryCollector, Field(discriminator="type")]


class FormatSpec(Spec):
    """How a delivery is laid out (docs/sources.md lists every option).

    ``csv``: RFC 4180 text (``quote``d fields may hold the delimiter, line breaks and doubled quotes);
    ``jsonl``: one JSON object per line; ``json``: an array of objects, or one under ``records_path``;
    ``parquet``: columns by name. Any of them may arrive gzip-compressed (``compression``).
    """

    kind: Literal["csv", "jsonl", "json", "parquet"] = "csv"
    #: ``gzip``: every delivery is gzip-compressed; ``auto``: those that start with gzip's magic bytes are
    compression: Literal["none", "gzip", "auto"] = "none"
    delimiter: str = ","
    #: the quote character of csv fields (``null``: none, quotes are data)
    quote: str | None = '"'
    #: a character that makes the next one literal inside a field (``null``: none; RFC 4180 doubles quotes)
    escape: str | None = None
    header: bool = True
    #: ``exact``: header names as declared (spaces around them ignored); ``case_insensitive``: also in any case
    header_match: Literal["exact", "case_insensitive"] = "exact"
    encoding: str = "utf-8"
    #: the decimal separator of numbers in the text, and the thousands separator if numbers may be grouped
    decimal: Literal[".", ","] = "."
    thousands: Literal[".", ",", " ", "'", "_"] | None = None
    #: ``json``: the dotted path of the array of records inside the document (``null``: the document is the array)
    records_path: str | None = None
    #: the most bytes a compressed delivery may expand to (a small gzip can hold gigabytes of zeros);
    #: beyond it the file is unreadable, its records quarantined
    max_decompressed_bytes: int = Field(default=1 << 30, gt=0)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _dialect(self) -> FormatSpec:
        if self.kind == "csv":
            if len(self.delimiter) != 1 or self.delimiter in "\r\n":
                raise ValueError(f"format.delimiter must be one character other than a line break, not {self.delimiter!r}")
            for what, char in (("quote", self.quote), ("escape", self.escape)):
                if char is not None and (len(char) != 1 or char == self.delimiter or char in "\r\n"):
                    raise ValueError(
                        f"format.{what} must be one character other than the delimiter and line breaks, not {char!r}"
                    )
        if self.thousands is not None and self.thousands == self.decimal:
            raise ValueError(f"format.thousands and format.decimal cannot both be {self.decimal!r}")
        if self.records_path is not None and self.kind != "json":
            raise ValueError("format.records_path applies to kind 'json' only")
        return self


class PartitioningSpec(Spec):
    """Which column places a row in its month. ``snapshot``: every row belongs to the extracted month."""

    kind: Literal["time_column", "snapshot"] = "time_column"
    column: str | None = None

    @model_validator(mode="after")
    def _column_needed(self) -> PartitioningSpec:
        if self.kind == "time_column" and not self.column:
            raise ValueError("partitioning.kind 'time_column' needs 'column'")
        return self


RuleAction = Literal["warn", "quarantine", "repair", "fail"]
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """``"30min"``, ``"1h"``, ``"2d"`` → seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration such as '30s', '15min', '1h', '2d'")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


class RangeSpec(Spec):
    """Inclusive bounds of a column (numbers, or ISO text for dates/timestamps); either may be omitted."""

    min: float | str | None = None
    max: float | str | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> RangeSpec:
        if self.min is None and self.max is None:
            raise ValueError("a range needs 'min', 'max' or both")
        return self


class ReferenceSpec(Spec):
    """Every non-null value of ``column`` must exist in ``to`` of ``table`` (``<zone>/<table>``).
    ``months``: which months of the referenced table count (``latest``: the newest one not after the
    checked month, for snapshots such as a registry; ``same``; ``all``)."""

    column: str
    table: TableName
    to: str | None = None
    months: Literal["same", "latest", "all"] = "latest"

    @property
    def target_column(self) -> str:
        return self.to or self.column


class RepairSpec(Spec):
    """What ``action: repair`` does to the rows a rule flags.

    ``set``: column → Spark SQL expression over the row (``abs(reading_kwh)``, ``NULL``), for one-tuple
    rules. ``keep``: for two-tuple and ``unique`` rules, keep one row per block of equal keys (``first`` /
    ``last`` in source order, or the row with the ``min``/``max`` of column ``by``); the others are merged
    (moved to the quarantine with disposition ``merged``)."""

    set: dict[str, str] | None = None
    keep: Literal["first", "last", "min", "max"] | None = None
    by: str | None = None

    @model_validator(mode="after")
    def _one(self) -> RepairSpec:
        if (self.set is None) == (self.keep is None):
            raise ValueError("a repair needs exactly one of 'set' or 'keep'")
        if self.keep in ("min", "max") and not self.by:
            raise ValueError(f"keep: {self.keep} needs 'by' (the column to compare)")
        return self


class RuleSpec(Spec):
    """A data-quality rule. ``deny``: predicates that must not all hold together (a denial constraint),
    written over ``t`` (one tuple) or ``t1``/``t2`` (two tuples of the same table), joined by ``&``, with
    arithmetic (``+ - * /``, ``abs``) and ``prev.<column>`` (the previous row of the series); parsed at load.
    Convenience forms (``not_null``, ``range``, ``unique``, ``allowed``, ``reference``) compile to the same.

    ``action``: ``warn`` keeps the rows and counts them; ``quarantine`` moves them to the quarantine;
    ``repair`` applies ``repair``; ``fail`` keeps them and fails the blocking check (downstream stops).
    ``max_rate``: the violation rate (violations / rows in) above which the rule's check fails — for
    ``fail`` rules 0 when unset; for other actions the check only reports (WARN above ``max_rate`` if set).
    """

    name: str
    description: str = ""
    action: RuleAction = "quarantine"
    deny: str | None = None
    not_null: list[str] | None = None
    range: dict[str, RangeSpec] | None = None
    unique: list[str] | None = None
    allowed: dict[str, list[str | int | float | bool]] | None = None
    reference: ReferenceSpec | None = None
    repair: RepairSpec | None = None
    max_rate: float | None = Field(default=None, ge=0, le=1)
    #: for a ``deny`` using ``prev.<column>``: the series whose previous row it reads (rows equal on
    #: ``group_by``, ordered by ``time``); unset: the source's key minus its timestamp/date column
    group_by: list[str] | None = None
    time: str | None = None

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

    @field_validator("deny")
    @classmethod
    def _parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            from lakehouse.quality.constraints import parse_deny  # plain Python: no Spark at load

            parse_deny(info.data.get("name", "?"), value)  # the error names the rule and the column
        return value

    @model_validator(mode="after")
    def _one_form(self) -> RuleSpec:
        forms = [f for f in RULE_FORMS if getattr(self, f)]
        if len(forms) != 1:
            raise ValueError(f"rule {self.name!r} must have exactly one of {'/'.join(RULE_FORMS)}, got {forms or 'none'}")
        if self.action == "repair" and not self.repair:
            raise ValueError(f"rule {self.name!r} has action 'repair' but no 'repair' block")
        if self.repair and self.action != "repair":
            raise ValueError(f"rule {self.name!r} has a 'repair' block but action {self.action!r}")
        if self.repair and self.repair.keep and not (self.unique or (self.deny and "t1." in self.deny)):
            raise ValueError(f"rule {self.name!r}: 'keep' repairs need a two-tuple deny or a unique rule")
        if self.repair and self.repair.set and (self.unique or self.reference or (self.deny and "t1." in self.deny)):
            raise ValueError(f"rule {self.name!r}: 'set' repairs need a one-tuple rule")
        return self

    @property
    def form(self) -> str:
        return next(f for f in RULE_FORMS if getattr(self, f))


RULE_FORMS = ("deny", "not_null", "range", "unique", "allowed", "reference")


class _Step(Spec):
    """Fields every cleaning step shares. ``name`` is the step's check and its ``rule`` in the logs."""

    name: str
    description: str = ""
    #: the share of rows the step may flag before its check fails with WARN severity (unset: never)
    max_rate: float | None = Field(default=None, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)


class _SeriesStep(_Step):
    """A step over each series: rows grouped by ``group_by`` (none: the whole source is one series, e.g.
    one meter's export) and ordered by ``time`` (a timestamp, or a date for daily series)."""

    column: str
    group_by: list[str] = Field(default_factory=list)
    time: str


class RulesStep(Spec):
    """Where, in the cleaning order, the rules are evaluated (right after exact duplicates if absent)."""

    step: Literal["rules"]


class StandardizeStep(_Step):
    """Rewrite values into one convention: timestamps truncated to a unit (a reading stamped 10:30 belongs
    to the hour 10:00), text trimmed and/or case-folded, numbers rounded."""

    step: Literal["standardize"]
    column: str
    truncate: Literal["minute", "hour", "day"] | None = None
    trim: bool = False
    case: Literal["lower", "upper"] | None = None
    round: int | None = None

    @model_validator(mode="after")
    def _something(self) -> StandardizeStep:
        if not (self.truncate or self.trim or self.case or self.round is not None):
            raise ValueError(f"standardize step {self.name!r} does nothing: set truncate, trim, case or round")
        return self


class UnitStep(_Step):
    """Values delivered in a unit ``factor`` times too small (Wh instead of kWh: factor 1000).

    The median of each file (per group) is compared with a reference: the group's median over the
    ``history_months`` trusted months before (when it has ``min_history`` rows there), else the median
    of the month's file medians over all groups (when at least ``min_fleet`` files), else the absolute
    bound ``max_typical``. A file whose median is more than ``sqrt(factor)`` times its reference (or
    above ``max_typical``) is divided by ``factor``; every converted cell is logged as a repair.
    """

    step: Literal["unit_harmonization"]
    column: str
    group_by: list[str] = Field(min_length=1)
    factor: float = Field(default=1000.0, gt=1)
    history_months: int = Field(default=3, ge=0)
    min_history: int = Field(default=48, ge=1)
    min_fleet: int = Field(default=3, ge=1)
    max_typical: float | None = None


class OutlierStep(_SeriesStep):
    """Robust outliers per series over a centred time window of ``window`` (e.g. ``24h``).

    ``mad``: flag ``|x - median| > threshold * 1.4826 * MAD``; ``iqr``: flag outside
    ``[Q1 - threshold * IQR, Q3 + threshold * IQR]``. The scale never drops below ``min_relative_scale *
    |median|`` (flat windows). Windows with fewer than ``min_points`` readings are not judged.
    ``action: repair`` replaces the value by the window median."""

    step: Literal["outliers"]
    method: Literal["mad", "iqr"] = "mad"
    window: str = "24h"
    threshold: float = Field(default=8.0, gt=0)
    min_points: int = Field(default=8, ge=3)
    min_relative_scale: float = Field(default=0.05, ge=0)
    action: Literal["warn", "quarantine", "repair"] = "quarantine"

    @field_validator("window")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value


class StuckStep(_SeriesStep):
    """A stuck meter repeats one value: ``min_run`` or more consecutive identical readings (values in
    ``ignore_values``, e.g. a true zero, are never stuck)."""

    step: Literal["stuck"]
    min_run: int = Field(default=5, ge=2)
    ignore_values: list[float] = Field(default_factory=lambda: [0.0])
    action: Literal["warn", "quarantine"] = "quarantine"


class ImputeStep(_SeriesStep):
    """Fill gaps of at most ``max_gap`` missing steps of ``every`` between two readings of a series
    (linear interpolation, or the ``previous`` value). Imputed rows have no source file/line and one
    repair each (old value null)."""

    step: Literal["impute_gaps"]
    every: str = "1h"
    max_gap: int = Field(default=3, ge=1)
    method: Literal["linear", "previous"] = "linear"
    round: int | None = 3

    @field_validator("every")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_seconds(value)
        return value


class FillNullsStep(_Step):
    """Fill missing cells of ``columns`` within each series (rows equal on ``group_by``, none: one series,
    ordered by ``time``), from the series' own values of that column:

    ``linear``: between the neighbouring non-null values, by time; ``previous``: the last non-null value
    before (carried forward); ``seasonal``: the value exactly one ``season`` earlier (``7d``, ``24h``).
    ``max_distance`` (a duration): ``previous`` fills only up to that long after the last value,
    ``linear`` only between neighbours at most that far apart. Every filled cell is a repair (old value
    null); a cell that cannot be filled stays null."""

    step: Literal["fill_nulls"]
    columns: list[str] = Field(min_length=1)
    group_by: list[str] = Field(default_factory=list)
    time: str
    method: Literal["linear", "previous", "seasonal"] = "linear"
    max_distance: str | None = None
    season: str | None = None
    round: int | None = None

    @field_validator("max_distance", "season")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _season(self) -> FillNullsStep:
        if (self.method == "seasonal") != (self.season is not None):
            raise ValueError(f"fill_nulls step {self.name!r}: 'season' goes with method 'seasonal' (and it needs one)")
        if self.method == "seasonal" and self.max_distance is not None:
            raise ValueError(f"fill_nulls step {self.name!r}: max_distance applies to 'linear' and 'previous'")
        return self


CleaningSpec = Annotated[
    RulesStep | StandardizeStep | UnitStep | OutlierStep | StuckStep | ImputeStep | FillNullsStep, Field(discriminator="step")
]

#: check names the trusted asset always has; rules and steps may not use them
RESERVED_CHECKS = ("exact_duplicate", "conservation", "rejected_rate", "pandera_schema")


class QualitySpec(Spec):
    """Rules and cleaning of one dataset (formatted → trusted); see docs/quality.md.

    Order: exact duplicates are merged first, then ``cleaning`` runs in its declared order; the rules run
    where a ``- step: rules`` entry stands (right after exact duplicates when there is none).
    """

    key: list[str] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)
    cleaning: list[CleaningSpec] = Field(default_factory=list)
    #: merge rows identical in every column, keeping the first (the others go to the quarantine as merged)
    drop_exact_duplicates: bool = True

    @model_validator(mode="after")
    def _unique_names(self) -> QualitySpec:
        names = [r.name for r in self.rules] + [s.name for s in self.cleaning if not isinstance(s, RulesStep)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule and cleaning step names must be unique, repeated: {dupes}")
        reserved = sorted(set(names) & set(RESERVED_CHECKS))
        if reserved:
            raise ValueError(f"names {reserved} are reserved for built-in checks")
        if sum(isinstance(s, RulesStep) for s in self.cleaning) > 1:
            raise ValueError("'- step: rules' may appear at most once")
        return self

    @property
    def steps(self) -> list:
        """The cleaning order with the rules placed (a ``RulesStep`` marks where)."""
        steps = list(self.cleaning)
        if not any(isinstance(s, RulesStep) for s in steps):
            steps.insert(0, RulesStep(step="rules"))
        return steps


class FreshnessSpec(Spec):
    """How stale the source may become before the UI flags it."""

    max_lag_hours: float = 24 * 35


class SourceSpec(Spec):
    """One source: how it is collected, what its raw text looks like and its canonical table."""

    name: str
    description: str = ""
    collector: CollectorSpec
    format: FormatSpec = Field(default_factory=FormatSpec)
    columns: list[ColumnSpec]
    partitioning: PartitioningSpec
    quality: QualitySpec = Field(default_factory=QualitySpec)
    freshness: FreshnessSpec = Field(default_factory=FreshnessSpec)
    #: the schedule of a periodic collector (cron, UTC): each tick collects the month that ended last;
    #: file drops are sensor-driven and ignore it
    schedule: str | None = None
    #: the source's own partition range when it differs from the lakehouse's ``months`` (a source that
    #: begins in 2015 does not need 2012's partitions)
    months: MonthsSpec | None = None
    #: a delivery (a file, a response) may hold rows of many months: it lands once, under the month it
    #: was collected for, and each formatted month takes the rows its time column places in that month
    spans_months: bool = False
    #: the share of a month's rows that may be rejected (quarantined) while formatting, and again by the
    #: trusted zone's rules and cleaning, before the month's blocking ``rejected_rate`` check fails
    max_rejected_rate: float = Field(default=0.05, ge=0, le=1)
    #: columns computed from each row in the trusted zone (name -> Spark SQL expression and type): after
    #: the formatted casts, visible to the rules and cleaning steps, recomputed after the cleaning (so a
    #: filled input gives a filled derived value); see docs/sources.md
    derive: dict[str, DeriveSpec] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

    @field_validator("derive")
    @classmethod
    def _derive(cls, value: dict[str, DeriveSpec], info: ValidationInfo) -> dict[str, DeriveSpec]:
        columns = [c.name for c in info.data.get("columns", [])]
        _check_derive(value, columns, {"month"}, f"source {info.data.get('name', '?')!r}")
        return value

    @property
    def derived_columns(self) -> list[ColumnSpec]:
        return [d.column(name) for name, d in self.derive.items()]

    @property
    def trusted_columns(self) -> list[ColumnSpec]:
        """The columns of ``trusted/<source>``: the declared ones, then the derived ones."""
        return [*self.columns, *self.derived_columns]

    def derive_inputs(self) -> dict[str, list[str]]:
        """Derived column -> the declared columns it is computed from (through earlier derived ones)."""
        direct = _check_derive(self.derive, [c.name for c in self.columns], {"month"}, f"source {self.name!r}")
        out: dict[str, list[str]] = {}
        for name, used in direct.items():
            out[name] = list(dict.fromkeys(c for u in used for c in (out.get(u) or [u])))
        return out

    @model_validator(mode="after")
    def _consistent(self) -> SourceSpec:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be unique: {names}")
        if "month" in names:
            raise ValueError("'month' is reserved for the partition column")
        col = self.partitioning.column
        if col is not None:
            match = [c for c in self.columns if c.name == col]
            if not match:
                raise ValueError(f"partitioning.column {col!r} is not a declared column")
            if match[0].type not in ("timestamp", "date"):
                raise ValueError(f"partitioning.column {col!r} must be a timestamp or date column")
        for key_col in self.quality.key:
            if key_col not in names:
                raise ValueError(f"quality.key column {key_col!r} is not a declared column")
        if self.spans_months and self.partitioning.kind != "time_column":
            raise ValueError("spans_months needs partitioning.kind 'time_column' (the column that routes each row)")
        if self.schedule is not None and len(self.schedule.split()) != 5:
            raise ValueError(f"schedule {self.schedule!r} must be a cron expression with 5 fields")
        return self

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------------
# <defs>/views/<view>/defs.yaml (attributes of lakehouse.components.View)
# ---------------------------------------------------------------------------------------------------
class ViewInputSpec(Spec):
    """An input table of a view. ``months``: ``same`` (the view's month), ``all`` (every month),
    ``latest`` (the newest month not after the view's month — for snapshots such as registries)."""

    table: TableName
    alias: str | None = None
    months: Literal["same", "all", "latest"] = "same"

    @property
    def name(self) -> str:
        return self.alias or TableRef.of(self.table).table


class ViewColumnSpec(ColumnSpec):
    """A declared column of a view's result. ``lineage``: the input columns it is computed from, each
    ``<zone>/<table>.<column>`` or ``<alias>.<column>`` (shown as ``dagster/column_lineage``)."""

    lineage: list[str] = Field(default_factory=list)


class ViewWriteSpec(Spec):
    """How a view's rows reach its Delta table.

    ``overwrite_month`` (default): each run replaces its month of a month-partitioned table.
    ``merge``: rows are upserted with one Delta MERGE on the ``keys`` columns into an unpartitioned table
    (e.g. golden records maintained as months arrive). With ``newer``, a matched row is replaced only by a
    row whose ``newer`` value is not older (a rerun of an old month does not undo later ones), and
    ``keep_first`` columns keep their smallest value (e.g. the month a record was first seen).
    """

    mode: Literal["overwrite_month", "merge"] = "overwrite_month"
    #: the merge key (not ``on``: YAML 1.1 reads ``on`` as a boolean)
    keys: list[str] = Field(default_factory=list)
    newer: str | None = None
    keep_first: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keys(self) -> ViewWriteSpec:
        if self.mode == "merge" and not self.keys:
            raise ValueError("write.mode 'merge' needs the key columns in 'keys'")
        if self.mode == "overwrite_month" and (self.keys or self.newer or self.keep_first):
            raise ValueError("write.keys/newer/keep_first only apply to write.mode 'merge'")
        return self


class ViewSpec(Spec):
    """An exploitation view: Spark SQL over its inputs (registered as temp views under their alias),
    or a named Python transform ``module:function`` taking ``(inputs: dict[str, DataFrame], month, options)``
    or, to compute a batch of months in one plan, ``(inputs, months, options)`` (docs/ml.md, "View transforms").

    ``columns``, when declared, are the view's contract: the result is reduced to them in this order and
    cast to their types (a missing column fails the month), and they give the asset its column schema and
    column lineage.
    """

    name: str
    description: str = ""
    inputs: list[ViewInputSpec]
    sql: str | None = None
    transform: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    key: list[str] = Field(default_factory=list)
    columns: list[ViewColumnSpec] = Field(default_factory=list)
    write: ViewWriteSpec = Field(default_factory=ViewWriteSpec)
    #: columns computed from each result row after the SQL/transform (name -> Spark SQL expression and
    #: type); with declared ``columns`` they may read those only, join the contract and inherit lineage
    derive: dict[str, DeriveSpec] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

    @model_validator(mode="after")
    def _one_body(self) -> ViewSpec:
        if (self.sql is None) == (self.transform is None):
            raise ValueError(f"view {self.name!r} needs exactly one of 'sql' or 'transform'")
        return self

    @model_validator(mode="after")
    def _columns(self) -> ViewSpec:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"view {self.name!r}: column names must be unique, repeated: {dupes}")
        known = {i.table for i in self.inputs} | {i.name for i in self.inputs}
        for column in self.columns:
            for ref in column.lineage:
                table, dot, col = ref.rpartition(".")
                if not dot or not col or table not in known:
                    raise ValueError(
                        f"view {self.name!r}: lineage {ref!r} of column {column.name!r} must be"
                        f" '<input table or alias>.<column>'; inputs: {sorted(known)}"
                    )
        if names:
            for col in [*self.key, *self.write.keys, *([self.write.newer] if self.write.newer else []), *self.write.keep_first]:
                if col not in names:
                    raise ValueError(f"view {self.name!r}: key/write column {col!r} is not a declared column")
        return self

    @field_validator("derive")
    @classmethod
    def _derive(cls, value: dict[str, DeriveSpec], info: ValidationInfo) -> dict[str, DeriveSpec]:
        columns = [c.name for c in info.data.get("columns", [])]
        _check_derive(value, columns or None, {"month"}, f"view {info.data.get('name', '?')!r}")
        return value

    @property
    def contract_columns(self) -> list[ViewColumnSpec]:
        """The declared columns, then the derived ones (each with the lineage of the columns it reads);
        empty when the view declares no columns."""
        if not self.columns:
            return []
        out = list(self.columns)
        direct = _check_derive(self.derive, [c.name for c in self.columns], {"month"}, f"view {self.name!r}")
        lineage = {c.name: list(c.lineage) for c in self.columns}
        for name, used in direct.items():
            lineage[name] = list(dict.fromkeys(ref for u in used for ref in lineage.get(u, [])))
            d = self.derive[name]
            out.append(ViewColumnSpec(**d.column(name).model_dump(), lineage=lineage[name]))
        return out

    def input_for(self, ref: str) -> ViewInputSpec:
        """The input named by a lineage reference's table part (a ``zone/table`` or an alias)."""
        for inp in self.inputs:
            if ref in (inp.table, inp.name):
                return inp
        raise KeyError(ref)


class Project(Spec):
    """Everything under one configs directory."""

    root: Path
    configs_dir: Path
    #: the defs folder the declarations were read from (Dagster's component tree is built over it)
    defs_dir: Path
    lakehouse: LakehouseSpec
    sources: tuple[SourceSpec, ...]
    views: tuple[ViewSpec, ...] = ()
    pipelines: tuple[PipelineSpec, ...] = ()

    @property
    def lake_root(self) -> str:
        """The lake root as :mod:`lakehouse.io.storage` uses it: an absolute local path (relative to the project
        root) or ``scheme://bucket/prefix``."""
        from lakehouse.io.storage import parse_root

        return parse_root(self.lakehouse.lake_root, str(self.root))

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r}; known: {[s.name for s in self.sources]}")

    def months_of(self, source: SourceSpec) -> MonthsSpec:
        """The partition range of ``source``: its own ``months``, else the lakehouse's."""
        return source.months or self.lakehouse.months

    def secret_variables(self) -> dict[str, str]:
        """Every environment variable the configs name as holding a secret -> where it is named."""
        found = {name: f"storage.credentials.{option}" for option, name in self.lakehouse.storage.credentials.items()}
        for source in self.sources:
            c = source.collector
            if c.type == "sql":
                found[c.url_env] = f"source {source.name!r} collector.url_env"
            if c.type == "http":
                found.update({n: f"source {source.name!r} collector.headers_env.{h}" for h, n in c.headers_env.items()})
                found.update({n: f"source {source.name!r} collector.params_env.{q}" for q, n in c.params_env.items()})
        return found

    def resolve(self, path: str) -> Path:
        """A path from a config, relative to the project root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p
