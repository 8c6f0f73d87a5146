"""Denial constraints: parsing, every rule form compiled to Spark, two-tuple rules blocked (no cross join)."""

from __future__ import annotations

import pytest

from lakehouse.quality.constraints import (
    ConstraintError,
    compile_rule,
    compile_rules,
    has_cross_join,
    parse_deny,
    rule_violations,
    violating_rows,
)
from lakehouse.specs.models import RuleSpec


def rule(**kw) -> RuleSpec:
    return RuleSpec(name=kw.pop("name", "r"), **kw)


def ids(df) -> set:
    return {r[0] for r in df.collect()}


@pytest.fixture(scope="module")
def readings(spark):
    rows = [
        ("a1", "M1", "2012-01-01 00:00:00", 1.0, "x"),
        ("a2", "M1", "2012-01-01 01:00:00", -0.5, "x"),
        ("a3", "M1", "2012-01-01 01:00:00", 2.0, "y"),  # same meter+hour as a2, other value
        ("a4", "M2", "2012-01-01 01:00:00", 2.0, None),
        ("a5", "M2", "2012-01-01 02:00:00", None, "z"),
        ("a6", "M2", "2012-01-01 02:00:00", None, "x"),  # same key as a5, both values null
    ]
    return spark.createDataFrame(rows, "rid string, meter_id string, ts string, reading_kwh double, kind string").selectExpr(
        "rid", "meter_id", "cast(ts as timestamp) as ts", "reading_kwh", "kind"
    )


def test_parse_errors_name_the_rule():
    with pytest.raises(ConstraintError, match="rule 'bad'.*cannot read"):
        parse_deny("bad", "t.x < 0 ; t.y > 1")
    with pytest.raises(ConstraintError, match="joined by '&'"):
        parse_deny("bad", "t.x < 0 t.y > 1")
    with pytest.raises(ConstraintError, match="not both"):
        parse_deny("bad", "t.x < 0 & t1.y = t2.y")
    with pytest.raises(ConstraintError, match="no cross joins"):
        parse_deny("bad", "t1.x < t2.x")
    with pytest.raises(ConstraintError, match="constants only"):
        parse_deny("bad", "1 < 2")


def test_parse_round_trip():
    dc = parse_deny("r", "t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh")
    assert dc.two_tuple and dc.blocking_keys() == ["meter_id", "ts"] and not dc.key_equality_only
    assert str(dc) == "t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh"


def test_one_tuple_deny(readings):
    cr = compile_rule(rule(deny="t.reading_kwh < 0"))
    assert ids(rule_violations(readings, cr, "rid")) == {"a2"}
    # comparisons with null do not hold; '= null' tests for null
    cr_null = compile_rule(rule(deny="t.reading_kwh = null & t.kind != 'x'"))
    assert ids(rule_violations(readings, cr_null, "rid")) == {"a5"}


def test_not_null(readings):
    cr = compile_rule(rule(not_null=["reading_kwh", "kind"]))
    assert ids(rule_violations(readings, cr, "rid")) == {"a4", "a5", "a6"}


def test_range(readings):
    cr = compile_rule(rule(range={"reading_kwh": {"min": 0, "max": 1.5}}))
    assert ids(rule_violations(readings, cr, "rid")) == {"a2", "a3", "a4"}
    cr_ts = compile_rule(rule(range={"ts": {"max": "2012-01-01T01:00:00Z"}}))
    assert ids(rule_violations(readings, cr_ts, "rid")) == {"a5", "a6"}


def test_allowed(readings):
    cr = compile_rule(rule(allowed={"kind": ["x", "y"]}))
    assert ids(rule_violations(readings, cr, "rid")) == {"a5"}  # null is not_null's business


def test_constants_keep_their_text_and_type(spark):
    """Rules are evaluated as Spark SQL text: quotes and backslashes in strings, doubles, booleans and a
    column name with a space come through as written."""
    rows = [("b1", "it's", 0.25, True), ("b2", "a\\b", 0.5, False), ("b3", "x", 1e-5, None)]
    df = spark.createDataFrame(rows, "rid string, `odd name` string, v double, ok boolean")
    assert ids(rule_violations(df, compile_rule(rule(allowed={"odd name": ["it's", "a\\b"]})), "rid")) == {"b3"}
    assert ids(rule_violations(df, compile_rule(rule(deny="t.v < 0.00002")), "rid")) == {"b3"}
    assert ids(rule_violations(df, compile_rule(rule(range={"v": {"max": 0.3}})), "rid")) == {"b2"}
    assert ids(rule_violations(df, compile_rule(rule(allowed={"ok": [True]})), "rid")) == {"b2"}
    quoted = df.withColumnRenamed("odd name", "kind")
    assert ids(rule_violations(quoted, compile_rule(rule(deny="t.kind = 'it\\'s'")), "rid")) == {"b1"}


def test_unique_counts_groups_without_a_join(readings):
    cr = compile_rule(rule(unique=["meter_id", "ts"]))
    out = rule_violations(readings, cr, "rid")
    assert ids(out) == {"a2", "a3", "a5", "a6"}
    assert "Join" not in out._jdf.queryExecution().executedPlan().toString()


def test_two_tuple_deny(readings):
    cr = compile_rule(rule(deny="t1.meter_id = t2.meter_id & t1.ts = t2.ts & t1.reading_kwh != t2.reading_kwh"))
    # a5/a6 share a key but their values are null: != does not hold
    assert ids(rule_violations(readings, cr, "rid")) == {"a2", "a3"}


def test_reference(spark, readings):
    meters = spark.createDataFrame([("M1",), ("M3",)], "device_id string")
    cr = compile_rule(rule(reference={"column": "meter_id", "table": "trusted/customers", "to": "device_id"}))
    assert ids(rule_violations(readings, cr, "rid", reference=meters)) == {"a4", "a5", "a6"}
    with pytest.raises(ConstraintError, match="not available"):
        rule_violations(readings, cr, "rid")


def test_unknown_columns_and_bad_forms_are_rejected():
    with pytest.raises(ConstraintError, match=r"rule 'r': unknown column\(s\) \['nope'\]"):
        compile_rules([rule(deny="t.nope > 1")], ["meter_id", "ts"])
    with pytest.raises(ValueError, match="exactly one of"):
        rule(deny="t.x > 1", not_null=["x"])
    with pytest.raises(ValueError, match="'keep' repairs need a two-tuple"):
        rule(deny="t.x > 1", action="repair", repair={"keep": "first"})


def test_two_tuple_on_a_large_table_is_blocked_not_a_cross_join(spark):
    """60k rows: a cross join would compare 3.6e9 pairs. The plan must block on the equality keys."""
    from pyspark.sql import functions as F

    n = 60_000
    df = spark.range(n).select(
        F.col("id").cast("string").alias("rid"),
        (F.col("id") % 500).cast("string").alias("meter_id"),
        (F.col("id") / 500).cast("long").alias("hour"),
        F.when(F.col("id") % 9973 == 0, F.lit(99.0)).otherwise(F.lit(1.0)).alias("reading_kwh"),
    )
    # every 9973rd row gets a twin with the same key and another value
    twins = df.filter(F.col("reading_kwh") == 99.0).select(
        F.concat(F.col("rid"), F.lit("b")).alias("rid"), "meter_id", "hour", F.lit(1.5).alias("reading_kwh")
    )
    data = df.unionByName(twins)
    dc = parse_deny("conflict", "t1.meter_id = t2.meter_id & t1.hour = t2.hour & t1.reading_kwh != t2.reading_kwh")
    out = violating_rows(data, dc, "rid")
    assert not has_cross_join(out)
    plan = out._jdf.queryExecution().executedPlan().toString()
    # blocked: rows are hash-partitioned on the equality keys and compared within their block only
    assert "Window" in plan and "hashpartitioning(meter_id" in plan and "Join" not in plan
    expected = {str(i) for i in range(0, n, 9973)} | {f"{i}b" for i in range(0, n, 9973)}
    assert ids(out) == expected


def test_cross_join_detector_detects_one(spark):
    """The plan check above can fail: a join without equality keys is reported."""
    a = spark.range(10).withColumnRenamed("id", "a")
    b = spark.range(10).withColumnRenamed("id", "b")
    assert has_cross_join(a.join(b, a["a"] < b["b"]))
