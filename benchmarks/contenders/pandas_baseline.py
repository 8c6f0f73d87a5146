"""Contender 2, the baseline a user would write without a lakehouse: plain pandas over the CSV files.

Reads every file into one DataFrame (strings), parses and casts, rejects what does not parse or lands in
another month than its file's, drops exact duplicates (first copy kept), quarantines negative readings,
aggregates per meter and UTC day, and writes each stage to Parquet. No line-level lineage beyond
``file:line`` of rows pandas could split; malformed lines are skipped by ``on_bad_lines="skip"``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.contenders import Clock, arguments, meter_files, write_result


def main() -> None:
    args = arguments("benchmarks.contenders.pandas_baseline")
    clock = Clock()
    out = args.work / "pandas"
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for month, paths in meter_files(args.world, args.months).items():
        for path in paths:
            df = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False, on_bad_lines="skip")
            df["_source_file"] = path.name
            df["_source_line"] = np.arange(2, len(df) + 2)
            df["_file_month"] = month
            frames.append(df)
    raw = pd.concat(frames, ignore_index=True)
    del frames
    clock.lap("read")

    meter = raw["device_id"].str.strip().replace("", np.nan)
    ts = pd.to_datetime(raw["timestamp"].str.strip(), format="ISO8601", utc=True, errors="coerce")
    kwh = pd.to_numeric(raw["reading_kwh"].str.strip(), errors="coerce")
    kwh = kwh.where(np.isfinite(kwh))
    file_month = raw["_file_month"].str.replace("-", "").astype(int)
    ok = meter.notna() & ts.notna() & kwh.notna() & (ts.dt.year * 100 + ts.dt.month == file_month)
    formatted = pd.DataFrame(
        {
            "meter_id": meter[ok],
            "ts": ts[ok],
            "reading_kwh": kwh[ok],
            "_source_file": raw["_source_file"][ok],
            "_source_line": raw["_source_line"][ok],
            "month": raw["_file_month"][ok],
        }
    )
    rejected_parse = int((~ok).sum())
    del raw, meter, ts, kwh, ok
    formatted.to_parquet(out / "formatted.parquet", index=False)
    clock.lap("formatted")

    dup = formatted.duplicated(subset=["meter_id", "ts", "reading_kwh"], keep="first")
    negative = formatted["reading_kwh"] < 0
    trusted = formatted[~dup & ~negative]
    trusted.to_parquet(out / "trusted.parquet", index=False)
    rejected_rules = int((dup | negative).sum())
    clock.lap("trusted")

    daily = (
        trusted.assign(date=trusted["ts"].dt.date)
        .groupby(["meter_id", "date"], sort=False)
        .agg(consumption_kwh=("reading_kwh", "sum"), hours=("reading_kwh", "size"))
        .reset_index()
    )
    daily["consumption_kwh"] = daily["consumption_kwh"].round(3)
    daily.to_parquet(out / "daily.parquet", index=False)
    clock.lap("exploitation")
    write_result(
        args.result,
        {
            "zone_seconds": clock.stages,
            "rows": {"formatted": len(formatted), "trusted": len(trusted), "exploitation": len(daily)},
            "rejected": {"parse": rejected_parse, "rules": rejected_rules},
        },
    )


if __name__ == "__main__":
    main()
