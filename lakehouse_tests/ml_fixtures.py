"""Synthetic ``exploitation/consumption_daily`` frames from the demo world's model (tests only)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lakehouse.sim.world import MeterWorld, WorldConfig, months_between


def synthetic_daily(meters: int = 4, start: str = "2012-01", end: str = "2013-06", seed: int = 7) -> pd.DataFrame:
    """One row per meter and day shaped like ``consumption_daily``, consumption = the world's actual kWh
    (plus ``noise_kwh``, the world's noise of that day, which no model may use)."""
    world = MeterWorld(WorldConfig(meters=meters, seed=seed, fault_rate=0.0))
    parts = []
    for month in months_between(start, end):
        for b in world.buildings:
            rng = np.random.default_rng([seed, int(month.replace("-", "")), int(b.device_id[1:])])
            _, _, truth = world.month_rows(b, month, rng)
            parts.append(
                truth.assign(
                    meter_id=b.device_id,
                    golden_id=f"G-{b.customer_id}",
                    building_type=b.building_type,
                    heated_area_m2=b.heated_area_m2,
                    construction_year=b.construction_year,
                    heating_system=b.heating_system,
                    city=b.city,
                )
            )
    t = pd.concat(parts, ignore_index=True)
    date = pd.to_datetime(t["date"])
    temp = t["temp_mean_c"].to_numpy()
    df = pd.DataFrame(
        {
            "meter_id": t["meter_id"],
            "date": date.dt.date,
            "golden_id": t["golden_id"],
            "consumption_kwh": t["actual_kwh"].round(3),
            "readings": 24,
            "hours_covered": 24,
            "max_hour_kwh": (t["actual_kwh"] * 0.065).round(3),
            "max_hour_share": 0.065,
            "max_repeat_run": 1,
            "off_hour_readings": 0,
            "city": t["city"],
            "station": "USW00024233",
            "temp_max_c": temp + 4.0,
            "temp_min_c": temp - 4.0,
            "temp_mean_c": temp,
            "precipitation_mm": 1.0,
            "wind_ms": 3.0,
            "weather_condition": "rain",
            "building_type": t["building_type"],
            "heated_area_m2": t["heated_area_m2"],
            "construction_year": t["construction_year"],
            "heating_system": t["heating_system"],
            "weekday": date.dt.weekday + 1,
            "is_weekend": date.dt.weekday >= 5,
            "is_holiday": False,
            "is_working_day": date.dt.weekday < 5,
            "month": date.dt.strftime("%Y-%m"),
            "noise_kwh": t["noise_kwh"],
        }
    )
    return add_raw_profile(df)


RAW = ("consumption_kwh", "readings", "hours_covered", "max_hour_kwh", "max_hour_share", "max_repeat_run", "off_hour_readings")


def add_raw_profile(df: pd.DataFrame) -> pd.DataFrame:
    """The as-received columns (``raw_*``) of clean days: equal to the trusted ones, no negatives."""
    df = df.copy()
    for c in RAW:
        df[f"raw_{c}"] = df[c]
    df["negative_readings"] = 0
    df["raw_negative_readings"] = 0
    return df


def inject_faults(daily: pd.DataFrame, faults: int, seed: int = 0) -> tuple[pd.DataFrame, set[tuple[str, object]]]:
    """``faults`` meter-days arrive with a fault mark (missing hours, a stuck run, a spike, an off-hour
    stamp, in turn) in their ``raw_*`` columns; the trusted columns stay clean (as after cleaning).
    Returns the frame and the set of faulty ``(meter_id, date)``."""
    df = daily.copy()
    rng = np.random.default_rng(seed)
    faulty = set()
    for k, i in enumerate(sorted(rng.choice(len(df), size=faults, replace=False))):
        kind = k % 4
        if kind == 0:
            df.loc[i, ["raw_readings", "raw_hours_covered"]] = 21
            df.loc[i, "raw_consumption_kwh"] *= 0.85
        elif kind == 1:
            df.loc[i, "raw_max_repeat_run"] = 6
        elif kind == 2:
            df.loc[i, "raw_max_hour_share"] = 0.6
            df.loc[i, "raw_consumption_kwh"] *= 2.5
        else:
            df.loc[i, "raw_off_hour_readings"] = 1
        faulty.add((df.loc[i, "meter_id"], df.loc[i, "date"]))
    return df, faulty
