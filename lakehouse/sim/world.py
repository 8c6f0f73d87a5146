"""The simulated outside world of the demo: buildings, their heating meters, and what the meters send.

Consumption follows real weather (NOAA Seattle daily observations bundled in ``vega_datasets``):
``daily kWh = scale(building) * (16 + 10.5 * HDD)`` with ``HDD = max(0, 16.5 °C - mean temperature)``,
plus Gaussian noise whose realisation is recorded (the floor any forecasting model can reach). Meters send
one text file per device and month, ``meter_<device>_<YYYY-MM>.csv``::

    device_id;timestamp;reading_kwh
    M0001;2012-01-01T00:00:00Z;4.812

Faults are injected at a configurable rate and every corrupted row is recorded with its kind, so cleaning
and anomaly detection can be scored. The lakehouse never imports this package.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

BASE_KWH_PER_DAY = 16.0
KWH_PER_HDD = 10.5
HDD_BASE_C = 16.5
#: share of the day's consumption per hour (night setback, morning and evening peaks); sums to 1
HOURLY_PROFILE = np.array([2, 2, 2, 2, 2.5, 4, 6, 6.5, 5, 4, 3.5, 3.5, 3.5, 3.5, 3.5, 4, 5, 6, 6.5, 6, 5, 4, 3, 2.5])
HOURLY_PROFILE = HOURLY_PROFILE / HOURLY_PROFILE.sum()

FAULT_KINDS = ("negative", "spike", "wh_unit", "duplicate", "conflict", "stuck", "missing", "clock_shift")

CITIES = ("Seattle", "Bellevue", "Redmond", "Tacoma", "Everett", "Kirkland")
BUILDING_TYPES = ("apartment", "detached", "terraced", "office")
HEATING_SYSTEMS = ("gas_boiler", "condensing_boiler", "district_heating", "heat_pump")
_EFFICIENCY = {"gas_boiler": 1.15, "condensing_boiler": 1.0, "district_heating": 0.95, "heat_pump": 0.55}
_FIRST = (
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Frank",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Lukas",
    "Maria",
    "Nils",
    "Olga",
    "Paul",
    "Rosa",
    "Stefan",
    "Tina",
    "Uwe",
    "Vera",
    "Walter",
)
_LAST = (
    "Miller",
    "Schmidt",
    "Garcia",
    "Johnson",
    "Nguyen",
    "Fischer",
    "Weber",
    "Lopez",
    "Brown",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Klein",
    "Wolf",
    "Neumann",
    "Schulz",
    "Keller",
    "Young",
)
_STREETS = (
    "Pine Street",
    "Maple Avenue",
    "Lake Road",
    "Cedar Lane",
    "Harbor Way",
    "Oak Street",
    "Hill Road",
    "Union Street",
    "Market Street",
    "Elm Avenue",
)


def seattle_weather() -> pd.DataFrame:
    """Real daily weather, Seattle 2012-01-01..2015-12-31 (NOAA, via ``vega_datasets``, offline)."""
    from vega_datasets import data

    df = data.seattle_weather()
    df["date"] = pd.to_datetime(df["date"]).dt.date
    return df


@dataclass(frozen=True)
class Building:
    customer_id: str
    device_id: str
    name: str
    street: str
    house_number: int
    postcode: str
    city: str
    building_type: str
    heated_area_m2: float
    construction_year: int
    heating_system: str

    @property
    def scale(self) -> float:
        insulation = 1.25 if self.construction_year < 1970 else 1.0 if self.construction_year < 2000 else 0.75
        return self.heated_area_m2 / 120.0 * insulation * _EFFICIENCY[self.heating_system]


@dataclass
class WorldConfig:
    meters: int = 40
    start: str = "2012-01"
    end: str = "2015-12"  # inclusive
    seed: int = 7
    #: probability per meter-day of each fault kind (0 disables faults)
    fault_rate: float = 0.002
    #: daily noise: sd = noise_rel * expected + noise_abs (kWh)
    noise_rel: float = 0.06
    noise_abs: float = 1.0
    kinds: tuple[str, ...] = field(default=FAULT_KINDS)


def make_buildings(n: int, seed: int) -> list[Building]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        btype = BUILDING_TYPES[rng.integers(len(BUILDING_TYPES))]
        area = {"apartment": 75, "detached": 150, "terraced": 110, "office": 400}[btype]
        out.append(
            Building(
                customer_id=f"C{1000 + i}",
                device_id=f"M{i + 1:04d}",
                name=f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}",
                street=_STREETS[rng.integers(len(_STREETS))],
                house_number=int(rng.integers(1, 200)),
                postcode=f"98{rng.integers(100, 200)}",
                city=CITIES[rng.integers(len(CITIES))],
                building_type=btype,
                heated_area_m2=float(round(area * rng.uniform(0.7, 1.3), 1)),
                construction_year=int(rng.integers(1950, 2015)),
                heating_system=HEATING_SYSTEMS[rng.integers(len(HEATING_SYSTEMS))],
            )
        )
    return out


def months_between(start: str, end: str) -> list[str]:
    return [p.strftime("%Y-%m") for p in pd.period_range(start, end, freq="M")]


def expected_daily_kwh(building: Building, temp_mean_c: np.ndarray) -> np.ndarray:
    hdd = np.maximum(0.0, HDD_BASE_C - temp_mean_c)
    return building.scale * (BASE_KWH_PER_DAY + KWH_PER_HDD * hdd)


class MeterWorld:
    """Generates the meters' monthly files, the truth about consumption and the injected faults."""

    def __init__(self, config: WorldConfig, weather: pd.DataFrame | None = None) -> None:
        self.config = config
        self.weather = weather if weather is not None else seattle_weather()
        self.buildings = make_buildings(config.meters, config.seed)
        self._temp = {row.date: (row.temp_max + row.temp_min) / 2.0 for row in self.weather.itertuples(index=False)}

    def month_rows(self, building: Building, month: str, rng: np.random.Generator):
        """The clean hourly readings of one meter-month, and the day-level truth."""
        days = pd.date_range(f"{month}-01", periods=pd.Period(month).days_in_month, freq="D")
        temps = np.array([self._temp.get(d.date(), np.nan) for d in days])
        temps = np.where(np.isnan(temps), np.nanmean(temps) if np.isfinite(temps).any() else 8.0, temps)
        expected = expected_daily_kwh(building, temps)
        sd = self.config.noise_rel * expected + self.config.noise_abs
        noise = rng.normal(0.0, sd)
        actual = np.maximum(expected + noise, 0.5)
        hourly = np.outer(actual, HOURLY_PROFILE)
        # small hourly jitter that keeps each day's total
        jitter = np.asarray(rng.normal(0.0, 0.03, hourly.shape))
        jitter -= jitter.mean(axis=1, keepdims=True)
        hourly = np.round(hourly * (1.0 + jitter), 3)
        stamps = (days.values[:, None] + np.arange(24)[None, :] * np.timedelta64(1, "h")).ravel()
        truth = pd.DataFrame(
            {
                "device_id": building.device_id,
                "date": days.date,
                "temp_mean_c": temps,
                "expected_kwh": expected,
                "actual_kwh": hourly.sum(axis=1),
            }
        )
        truth["noise_kwh"] = truth["actual_kwh"] - truth["expected_kwh"]
        return pd.to_datetime(stamps).tz_localize("UTC"), hourly.ravel(), truth

    def inject(self, device: str, stamps: pd.DatetimeIndex, values: np.ndarray, rng: np.random.Generator):
        """Apply faults to one meter-month; rows as (timestamp text, value text) and the fault log."""
        rate = self.config.fault_rate
        kinds = set(self.config.kinds) if rate > 0 else set()
        ts = [f"{t}Z" for t in np.datetime_as_string(stamps.tz_convert("UTC").tz_localize(None).values, unit="s")]
        vals = [f"{v:.3f}" for v in values]
        faults: list[dict] = []
        n_days = len(ts) // 24
        file_wh = "wh_unit" in kinds and rng.random() < rate * n_days / 4
        drop: set[int] = set()
        extra: dict[int, float] = {}  # row index -> factor of a second reading at the same timestamp
        for d in range(n_days):
            for kind in sorted(kinds - {"wh_unit"}):
                if rng.random() >= rate:
                    continue
                h = int(rng.integers(2, 20))
                i = d * 24 + h
                if kind == "negative":
                    vals[i] = f"{-abs(values[i]) - 0.1:.3f}"
                elif kind == "spike":
                    vals[i] = f"{values[i] * rng.uniform(20, 50) + 50:.3f}"
                elif kind == "duplicate":
                    extra[i] = 1.0
                elif kind == "conflict":
                    extra[i] = float(rng.uniform(1.5, 3.0))
                elif kind == "stuck":
                    for j in range(i, min(i + 6, len(vals))):
                        vals[j] = vals[i]
                        faults.append({"device_id": device, "ts": ts[j], "kind": kind})
                    continue
                elif kind == "missing":
                    for j in range(i, min(i + 3, len(vals))):
                        drop.add(j)
                        faults.append({"device_id": device, "ts": ts[j], "kind": kind})
                    continue
                elif kind == "clock_shift":
                    shifted = (stamps[i] + pd.Timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
                    ts[i] = shifted
                    faults.append({"device_id": device, "ts": shifted, "kind": kind})
                    continue
                faults.append({"device_id": device, "ts": ts[i], "kind": kind})
        if file_wh:
            vals = [f"{float(v) * 1000:.0f}" for v in vals]
            faults.extend({"device_id": device, "ts": t, "kind": "wh_unit"} for k, t in enumerate(ts) if k not in drop)
        rows = []
        for k in range(len(ts)):
            if k in drop:
                continue
            rows.append((ts[k], vals[k]))
            if k in extra:
                factor = extra[k]
                rows.append((ts[k], vals[k] if factor == 1.0 else f"{float(vals[k]) * factor:.3f}"))
        return rows, faults

    def write(self, out: Path, months: list[str], progress=None) -> dict:
        """Write the inbox files for ``months`` plus ``truth/`` under ``out``; a summary."""
        inbox = out / "inbox" / "meter_readings"
        truth_dir = out / "truth"
        inbox.mkdir(parents=True, exist_ok=True)
        truth_dir.mkdir(parents=True, exist_ok=True)
        truths, faults, files = [], [], 0
        for mi, month in enumerate(months):
            for b in self.buildings:
                # one generator per meter-month: a month regenerates identically on its own
                seed = [self.config.seed, int(month.replace("-", "")), int(b.device_id[1:])]
                rng = np.random.default_rng(seed)
                stamps, values, truth = self.month_rows(b, month, rng)
                rows, flt = self.inject(b.device_id, stamps, values, rng)
                path = inbox / f"meter_{b.device_id}_{month}.csv"
                tmp = path.with_suffix(".csv.part")
                with tmp.open("w", newline="", encoding="utf-8") as fh:
                    w = csv.writer(fh, delimiter=";", lineterminator="\n")
                    w.writerow(["device_id", "timestamp", "reading_kwh"])
                    w.writerows((b.device_id, t, v) for t, v in rows)
                tmp.rename(path)  # devices drop complete files only
                files += 1
                truths.append(truth)
                for f in flt:
                    f["file"] = path.name
                faults.extend(flt)
            if progress:
                progress(mi + 1, len(months), month)
        truth_df = pd.concat(truths, ignore_index=True)
        _merge_csv(truth_dir / "consumption_truth.csv", truth_df, ["device_id", "date"])
        fault_df = pd.DataFrame(faults, columns=["device_id", "ts", "kind", "file"])
        _merge_csv(truth_dir / "faults.csv", fault_df, ["file", "device_id", "ts", "kind"], replace_files=True)
        (truth_dir / "buildings.json").write_text(json.dumps([asdict(b) for b in self.buildings], indent=1))
        return {"files": files, "months": len(months), "meters": len(self.buildings), "faults": len(faults)}


def _merge_csv(path: Path, new: pd.DataFrame, keys: list[str], replace_files: bool = False) -> None:
    """Add ``new`` to a truth file, replacing rows of the same meter-months (reruns are idempotent)."""
    if path.exists():
        old = pd.read_csv(path, dtype=str)
        if replace_files and "file" in new.columns:
            old = old[~old["file"].isin(set(new["file"]))]
        else:
            new_keys = set(map(tuple, new[keys].astype(str).values))
            old = old[[tuple(r) not in new_keys for r in old[keys].astype(str).values]]
        new = pd.concat([old, new.astype(str)], ignore_index=True)
    new.to_csv(path, index=False)
