"""Pandera schemas derived from the configs, and their failures turned into counts and examples."""

from __future__ import annotations

import datetime as dt

import pytest

from lakehouse.factories.checks import pandera_results
from lakehouse.quality.schemas import source_contract, validate, view_contract
from lakehouse.specs import load_project
from lakehouse_tests.conftest import TEST_CONFIGS

T0 = dt.datetime(2012, 1, 1, tzinfo=dt.UTC)
SCHEMA = "meter_id string, ts timestamp, reading_kwh double, _source_file string, _source_line bigint, month string"


@pytest.fixture(scope="module")
def project():
    return load_project(TEST_CONFIGS, env={})


def checks_of(contract, column: str) -> list[str]:
    return [c.error for c in contract.schema.columns[column].checks]


def test_contracts_come_from_the_yaml(project):
    meters = project.source("meter_readings")
    formatted = source_contract(meters, "formatted")
    trusted = source_contract(meters, "trusted")
    # types and nullability from the declared columns, in both zones
    for contract in (formatted, trusted):
        assert str(contract.schema.columns["ts"].dtype) == "TimestampType()"
        assert contract.schema.columns["reading_kwh"].nullable is False
    # the quarantine rule's range is a trusted guarantee only; the warn rule is not part of it
    assert checks_of(formatted, "reading_kwh") == []
    assert checks_of(trusted, "reading_kwh") == ["reading_kwh >= 0.0"]
    assert formatted.schema.unique is None and trusted.schema.unique == ["meter_id", "ts", "month"]
    assert trusted.schema.columns["_source_line"].nullable  # imputed rows have no source line


def test_failures_are_counted_with_examples(spark, project):
    contract = source_contract(project.source("meter_readings"), "trusted")
    rows = [
        ("M1", T0, 1.0, "a.csv", 2, "2012-01"),
        ("M1", T0, 2.0, "a.csv", 3, "2012-01"),  # duplicate key
        ("M2", T0, -1.0, "b.csv", 2, "2012-01"),  # negative
        ("M2", T0 + dt.timedelta(days=40), -3.0, "b.csv", 3, "2012-02"),  # negative, another month
        (None, T0, 1.0, "c.csv", 2, "2012-02"),  # null meter
    ]
    report = validate(spark.createDataFrame(rows, SCHEMA), contract)
    assert not report.passed and report.rows == 5
    by_check = {f.check: f for f in report.failures}
    neg = by_check["reading_kwh >= 0.0"]
    assert neg.failures == 2 and neg.per_month == {"2012-01": 1, "2012-02": 1}
    assert sorted(e["reading_kwh"] for e in neg.examples) == [-3.0, -1.0]
    assert by_check["not_nullable"].failures == 1 and by_check["not_nullable"].column == "meter_id"
    assert by_check["unique"].failures == 2
    # one result per month, each with that month's failing rows only
    results = pandera_results(report, ["2012-01", "2012-02", "2012-03"], {"2012-01": 3, "2012-02": 2, "2012-03": 0})
    (jan,), (feb,), (mar,) = results.values()
    assert not jan.passed and not feb.passed and mar.passed
    assert jan.metadata["failing_rows"].value == 3 and feb.metadata["failing_rows"].value == 2
    jan_checks = {r.data["check"]: r.data["failing_rows"] for r in jan.metadata["failures"].value.records}
    assert jan_checks == {"reading_kwh >= 0.0": 1, "unique": 2}
    assert {r.data["check"] for r in feb.metadata["failures"].value.records} == {"reading_kwh >= 0.0", "not_nullable"}


def test_a_valid_table_passes_and_a_wrong_type_is_reported(spark, project):
    contract = source_contract(project.source("meter_readings"), "formatted")
    good = spark.createDataFrame([("M1", T0, 1.0, "a.csv", 2, "2012-01")], SCHEMA)
    assert validate(good, contract).passed
    wrong = good.selectExpr(
        "meter_id", "ts", "cast(reading_kwh as string) as reading_kwh", "_source_file", "_source_line", "month"
    )
    report = validate(wrong, contract)
    (failure,) = report.failures
    assert failure.column == "reading_kwh" and failure.failures == 1
    assert failure.examples == [{"column": "reading_kwh", "expected": "double", "actual": "string"}]


def test_view_contract_from_declared_columns_or_the_written_schema(spark, project):
    daily = next(v for v in project.views if v.name == "daily_consumption")
    df = spark.createDataFrame(
        [("M1", dt.date(2012, 1, 1), 10.0, 24, "2012-01"), ("M1", dt.date(2012, 1, 1), 11.0, 24, "2012-01")],
        "meter_id string, date date, consumption_kwh double, hours bigint, month string",
    )
    contract = view_contract(daily, df.schema)
    if daily.columns:
        assert list(contract.schema.columns)[: len(daily.columns)] == [c.name for c in daily.columns]
    else:
        assert list(contract.schema.columns) == df.columns
    report = validate(df, contract)
    assert [f.check for f in report.failures] == ["unique"]  # the view's key (meter_id, date) repeats


def _arrow(rows: list[tuple]):
    import pyarrow as pa

    names = ["meter_id", "ts", "reading_kwh", "_source_file", "_source_line", "month"]
    types = [pa.string(), pa.timestamp("us", tz="UTC"), pa.float64(), pa.string(), pa.int64(), pa.string()]
    return pa.table({n: pa.array([r[i] for r in rows], t) for i, (n, t) in enumerate(zip(names, types, strict=True))})


GOOD = [("M1", T0, 1.0, "a.csv", 2, "2012-01"), ("M2", T0, 0.0, "a.csv", 3, "2012-01")]


@pytest.mark.parametrize(
    "case, rows, cast",
    [
        ("negative reading", [*GOOD, ("M3", T0, -1.0, "a.csv", 4, "2012-01")], None),
        ("duplicate key", [*GOOD, ("M1", T0, 2.0, "a.csv", 4, "2012-01")], None),
        ("null meter", [*GOOD, (None, T0, 2.0, "a.csv", 4, "2012-01")], None),
        ("NaN reading", [*GOOD, ("M3", T0, float("nan"), "a.csv", 4, "2012-01")], None),
        ("int32 line number", GOOD, ("_source_line", "int32")),
        ("timestamp without zone", GOOD, ("ts", "timestamp[us]")),
    ],
)
def test_local_validation_vouches_only_for_a_table_that_passes(spark, project, case, rows, cast):
    """pandera's pandas backend on the Arrow table answers only "passed"; any failure, another type or a
    NaN (Spark and pandas disagree on it) leaves the verdict to the Spark path, which counts the rows."""
    import pyarrow as pa

    from lakehouse.quality.schemas import validate_local

    contract = source_contract(project.source("meter_readings"), "trusted")
    good = validate_local(_arrow(GOOD), contract)
    assert good is not None and good.passed and good.rows == 2
    table = _arrow(rows)
    if cast:
        col, to = cast
        table = table.set_column(table.column_names.index(col), col, table[col].cast(pa.type_for_alias(to)))
    assert validate_local(table, contract) is None, case
    if not cast:  # the same rows through pandera.pyspark, whose verdict the step records: failed, except
        # for NaN, which Spark orders above every number and does not count as null (pandas would fail it)
        spark_report = validate(spark.createDataFrame(table.to_pylist(), SCHEMA), contract)
        assert spark_report.passed is (case == "NaN reading"), case


@pytest.mark.parametrize("duplicate", [False, True], ids=["passes", "fails"])
def test_local_validation_lets_a_large_table_go(project, monkeypatch, duplicate):
    """Once validated (passed or not), nothing holds a large table's buffers: a month read for the check
    is freed when the caller drops it, even while the cyclic collector does not run (pandas, and pandera's
    errors, leave the frame in reference cycles: a large month each, months after months in the asset's
    process). The size from which this holds is lowered to the test table's."""
    import gc

    import pyarrow as pa

    from lakehouse.quality import schemas

    contract = source_contract(project.source("meter_readings"), "trusted")
    rows = [("M1", T0 + dt.timedelta(hours=h), 1.0, "a.csv", h + 2, "2012-01") for h in range(20_000)]
    if duplicate:
        rows.append(rows[0])
    gc.collect()  # what earlier tests left in cycles is not counted
    before = pa.total_allocated_bytes()
    table = _arrow(rows)
    monkeypatch.setattr(schemas, "COLLECT_BYTES", table.nbytes)
    gc.disable()
    try:
        assert (schemas.validate_local(table, contract) is None) is duplicate
        del table
        assert pa.total_allocated_bytes() == before
    finally:
        gc.enable()


def test_validate_written_counts_failures_of_a_small_month_with_spark(spark, project, tmp_path):
    """A small month that fails locally is still reported with counts and examples (pandera.pyspark)."""
    from lakehouse.factories.checks import validate_written
    from lakehouse.io.lake import Lake

    lake = Lake(tmp_path / "lake")
    contract = source_contract(project.source("meter_readings"), "trusted")
    lake.overwrite_month("trusted", "meter_readings", _arrow(GOOD), "2012-01")
    lake.overwrite_month("trusted", "meter_readings", _arrow([("M1", T0, -2.0, "b.csv", 2, "2012-02")]), "2012-02")
    assert lake.row_count("trusted", "meter_readings", ["2012-01"]) == 2
    assert lake.row_count("trusted", "meter_readings") == 3
    assert validate_written(spark, lake, "trusted", "meter_readings", ["2012-01"], contract).passed
    report = validate_written(spark, lake, "trusted", "meter_readings", ["2012-01", "2012-02"], contract)
    (failure,) = report.failures
    assert report.rows == 3 and failure.check == "reading_kwh >= 0.0" and failure.failures == 1
    assert failure.per_month == {"2012-02": 1} and failure.examples[0]["_source_file"] == "b.csv"


def test_a_range_is_vouched_for_month_by_month_and_only_the_rest_goes_to_spark(spark, project, tmp_path, monkeypatch):
    """With a key, small months are validated locally (consecutive ones together while they fit); a month
    that fails locally and a month too large for the local path go to pandera.pyspark together, and nothing
    else does. Without a key, the months
    are validated together."""
    from lakehouse.factories import checks
    from lakehouse.io.lake import Lake
    from lakehouse.quality import schemas

    lake = Lake(tmp_path / "lake")
    contract = source_contract(project.source("meter_readings"), "trusted")
    lake.overwrite_month("trusted", "meter_readings", _arrow(GOOD), "2012-01")
    lake.overwrite_month("trusted", "meter_readings", _arrow([("M1", T0, -2.0, "b.csv", 2, "2012-02")]), "2012-02")
    big = [(f"M{i}", T0, 1.0, "c.csv", i, "2012-03") for i in range(3)]
    lake.overwrite_month("trusted", "meter_readings", _arrow(big), "2012-03")
    assert lake.month_rows("trusted", "meter_readings", ["2012-01", "2012-02", "2012-03", "2012-04"]) == {
        "2012-01": 2,
        "2012-02": 1,
        "2012-03": 3,
        "2012-04": 0,
    }
    monkeypatch.setattr(schemas, "LOCAL_ROWS", 2)
    seen: list[list[str]] = []
    real = schemas.validate

    def spy(df, contract, **kw):
        seen.append(sorted(r["month"] for r in df.select("month").distinct().collect()))
        return real(df, contract, **kw)

    monkeypatch.setattr(schemas, "validate", spy)
    months = ["2012-01", "2012-02", "2012-03"]
    report = checks.validate_written(spark, lake, "trusted", "meter_readings", months, contract)
    assert seen == [["2012-02", "2012-03"]]
    (failure,) = report.failures
    assert report.rows == 6 and failure.failures == 1 and failure.per_month == {"2012-02": 1}
    seen.clear()
    assert checks.validate_written(spark, lake, "trusted", "meter_readings", ["2012-01"], contract).passed
    assert seen == []  # vouched for locally: no Spark job
    # consecutive small months are checked together, as many as one local validation takes: 2012-01 and
    # 2012-02 (3 rows) fail together and go to Spark together; 2012-03 (3 rows) passes alone
    monkeypatch.setattr(schemas, "LOCAL_ROWS", 3)
    report = checks.validate_written(spark, lake, "trusted", "meter_readings", months, contract)
    assert seen == [["2012-01", "2012-02"]] and report.failures[0].per_month == {"2012-02": 1}
    seen.clear()
    # without a key (a formatted contract) the months go together: 6 rows > 5, to Spark at once
    monkeypatch.setattr(schemas, "LOCAL_ROWS", 5)
    keyless = source_contract(project.source("meter_readings"), "formatted")
    assert checks.validate_written(spark, lake, "trusted", "meter_readings", ["2012-01", "2012-03"], keyless).passed
    assert seen == []  # 5 rows together: local
    assert checks.validate_written(spark, lake, "trusted", "meter_readings", months, keyless).passed
    assert seen == [months]


def test_local_validation_fails_a_value_outside_the_allowed_ones():
    """The Arrow-backed columns the local path validates still fail an ``allowed`` check and a range."""
    import pyarrow as pa

    from lakehouse.quality.schemas import _allowed_check, _contract, _range_checks, validate_local

    contract = _contract(
        "t",
        [("kind", "string", True, [_allowed_check("kind", ["a", "b"])]), ("n", "bigint", False, _range_checks("n", 0, 9))],
        [],
    )
    ok = pa.table({"kind": pa.array(["a", None, "b"]), "n": pa.array([0, 9, 5], pa.int64())})
    assert validate_local(ok, contract).passed
    assert validate_local(ok.set_column(0, "kind", pa.array(["a", "c", "b"])), contract) is None
    assert validate_local(ok.set_column(1, "n", pa.array([0, 10, 5], pa.int64())), contract) is None
