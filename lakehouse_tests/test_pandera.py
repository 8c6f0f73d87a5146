"""Pandera schemas derived from the configs, and their failures turned into counts and examples."""

from __future__ import annotations

import datetime as dt

import pytest

from lakehouse.factories.checks import pandera_result
from lakehouse.quality.schemas import source_contract, validate, view_contract
from lakehouse.specs import load_project
from lakehouse_tests.conftest import REPO

T0 = dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc)
SCHEMA = "meter_id string, ts timestamp, reading_kwh double, _source_file string, _source_line bigint, month string"


@pytest.fixture(scope="module")
def project():
    return load_project(REPO / "configs", env={})


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
    result = pandera_result(report)
    assert not result.passed
    assert result.metadata["failing_rows"].value == 5 and result.metadata["failed_checks"].value == 3
    assert "reading_kwh >= 0.0" in result.metadata["summary"].value


def test_a_valid_table_passes_and_a_wrong_type_is_reported(spark, project):
    contract = source_contract(project.source("meter_readings"), "formatted")
    good = spark.createDataFrame([("M1", T0, 1.0, "a.csv", 2, "2012-01")], SCHEMA)
    assert validate(good, contract).passed
    wrong = good.selectExpr("meter_id", "ts", "cast(reading_kwh as string) as reading_kwh", "_source_file", "_source_line", "month")
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
