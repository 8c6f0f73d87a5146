"""Typed models of the YAML files under ``configs/``.

Every model forbids unknown keys, so a typo in a config is an error that names the file and the key
(see :mod:`lakehouse.specs.loader`). Nothing here imports Dagster or Spark: specs are plain data.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class LakehouseSpec(Spec):
    lake_root: str = ".lakehouse"
    months: MonthsSpec
    spark: SparkSpec = Field(default_factory=SparkSpec)


# ---------------------------------------------------------------------------------------------------
# configs/sources/<source>.yaml
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

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

    @property
    def raw_name(self) -> str:
        return self.source or self.name


class FileDropCollector(Spec):
    """Devices push files into an inbox directory; the month is read from the file name."""

    type: Literal["file_drop"]
    inbox: str
    pattern: str = "*.csv"
    #: regular expression with one group that captures the file's month (``YYYY-MM``) from its name
    month_regex: str = r"(\d{4}-\d{2})"

    @field_validator("month_regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        if re.compile(value).groups != 1:
            raise ValueError("month_regex must have exactly one capture group")
        return value


def _template_fields(template: str) -> set[str]:
    """The ``{name}`` fields of a ``str.format`` template (``{{``/``}}`` are literal braces)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


#: fields every collector template may use besides its own ``params``
MONTH_FIELDS = frozenset({"month", "year", "mm"})


def _check_template(template: str, known: set[str], what: str) -> None:
    try:
        fields = _template_fields(template)
    except ValueError as exc:
        raise ValueError(f"{what} {template!r} is not a valid template: {exc}") from None
    unknown = sorted(f for f in fields if f not in known)
    if unknown or any(not f for f in fields):
        raise ValueError(f"{what} {template!r} uses unknown field(s) {unknown or ['{}']}; known: {sorted(known)}")


class HttpCollector(Spec):
    """Downloads one file per month from a URL template (``{month}``, ``{year}``, ``{mm}`` and ``params``).

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
    #: header name -> name of the environment variable holding its value (never the value itself)
    headers_env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _templates(self) -> HttpCollector:
        known = set(MONTH_FIELDS) | set(self.params)
        _check_template(self.url, known, "collector.url")
        _check_template(self.file_name, known, "collector.file_name")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"collector.url {self.url!r} must start with http:// or https://")
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
    timeout_s: float = Field(default=30.0, gt=0)

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


CollectorSpec = Annotated[
    FileDropCollector | HttpCollector | SqlCollector | LibraryCollector, Field(discriminator="type")
]


class FormatSpec(Spec):
    """How the raw text is laid out."""

    kind: Literal["csv"] = "csv"
    delimiter: str = ","
    header: bool = True
    encoding: str = "utf-8"


class PartitioningSpec(Spec):
    """Which column places a row in its month. ``snapshot``: every row belongs to the extracted month."""

    kind: Literal["time_column", "snapshot"] = "time_column"
    column: str | None = None

    @model_validator(mode="after")
    def _column_needed(self) -> PartitioningSpec:
        if self.kind == "time_column" and not self.column:
            raise ValueError("partitioning.kind 'time_column' needs 'column'")
        return self


class RuleSpec(Spec):
    """A data-quality rule. ``deny``: predicates that must not all hold together (a denial constraint),
    written over ``t`` (one tuple) or ``t1``/``t2`` (two tuples of the same table), joined by ``&``.
    Convenience forms (``not_null``, ``range``, ``unique``, ``allowed``, ``reference``) compile to the same.
    """

    name: str
    description: str = ""
    action: Literal["warn", "quarantine", "repair", "fail"] = "quarantine"
    deny: str | None = None
    not_null: list[str] | None = None
    range: dict[str, Any] | None = None
    unique: list[str] | None = None
    allowed: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    repair: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

    @model_validator(mode="after")
    def _one_form(self) -> RuleSpec:
        forms = [f for f in ("deny", "not_null", "range", "unique", "allowed", "reference") if getattr(self, f)]
        if len(forms) != 1:
            raise ValueError(
                f"rule {self.name!r} must have exactly one of deny/not_null/range/unique/allowed/reference,"
                f" got {forms or 'none'}"
            )
        if self.action == "repair" and not self.repair:
            raise ValueError(f"rule {self.name!r} has action 'repair' but no 'repair' block")
        return self


class CleaningSpec(Spec):
    """Cleaning steps applied in order after the rules are assessed."""

    step: str
    options: dict[str, Any] = Field(default_factory=dict)


class QualitySpec(Spec):
    key: list[str] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)
    cleaning: list[CleaningSpec] = Field(default_factory=list)
    #: drop rows that are identical in every column, keeping one (counted as merged duplicates)
    drop_exact_duplicates: bool = True

    @model_validator(mode="after")
    def _unique_names(self) -> QualitySpec:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique, repeated: {dupes}")
        return self


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

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)

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
        if self.schedule is not None and len(self.schedule.split()) != 5:
            raise ValueError(f"schedule {self.schedule!r} must be a cron expression with 5 fields")
        return self

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------------
# configs/exploitation/<view>.yaml
# ---------------------------------------------------------------------------------------------------
class ViewInputSpec(Spec):
    """An input table of a view. ``months``: ``same`` (the view's month), ``all`` (every month),
    ``latest`` (the newest month not after the view's month — for snapshots such as registries)."""

    table: str
    alias: str | None = None
    months: Literal["same", "all", "latest"] = "same"

    @field_validator("table")
    @classmethod
    def _zone_table(cls, value: str) -> str:
        if value.count("/") != 1:
            raise ValueError(f"table {value!r} must be '<zone>/<table>'")
        return value

    @property
    def name(self) -> str:
        return self.alias or self.table.split("/")[1]


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
    or a named Python transform ``module:function`` taking ``(inputs: dict[str, DataFrame], month, options)``.

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

    def input_for(self, ref: str) -> ViewInputSpec:
        """The input named by a lineage reference's table part (a ``zone/table`` or an alias)."""
        for inp in self.inputs:
            if ref in (inp.table, inp.name):
                return inp
        raise KeyError(ref)


# ---------------------------------------------------------------------------------------------------
# configs/ml/<pipeline>.yaml
# ---------------------------------------------------------------------------------------------------
class PipelineSpec(Spec):
    """An analysis pipeline. ``kind`` selects the builder in ``lakehouse.factories.ml``; the rest is its
    parameters (inputs, features, models and hyper-parameters), validated by that builder."""

    name: str
    kind: str
    description: str = ""
    input: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return _check_ident(value)


class Project(Spec):
    """Everything under one configs directory."""

    root: Path
    configs_dir: Path
    lakehouse: LakehouseSpec
    sources: tuple[SourceSpec, ...]
    views: tuple[ViewSpec, ...] = ()
    pipelines: tuple[PipelineSpec, ...] = ()

    @property
    def lake_root(self) -> Path:
        path = Path(self.lakehouse.lake_root)
        return path if path.is_absolute() else self.root / path

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r}; known: {[s.name for s in self.sources]}")

    def resolve(self, path: str) -> Path:
        """A path from a config, relative to the project root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p
