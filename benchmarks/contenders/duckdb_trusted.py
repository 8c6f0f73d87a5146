"""Contender 5, what a single-machine user would pick instead: DuckDB SQL, the trusted cleaning month by month.

Reads the meter files of each month (``read_csv``, all text, then cast: a line that does not parse, names
a meter outside the id pattern or stamps a time outside its file's month is rejected, as the formatted
zone does), then applies the same cleaning as the lakehouse's ``trusted/meter_readings``
(configs/sources/meter_readings.yaml) in DuckDB SQL window functions:

1. exact duplicates merged (the first by file and line kept);
2. ``align_to_hour``: timestamps truncated to the hour;
3. ``wh_to_kwh``: a file whose median is more than √1000 × the meter's median of the three trusted months
   before it (at least 168 readings), else × the month's median of the positive file medians (at least 3
   files), else above 100, is divided by 1000;
4. the rules on one snapshot of the kept rows: negative readings rejected, then ``conflicting_readings``
   (same meter and hour, different values) and ``one_reading_per_hour`` merged into the first received;
5. ``stuck_meter``: 5+ identical consecutive readings of a meter (zero excepted) rejected;
6. ``outlier_reading``: more than 8 × max(1.4826 × MAD, 0.05 × |median|) from the median of the meter's
   readings within ±12 h (at least 8 of them), rejected;
7. ``fill_short_gaps``: gaps of 2–7 hours between two kept readings filled linearly, rounded to 3
   decimals half up on the shortest decimal form of the double, as Spark's ``round`` (imputed rows).

The parameters are the config's, fixed here as a user's script would have them. Every step only looks at
the rows still kept. Trusted rows (kept and imputed) and quarantined rows (rejected and merged, by rule) are
written as Parquet under ``--work``; the figures carry ``check``: per month the trusted rows, imputed rows
and the sum of ``reading_kwh``, and the quarantined rows per rule — what :mod:`benchmarks.check` compares
with the lakehouse's tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pyarrow as pa

from benchmarks.contenders import Clock, arguments, meter_files, write_result

ID_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
FACTOR, HISTORY_MONTHS, MIN_HISTORY, MIN_FLEET, MAX_TYPICAL = 1000.0, 3, 168, 3, 100.0
MIN_RUN, STUCK_IGNORED = 5, 0.0
HALF_WINDOW_S, THRESHOLD, MIN_POINTS, MIN_RELATIVE_SCALE = 12 * 3600, 8.0, 8, 0.05
EVERY_S, MAX_GAP, ROUND = 3600, 6, 3
KEPT = "status = 'kept'"

# the month as one table ``a``: every formatted row stays in it with its status (kept, merged, rejected,
# imputed) and the rule that removed it, like the lakehouse's annotated month
FORMAT = f"""
CREATE OR REPLACE TEMP TABLE a AS
SELECT row_number() OVER () AS id, meter_id, ts, v, file, line, 'kept' AS status, NULL::VARCHAR AS rule,
       ts AS orig_ts, v AS orig_v
FROM (
  SELECT trim(device_id) AS meter_id, try_cast(trim("timestamp") AS TIMESTAMPTZ) AS ts,
         try_cast(trim(reading_kwh) AS DOUBLE) AS v, parse_filename(filename) AS file,
         row_number() OVER (PARTITION BY filename ORDER BY rowid) + 1 AS line
  FROM raw
)
WHERE regexp_full_match(meter_id, '{ID_PATTERN}') AND ts IS NOT NULL AND isfinite(v)
  AND strftime(ts, '%Y-%m') = $month
"""
EXACT_DUPLICATES = """
UPDATE a SET status = 'merged', rule = 'exact_duplicate'
WHERE id IN (SELECT id FROM (
  SELECT id, row_number() OVER (PARTITION BY meter_id, ts, v ORDER BY file, line) AS r FROM a) WHERE r > 1)
"""
ALIGN = f"UPDATE a SET ts = date_trunc('hour', ts) WHERE {KEPT} AND ts <> date_trunc('hour', ts)"
# the files to convert: each file's median against its reference (the meter's history, else the fleet)
UNIT_FILES = f"""
WITH f AS (SELECT meter_id, file, median(v) AS med FROM a WHERE {KEPT} AND v IS NOT NULL GROUP BY ALL),
fleet AS (SELECT median(med) FILTER (WHERE med > 0) AS med, count(*) FILTER (WHERE med > 0) AS n FROM f),
h AS (SELECT meter_id, median(v) AS med, count(v) AS n FROM history WHERE v IS NOT NULL GROUP BY ALL)
SELECT f.meter_id, f.file FROM f CROSS JOIN fleet LEFT JOIN h USING (meter_id)
WHERE f.file IS NOT NULL AND CASE
  WHEN h.n >= {MIN_HISTORY} AND h.med > 0 THEN f.med / h.med > {math.sqrt(FACTOR)!r}
  WHEN fleet.n >= {MIN_FLEET} THEN f.med / fleet.med > {math.sqrt(FACTOR)!r}
  ELSE f.med > {MAX_TYPICAL!r} END
"""
UNIT = f"""
UPDATE a SET v = v / {FACTOR!r}
WHERE {KEPT} AND EXISTS (SELECT 1 FROM unit_files u WHERE u.meter_id = a.meter_id AND u.file = a.file)
"""
# every rule on the same snapshot of the kept rows, then: quarantine, then each repair on the rows still kept
RULES = f"""
CREATE OR REPLACE TEMP TABLE a AS
SELECT *, {KEPT} AND v < 0 AS neg,
       {KEPT} AND min(v) OVER blk <> max(v) OVER blk AS conflict,
       {KEPT} AND count(*) OVER blk > 1 AS same_hour
FROM a WINDOW blk AS (PARTITION BY meter_id, ts, {KEPT})
"""
REJECT_NEGATIVE = "UPDATE a SET status = 'rejected', rule = 'non_negative_reading' WHERE neg"
KEEP_FIRST = f"""
UPDATE a SET status = 'merged', rule = $rule
WHERE id IN (SELECT id FROM (
  SELECT id, row_number() OVER (PARTITION BY meter_id, ts ORDER BY file, line) AS r
  FROM a WHERE {KEPT} AND {{flag}}) WHERE r > 1)
"""
STUCK = f"""
UPDATE a SET status = 'rejected', rule = 'stuck_meter'
WHERE id IN (
  WITH s AS (
    SELECT id, meter_id, v, ts, file, line, CASE WHEN v IS NOT DISTINCT FROM lag(v) OVER w THEN 0 ELSE 1 END AS new_run
    FROM a WHERE {KEPT} AND v IS NOT NULL WINDOW w AS (PARTITION BY meter_id ORDER BY ts, file, line)),
  r AS (SELECT id, meter_id, v, sum(new_run) OVER (PARTITION BY meter_id ORDER BY ts, file, line
                                                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS run FROM s)
  SELECT id FROM (SELECT id, v, count(*) OVER (PARTITION BY meter_id, run) AS n FROM r)
  WHERE n >= {MIN_RUN} AND v <> {STUCK_IGNORED!r})
"""


# DuckDB's windowed median and mad (the median of the absolute deviations from the frame's median) are the
# lakehouse's rolling median and MAD over the same frame: the ±12 h of the meter's kept readings
OUTLIERS = f"""
UPDATE a SET status = 'rejected', rule = 'outlier_reading'
WHERE id IN (
  SELECT id FROM (
    SELECT id, v, median(v) OVER win AS med, mad(v) OVER win AS mad, count(v) OVER win AS n
    FROM a WHERE {KEPT} AND v IS NOT NULL
    WINDOW win AS (PARTITION BY meter_id ORDER BY epoch(ts)::BIGINT
                   RANGE BETWEEN {HALF_WINDOW_S} PRECEDING AND {HALF_WINDOW_S} FOLLOWING))
  WHERE n >= {MIN_POINTS} AND abs(v - med) > {THRESHOLD!r} * greatest(1.4826 * mad, {MIN_RELATIVE_SCALE!r} * abs(med)))
"""
IMPUTE = f"""
INSERT INTO a (id, meter_id, ts, v, file, line, status, rule, orig_ts, orig_v)
WITH s AS (
  SELECT meter_id, v, epoch(ts)::BIGINT AS t, lead(epoch(ts)::BIGINT) OVER w AS nt, lead(v) OVER w AS nv
  FROM a WHERE {KEPT} AND v IS NOT NULL AND ts IS NOT NULL WINDOW w AS (PARTITION BY meter_id ORDER BY ts, file, line)),
g AS (SELECT meter_id, v, t, nv, (nt - t) // {EVERY_S} AS steps FROM s
      WHERE (nt - t) % {EVERY_S} = 0 AND (nt - t) / {EVERY_S} >= 2 AND (nt - t) / {EVERY_S} <= {MAX_GAP + 1}),
k AS (SELECT *, unnest(range(1, steps)) AS k FROM g)
SELECT NULL, meter_id, to_timestamp(t + k * {EVERY_S}), round((v + (nv - v) * k / steps)::VARCHAR::DECIMAL(38, 28), {ROUND})::DOUBLE,
       NULL, NULL, 'imputed', NULL, NULL, NULL
FROM k
"""
TRUSTED = (
    "SELECT meter_id, ts, v AS reading_kwh, file AS _source_file, line AS _source_line FROM a WHERE status IN ('kept', 'imputed')"
)
QUARANTINE = (
    "SELECT rule, status AS disposition, file AS _source_file, line AS _source_line, meter_id, orig_ts AS ts,"
    " orig_v AS reading_kwh FROM a WHERE status IN ('rejected', 'merged')"
)
STEPS = ("exact_duplicates", "align_to_hour", "wh_to_kwh", "rules", "stuck_meter", "outlier_reading", "fill_short_gaps")


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> None:
    """Execute a statement and consume its result (DuckDB keeps the connection busy until it is fetched)."""
    con.execute(sql, params).fetchall()


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    _run(con, "SET TimeZone = 'UTC'")
    if threads:
        _run(con, f"SET threads = {int(threads)}")
    return con


def read_month(con: duckdb.DuckDBPyConnection, paths: list[Path]) -> None:
    """The month's files as text into ``raw`` (every column a string: the casts decide what parses)."""
    _run(
        con,
        "CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM read_csv($files, delim = ';', header = true, quote = '\"',"
        " auto_detect = false, filename = true, columns = {'device_id': 'VARCHAR', 'timestamp': 'VARCHAR',"
        " 'reading_kwh': 'VARCHAR'})",
        {"files": [str(p) for p in paths]},
    )


def format_month(con: duckdb.DuckDBPyConnection, month: str) -> int:
    """The month held in ``raw`` cast into the annotated table ``a``; the number of lines rejected."""
    _run(con, FORMAT, {"month": month})
    return con.execute("SELECT (SELECT count(*) FROM raw) - (SELECT count(*) FROM a)").fetchall()[0][0]


def clean_month(con: duckdb.DuckDBPyConnection, history: pa.Table | None) -> tuple[pa.Table, pa.Table]:
    """Clean the formatted month in ``a``; ``history``: the trusted rows (``meter_id``, ``reading_kwh``) of
    the months before, for the unit step. Returns the trusted rows and the quarantined rows."""
    _run(con, EXACT_DUPLICATES)
    _run(con, ALIGN)
    empty = pa.table({"meter_id": pa.array([], pa.string()), "v": pa.array([], pa.float64())})
    hist = history.select(["meter_id", "reading_kwh"]).rename_columns(["meter_id", "v"]) if history is not None else empty
    con.register("history", hist)
    _run(con, f"CREATE OR REPLACE TEMP TABLE unit_files AS {UNIT_FILES}")
    con.unregister("history")
    _run(con, UNIT)
    _run(con, RULES)
    _run(con, REJECT_NEGATIVE)
    for rule, flag in (("conflicting_readings", "conflict"), ("one_reading_per_hour", "same_hour")):
        _run(con, KEEP_FIRST.format(flag=flag), {"rule": rule})
    _run(con, STUCK)
    _run(con, OUTLIERS)
    _run(con, IMPUTE)
    return con.sql(TRUSTED).to_arrow_table(), con.sql(QUARANTINE).to_arrow_table()


def month_figures(trusted: pa.Table, quarantined: pa.Table) -> dict:
    """What the check compares for a month: trusted rows, imputed rows, the sum of the readings, and the
    quarantined rows per rule."""
    import pyarrow.compute as pc

    rules = quarantined.group_by("rule").aggregate([("rule", "count")]).to_pylist() if quarantined.num_rows else []
    total = pc.sum(trusted["reading_kwh"]).as_py() if trusted.num_rows else 0.0
    return {
        "rows": trusted.num_rows,
        "imputed": trusted.num_rows - pc.count(trusted["_source_line"]).as_py(),
        "sum_kwh": round(float(total or 0.0), 6),
        "quarantine": {r["rule"]: r["rule_count"] for r in sorted(rules, key=lambda r: r["rule"])},
    }


def main() -> None:
    import pyarrow.parquet as pq

    args = arguments(
        "benchmarks.contenders.duckdb_trusted",
        lambda p: p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: every core)"),
    )
    clock = Clock()
    out = args.work / "duckdb"
    for sub in ("trusted", "quarantine"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    con = connect(args.threads)
    clock.lap("start")
    done: list[pa.Table] = []
    check: dict[str, dict] = {}
    rows = {"formatted": 0, "trusted": 0, "quarantine": 0}
    rejected_format = 0
    for month, paths in meter_files(args.world, args.months).items():
        read_month(con, paths)
        rows["formatted"] += con.execute("SELECT count(*) FROM raw").fetchall()[0][0]
        rejected_format += format_month(con, month)
        clock.lap("formatted")
        history = pa.concat_tables(done) if done else None
        trusted, quarantined = clean_month(con, history)
        pq.write_table(trusted, out / "trusted" / f"{month}.parquet")
        pq.write_table(quarantined, out / "quarantine" / f"{month}.parquet")
        clock.lap("trusted")
        done = [*done, trusted.select(["meter_id", "reading_kwh"])][-HISTORY_MONTHS:]
        check[month] = month_figures(trusted, quarantined)
        rows["trusted"] += trusted.num_rows
        rows["quarantine"] += quarantined.num_rows
    rows["formatted"] -= rejected_format
    write_result(
        args.result,
        {
            "zone_seconds": {k: v for k, v in clock.stages.items() if k in ("formatted", "trusted")},
            "stages": clock.stages,
            "rows": rows,
            "rejected": {"formatted": rejected_format},
            "check": check,
            "duckdb": duckdb.__version__,
            "threads": con.execute("SELECT current_setting('threads')").fetchall()[0][0],
        },
    )


if __name__ == "__main__":
    main()
