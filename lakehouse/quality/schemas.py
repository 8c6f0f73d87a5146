"""Pandera schemas (``pandera.pyspark``) of every zone table, derived from the configs — never written twice.

* ``formatted/<source>``: the declared canonical columns (Spark type, nullability) plus lineage columns.
* ``trusted/<source>``: the same, plus what cleaning guarantees: ``range`` / ``allowed`` / ``not_null``
  rules whose action removes or repairs violations (``quarantine``, ``repair``) become column checks,
  and the dataset's key must be unique within each month. (``warn`` and ``fail`` rules keep their rows, so they are not
  part of the contract; denial constraints are checked by the rule checks themselves.)
* ``exploitation/<view>``: the view's declared ``columns`` when present, else the written Spark schema;
  the view's ``key`` must be unique (within each month for monthly views).

``pandera.pyspark`` does not raise: it records errors in ``df.pandera.errors`` and says neither how many
rows failed nor which. :func:`validate` turns each error into a count and a few example rows by running
the same condition the check stands for (kept next to the check when the schema is built).

Each contract also carries the same schema for pandera's pandas backend. Small data is first validated
with it on the table read back by delta-rs (:func:`validate_local`, Arrow-backed pandas columns: no copy):
a contract with a key a month at a time (each month of at most :data:`LOCAL_ROWS` rows), one without a key
the step's months together when they hold at most that many (``lakehouse.factories.checks``).
pandera.pyspark runs one Spark job per check and its key check shuffles the whole range, where the pandas
backend validates a month in memory. The local result is trusted only when every check passes; a failure, a column of
another type, a NaN in a float column (Spark orders NaN above every number, pandas treats it as missing)
or larger data go to :func:`validate`, which counts the failing rows and shows examples.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lakehouse.specs.models import ColumnSpec, SourceSpec, ViewSpec
from lakehouse.transforms.parse import FILE_COL, LINE_COL

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructType

MONTH = "month"
#: data of up to this many rows (a month, the step's months or an unpartitioned table; see above) is
#: validated with pandera's pandas backend first, held in memory as Arrow
LOCAL_ROWS = 2_000_000
#: a table validated locally from this size on is freed as soon as its caller drops it (see validate_local)
COLLECT_BYTES = 16 * 2**20


def _spark_type(name: str):
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "bigint": T.LongType(),
        "double": T.DoubleType(),
        "boolean": T.BooleanType(),
        "date": T.DateType(),
        "timestamp": T.TimestampType(),
    }[name]


@dataclass
class Contract:
    """A pandera schema and, per check, the Spark condition that is true on a failing row."""

    name: str
    schema: Any  # pandera.pyspark.DataFrameSchema
    failing: dict[tuple[str, str], Callable[[], Column]] = field(default_factory=dict)
    key: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # column -> expected Spark simple type name
    local: Any = None  # the same schema for pandera's pandas backend (types checked on the Arrow schema)


@dataclass
class Failure:
    column: str
    check: str
    error: str
    failures: int | None
    examples: list[dict[str, Any]]
    per_month: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    contract: str
    rows: int
    failures: list[Failure]

    @property
    def passed(self) -> bool:
        return not self.failures

    def markdown(self) -> str:
        if self.passed:
            return f"`{self.contract}`: {self.rows} rows, every check passed."
        lines = ["| column | check | failing rows | example |", "|---|---|---:|---|"]
        for f in self.failures:
            example = json.dumps(f.examples[0], default=str) if f.examples else ""
            lines.append(f"| `{f.column}` | {f.check} | {f.failures if f.failures is not None else '?'} | `{example[:200]}` |")
        return f"`{self.contract}`: {self.rows} rows, {len(self.failures)} failed check(s)\n\n" + "\n".join(lines)


def _column(pa, spark_type: str, nullable: bool, checks: list) -> Any:
    return pa.Column(_spark_type(spark_type), nullable=nullable, checks=checks or None)


def _contract(name: str, columns: list[tuple[str, str, bool, list]], key: list[str]) -> Contract:
    """``columns``: (name, type, nullable, [(label, check factory, failing condition factory)]); a check
    factory takes the pandera module (``pandera.pyspark`` or ``pandera.pandas``) and returns the check."""
    import pandera.pandas as pd_pa
    import pandera.pyspark as pa

    failing: dict[tuple[str, str], Callable[[], Column]] = {}
    cols, local = {}, {}
    for col, kind, nullable, checks in columns:
        for label, _check, cond in checks:
            failing[(col, label)] = cond
        cols[col] = _column(pa, kind, nullable, [check(pa) for _, check, _ in checks])
        local[col] = pd_pa.Column(None, nullable=nullable, checks=[check(pd_pa) for _, check, _ in checks] or None)
    schema = pa.DataFrameSchema(cols, name=name, unique=key or None)
    local_schema = pd_pa.DataFrameSchema(local, name=name, unique=key or None)
    return Contract(name, schema, failing, list(key), {c: k for c, k, _, _ in columns}, local_schema)


def _range_checks(col: str, lo, hi) -> list[tuple]:
    from pyspark.sql import functions as F

    out = []
    if lo is not None:
        label = f"{col} >= {lo}"
        out.append((label, lambda pa, v=lo, e=label: pa.Check.ge(v, error=e), lambda c=col, v=lo: F.col(f"`{c}`") < F.lit(v)))
    if hi is not None:
        label = f"{col} <= {hi}"
        out.append((label, lambda pa, v=hi, e=label: pa.Check.le(v, error=e), lambda c=col, v=hi: F.col(f"`{c}`") > F.lit(v)))
    return out


def _allowed_check(col: str, values: list) -> tuple:
    from pyspark.sql import functions as F

    label = f"{col} in {values}"
    return (
        label,
        lambda pa, v=tuple(values), e=label: pa.Check.isin(list(v), error=e),
        lambda c=col, v=tuple(values): ~F.col(f"`{c}`").isin(list(v)),
    )


def source_contract(source: SourceSpec, zone: str) -> Contract:
    """The schema of ``formatted/<source>`` or ``trusted/<source>`` (see the module docstring)."""
    if zone not in ("formatted", "trusted"):
        raise ValueError(f"no source contract for zone {zone!r}")
    declared = source.trusted_columns if zone == "trusted" else source.columns  # derived columns: trusted only
    checks: dict[str, list] = {c.name: [] for c in declared}
    required = {c.name for c in declared if not c.nullable}
    if zone == "trusted":
        for rule in source.quality.rules:
            if rule.action not in ("quarantine", "repair"):
                continue
            if rule.range:
                for col, b in rule.range.items():
                    checks[col] += _range_checks(col, b.min, b.max)
            if rule.allowed:
                for col, values in rule.allowed.items():
                    checks[col].append(_allowed_check(col, values))
            if rule.not_null:
                required |= set(rule.not_null)
    columns: list[tuple[str, str, bool, list[Any]]] = [(c.name, c.type, c.name not in required, checks[c.name]) for c in declared]
    lineage_nullable = zone == "trusted"  # imputed rows have no source line
    columns += [
        (FILE_COL, "string", lineage_nullable, []),
        (LINE_COL, "bigint", lineage_nullable, []),
        (MONTH, "string", False, []),
    ]
    # a key identifies a row within its month (snapshot sources repeat every key each month)
    key = [*source.quality.key, MONTH] if zone == "trusted" and source.quality.key else []
    return _contract(f"{zone}/{source.name}", columns, key)


def view_contract(view: ViewSpec, spark_schema: StructType | None = None) -> Contract:
    """The schema of ``exploitation/<view>``: declared ``columns``, else the written Spark schema
    (``spark_schema`` also tells whether the table carries ``month``: merge views are unpartitioned)."""
    columns: list[tuple[str, str, bool, list[Any]]]
    if view.columns:
        declared: list[ColumnSpec] = list(view.contract_columns)
        columns = [(c.name, c.type, c.nullable, []) for c in declared]
        written = set(spark_schema.fieldNames()) if spark_schema is not None else {MONTH}
        if MONTH not in {c.name for c in declared} and MONTH in written:
            columns.append((MONTH, "string", False, []))
    elif spark_schema is not None:
        columns = []
        for f in spark_schema.fields:
            kind = _type_name(f.dataType)
            if kind is None:
                continue  # nested types: no pandera dtype check
            columns.append((f.name, kind, f.nullable, []))
    else:
        raise ValueError(f"view {view.name!r}: no declared columns and no schema to derive one from")
    # a monthly view's key holds within each month (a snapshot view repeats its keys every month)
    monthly = any(c[0] == MONTH for c in columns)
    key = [*view.key, MONTH] if view.key and monthly and MONTH not in view.key else list(view.key)
    return _contract(f"exploitation/{view.name}", columns, key)


def _type_name(dtype) -> str | None:
    from pyspark.sql import types as T

    for name, cls in (
        ("string", T.StringType),
        ("int", T.IntegerType),
        ("bigint", T.LongType),
        ("double", T.DoubleType),
        ("boolean", T.BooleanType),
        ("date", T.DateType),
        ("timestamp", T.TimestampType),
    ):
        if isinstance(dtype, cls):
            return name
    return None


def _examples(df: DataFrame, cond: Column, n: int) -> list[dict[str, Any]]:
    return [
        {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in r.asDict().items()}
        for r in df.filter(cond).limit(n).collect()
    ]


def _per_month(df: DataFrame, cond: Column) -> dict[str, int]:
    from pyspark.sql import functions as F

    if MONTH not in df.columns:
        return {}
    return {r[MONTH]: int(r["n"]) for r in df.filter(cond).groupBy(MONTH).agg(F.count(F.lit(1)).alias("n")).collect()}


def _arrow_type_name(dtype) -> str | None:
    """The simple type name (:func:`_type_name`) of the Spark type an Arrow type is read as; None if none."""
    import pyarrow.types as pt
    from pyspark.sql.pandas.types import from_arrow_type

    if pt.is_string_view(dtype):  # read as a string; PySpark's conversion does not know the view type yet
        return "string"
    if pt.is_dictionary(dtype):  # an encoding, not a type of the table: left to the Spark path
        return None
    try:
        return _type_name(from_arrow_type(dtype))
    except TypeError:  # no Spark type for it
        return None


def validate_local(table, contract: Contract) -> Report | None:
    """``contract`` checked with pandera's pandas backend on an Arrow ``table``: a passing Report, or None
    when this cannot vouch for the table (a check failed, a column is missing or of another type, a float
    column holds NaN) — then :func:`validate` decides, and counts what failed."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.types as pt
    from pandera.errors import SchemaError, SchemaErrors
    from pyarrow.lib import ArrowException

    if contract.local is None:
        return None
    for col, kind in contract.columns.items():
        if col not in table.column_names or _arrow_type_name(table.schema.field(col).type) != kind:
            return None
        if pt.is_floating(table.schema.field(col).type) and pc.any(pc.is_nan(table[col])).as_py():
            return None
    # Arrow-backed columns: no copy, and null checks read the validity bitmaps
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    try:
        contract.local.validate(frame, lazy=True)
    except (SchemaError, SchemaErrors):
        return None
    except (ArrowException, TypeError, ValueError):  # a value pandas cannot hold or compare: Spark decides
        return None
    finally:
        # the frame (pandas, and pandera's errors when a check fails) ends in reference cycles, which keep
        # the table's buffers until the collector's next full pass: a large month each, months after
        # months in the asset's process. A full pass walks every object of that process, so only a large
        # table is worth one.
        del frame
        if table.nbytes >= COLLECT_BYTES:
            gc.collect()
    return Report(contract.name, table.num_rows, [])


def validate(df: DataFrame, contract: Contract, *, examples: int = 3) -> Report:
    """Run the pandera schema on ``df`` and count, per failed check, the failing rows (with examples)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    validated = contract.schema.validate(df)
    errors = dict(getattr(validated.pandera, "errors", {}) or {})
    rows = df.count()
    failures: list[Failure] = []
    for _scope, by_kind in errors.items():
        for kind, entries in by_kind.items():
            for e in entries:
                col, check, error = str(e.get("column")), str(e.get("check")), str(e.get("error"))
                cond = None
                if (col, check) in contract.failing:
                    cond = contract.failing[(col, check)]()
                    cond = F.coalesce(cond, F.lit(False))
                elif kind == "SERIES_CONTAINS_NULLS" and col in df.columns:
                    cond = F.col(f"`{col}`").isNull()
                elif kind == "DUPLICATES" and contract.key:
                    w = Window.partitionBy(*[F.col(f"`{k}`") for k in contract.key])
                    marked = df.withColumn("__key_n", F.count(F.lit(1)).over(w))
                    cond_df = marked.filter(F.col("__key_n") > 1).drop("__key_n")
                    failures.append(
                        Failure(
                            ", ".join(contract.key),
                            check,
                            error,
                            cond_df.count(),
                            _examples(cond_df, F.lit(True), examples),
                            _per_month(cond_df, F.lit(True)),
                        )
                    )
                    continue
                if cond is not None:
                    failures.append(
                        Failure(col, check, error, df.filter(cond).count(), _examples(df, cond, examples), _per_month(df, cond))
                    )
                else:  # schema-level (missing column, wrong type): every row is affected
                    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
                    ex = [{"column": col, "expected": contract.columns.get(col), "actual": actual.get(col, "missing")}]
                    failures.append(Failure(col, check, error, rows, ex))
    return Report(contract.name, rows, failures)
