"""Denial constraints: parsing, every rule form compiled to Spark, two-tuple rules blocked (no cross join)."""

from __future__ import annotations

import pytest

from lakehouse.quality.constraints import (
    ConstraintError,
    Series,
    compile_rule,
    compile_rules,
    default_series,
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


# ------------------------------------------------------------------------------ arithmetic and prev.
@pytest.fixture(scope="module")
def meters(spark):
    """Two meters' index and volume; r3 has no volume, r4 a zero divisor, M2's index falls on Jan 2 (r7,
    delivered after r6)."""
    rows = [
        ("r1", "M1", "2012-01-01", 100.0, 8.0, 2.0, 1),
        ("r2", "M1", "2012-01-02", 110.0, 1.0, 4.0, 2),
        ("r3", "M1", "2012-01-03", 125.0, None, 1.0, 0),
        ("r4", "M1", "2012-01-04", 131.0, 0.5, 0.0, 0),
        ("r5", "M2", "2012-01-01", 50.0, 3.0, 1.0, 5),
        ("r6", "M2", "2012-01-03", 49.0, 3.0, -1.5, 7),
        ("r7", "M2", "2012-01-02", 48.0, 3.0, 1.0, 6),
    ]
    schema = "rid string, meter_id string, day string, index_kwh double, volume_m3 double, a double, n int"
    return spark.createDataFrame(rows, schema).selectExpr(
        "rid", "meter_id", "cast(day as date) as day", "index_kwh", "volume_m3", "a", "n"
    )


@pytest.mark.parametrize(
    ("deny", "expected"),
    [
        ("index_kwh - volume_m3 * 12 > 40", {"r2", "r4"}),  # * before -: (i - v) * 12 would flag every row
        ("(index_kwh - volume_m3) * 2 > 240", {"r4"}),  # parentheses first; i - v * 2 > 240 flags none
        ("index_kwh - volume_m3 - 100 > 10", {"r4"}),  # left to right; i - (v - 100) would flag all of M1
        ("abs(a) > 1.2", {"r1", "r2", "r6"}),
        ("abs(a - 2) < 0.5", {"r1"}),
        ("-a > 1", {"r6"}),  # unary minus of a column
        ("a < -1", {"r6"}),  # a negative constant
        ("2 * -a + 1 > 3", {"r6"}),
        ("index_kwh / a > 100", {"r3"}),  # r4 divides by zero: NULL, no violation (and no error)
        ("index_kwh > volume_m3 * 20", {"r2", "r4"}),  # r3's volume is null: no violation
        ("n * 2 + 1 = 11", {"r5"}),  # integers stay integers
    ],
)
def test_arithmetic_follows_precedence_and_nulls_do_not_violate(meters, deny, expected):
    assert ids(rule_violations(meters, compile_rule(rule(deny=deny)), "rid")) == expected


def test_arithmetic_text_round_trips():
    for text in ["t.a - (t.b - t.c) < -3 * -t.d", "abs(t.a - t.b) > 0.5", "-(t.a + t.b) > 1", "t.x / 2 * t.y <= 1"]:
        dc = parse_deny("r", text)
        assert str(dc) == text
        assert str(parse_deny("r", str(dc))) == str(dc)
    assert str(parse_deny("r", "energy_kwh > volume_m3 * 12")) == "t.energy_kwh > t.volume_m3 * 12"


def test_arithmetic_parse_errors_name_the_rule_and_the_column():
    with pytest.raises(ConstraintError, match=r"rule 'bad': expected '\)', found '>' at column 9 of 'abs\(t.x > 1'"):
        parse_deny("bad", "abs(t.x > 1")
    with pytest.raises(ConstraintError, match="unknown function 'sqrt'.*at column 1"):
        parse_deny("bad", "sqrt(t.x) > 1")
    with pytest.raises(ConstraintError, match="expected an operand, found '>' at column 7"):
        parse_deny("bad", "t.x + > 1")
    with pytest.raises(ConstraintError, match="needs numbers or columns"):
        parse_deny("bad", "t.x + 'a' > 1")
    with pytest.raises(ConstraintError, match="cannot be combined with t1/t2"):
        parse_deny("bad", "t1.a = t2.a & prev.b > t1.b")


def test_prev_reads_the_previous_row_of_the_series_in_time_order(meters):
    """Meter-index continuity: M2's index falls on Jan 2 (r7), which was delivered after Jan 3 (r6) —
    in delivery order r6 and r7 would both look like a fall. A series' first row has no previous row."""
    per_meter = Series(("meter_id",), "day")
    cr = compile_rule(rule(deny="index_kwh < prev.index_kwh"), series=per_meter)
    assert ids(rule_violations(meters, cr, "rid")) == {"r7"}
    # arithmetic with prev.: the day's consumption (index - previous index) against 5 kWh per m3;
    # r3 has no volume, r1 no previous row
    daily = compile_rule(rule(deny="index_kwh - prev.index_kwh > volume_m3 * 5"), series=per_meter)
    assert ids(rule_violations(meters, daily, "rid")) == {"r2", "r4"}
    # a rule's own series wins over the table's; without group_by the whole table is one series
    whole = compile_rule(rule(deny="index_kwh < prev.index_kwh", time="day"), series=per_meter)
    assert whole.series == Series((), "day")
    assert ids(rule_violations(meters, whole, "rid")) == {"r5", "r7", "r6"}  # day by day, then by row id


def test_prev_needs_a_series():
    with pytest.raises(ConstraintError, match="prev. needs a series"):
        compile_rule(rule(deny="index_kwh < prev.index_kwh"))
    with pytest.raises(ConstraintError, match="only apply to rules using prev"):
        compile_rule(rule(deny="index_kwh < 0", time="day"))
    with pytest.raises(ConstraintError, match=r"unknown column\(s\) \['day'\]"):
        compile_rules([rule(deny="x < prev.x", time="day")], ["x"])
    assert default_series(["meter_id", "ts"], {"meter_id": "string", "ts": "timestamp"}) == Series(("meter_id",), "ts")
    assert default_series(["meter_id"], {"meter_id": "string"}) is None
