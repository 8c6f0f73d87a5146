"""The demo world's customer systems: a building registry in SQLite and a billing system that disagrees.

**Registry** (``<world>/customers.sqlite``, table ``customers``): one row per building of
:func:`lakehouse.sim.world.make_buildings` — the very buildings whose meters send files — with the customer
id, the meter's device id, name, address, city, building type, heated area, construction year, heating
system and the date the customer was registered.

**Billing** (``<world>/inbox/billing_customers/billing_export_<YYYY-MM>.csv``): the billing system exports
its open accounts every month. It was filled in by other people, so the same customer appears under an
account number instead of the customer id, with the name and address spelled differently::

    account_no;holder_name;address_line;zip;town;tariff;opened_on
    ACC-483920;MILLER, ANNA;12 Pine St.;98123-0412;SEATTLE;residential;2009-03-14

Some registry customers have no billing account (billed elsewhere), some billing accounts belong to no
registry customer (people and businesses without a meter; a few share a name with a registry customer but
live elsewhere), and one customer has two accounts. ``<world>/truth/customer_matches.csv`` records which
account is which customer (``kind``: ``match``, ``billing_only``, ``registry_only``) and which variations
were applied, so a reconciliation can be scored.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse.sim.world import _FIRST, _LAST, _STREETS, CITIES, Building, WorldConfig, make_buildings

REGISTRY_FILE = "customers.sqlite"
BILLING_INBOX = Path("inbox") / "billing_customers"
BILLING_HEADER = ["account_no", "holder_name", "address_line", "zip", "town", "tariff", "opened_on"]
_STREET_ABBREV = {"Street": "St", "Avenue": "Ave", "Road": "Rd", "Lane": "Ln", "Way": "Wy"}

_REGISTRY_DDL = """
CREATE TABLE customers (
    customer_id       TEXT PRIMARY KEY,
    meter_id          TEXT NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    street            TEXT NOT NULL,
    house_number      INTEGER NOT NULL,
    postcode          TEXT NOT NULL,
    city              TEXT NOT NULL,
    building_type     TEXT NOT NULL,
    heated_area_m2    REAL NOT NULL,
    construction_year INTEGER NOT NULL,
    heating_system    TEXT NOT NULL,
    registered_on     DATE NOT NULL
)
"""


@dataclass(frozen=True)
class Account:
    account_no: str
    holder_name: str
    address_line: str
    zip: str
    town: str
    tariff: str
    opened_on: date
    customer_id: str | None  # the truth: None for billing-only accounts
    variations: str


def registered_on(building: Building, seed: int) -> date:
    """The day the customer was registered (before the meters' first month, so every meter is known)."""
    rng = np.random.default_rng([seed, 11, int(building.customer_id[1:])])
    return date(2005, 1, 1) + timedelta(days=int(rng.integers(0, 7 * 365)))


def write_registry(out: Path, buildings: list[Building], seed: int) -> Path:
    """Write the registry database ``out/customers.sqlite`` (replaced atomically); its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / REGISTRY_FILE
    tmp = out / f".{REGISTRY_FILE}.part"
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute(_REGISTRY_DDL)
        con.executemany(
            "INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    b.customer_id,
                    b.device_id,
                    b.name,
                    b.street,
                    b.house_number,
                    b.postcode,
                    b.city,
                    b.building_type,
                    b.heated_area_m2,
                    b.construction_year,
                    b.heating_system,
                    registered_on(b, seed).isoformat(),
                )
                for b in buildings
            ],
        )
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ spellings
def _typo(text: str, rng: np.random.Generator) -> str:
    """One keyboard slip: two neighbouring letters swapped, or a letter doubled or dropped."""
    letters = [i for i in range(1, len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha()]
    if not letters:
        return text
    i = int(rng.choice(letters))
    kind = int(rng.integers(3))
    if kind == 0:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if kind == 1:
        return text[: i + 1] + text[i] + text[i + 1 :]
    return text[:i] + text[i + 1 :]


def spell_name(name: str, rng: np.random.Generator) -> tuple[str, str]:
    first, last = name.split(" ", 1)
    style = ("last_first", "upper", "initial", "typo", "same")[int(rng.integers(5))]
    return {
        "last_first": f"{last.upper()}, {first}",
        "upper": name.upper(),
        "initial": f"{first[0]}. {last}",
        "typo": f"{first} {_typo(last, rng)}",
        "same": name,
    }[style], f"name:{style}"


def spell_address(street: str, number: int, rng: np.random.Generator) -> tuple[str, str]:
    stem, _, kind = street.rpartition(" ")
    abbrev = f"{stem} {_STREET_ABBREV.get(kind, kind)}"
    style = ("number_first", "abbrev", "abbrev_dot", "upper", "number_last")[int(rng.integers(5))]
    return {
        "number_first": f"{number} {street}",
        "abbrev": f"{number} {abbrev}",
        "abbrev_dot": f"{number} {abbrev}.",
        "upper": f"{number} {street.upper()}",
        "number_last": f"{street} {number}",
    }[style], f"address:{style}"


def spell_town(city: str, zip_code: str, rng: np.random.Generator) -> tuple[str, str, str]:
    town_style = ("upper", "same", "with_state", "typo")[int(rng.integers(4))]
    town = {"upper": city.upper(), "same": city, "with_state": f"{city} WA", "typo": _typo(city, rng)}[town_style]
    zip_style = "zip4" if rng.random() < 0.4 else "zip5"
    zip_out = f"{zip_code}-{int(rng.integers(1, 9999)):04d}" if zip_style == "zip4" else zip_code
    return town, zip_out, f"town:{town_style},zip:{zip_style}"


class CustomerWorld:
    """The registry and the billing exports for the buildings of a :class:`WorldConfig`."""

    def __init__(self, config: WorldConfig, *, registry_only_share: float = 0.1, billing_only: int | None = None) -> None:
        self.config = config
        self.buildings = make_buildings(config.meters, config.seed)
        self.registry_only_share = registry_only_share
        #: accounts of people billing knows and the registry does not (default: 15 % of the customers)
        self.billing_only = billing_only if billing_only is not None else max(1, round(0.15 * config.meters))

    def accounts(self, months: list[str]) -> tuple[list[Account], list[str]]:
        """Every billing account, and the ids of registry customers without one."""
        rng = np.random.default_rng([self.config.seed, 2024])
        numbers = iter(rng.choice(np.arange(100000, 999999), size=len(self.buildings) * 2 + self.billing_only * 2, replace=False))
        accounts: list[Account] = []
        n_without = int(round(len(self.buildings) * self.registry_only_share))
        without = set(rng.choice(len(self.buildings), size=min(n_without, len(self.buildings)), replace=False).tolist())
        registry_only = [b.customer_id for i, b in enumerate(self.buildings) if i in without]
        billed = [b for i, b in enumerate(self.buildings) if i not in without]
        twice = billed[int(rng.integers(len(billed)))].customer_id if len(billed) > 1 else None
        for b in billed:
            for copy in range(2 if b.customer_id == twice else 1):
                holder, v_name = spell_name(b.name, rng)
                address, v_addr = spell_address(b.street, b.house_number, rng)
                town, zip_code, v_town = spell_town(b.city, b.postcode, rng)
                opened = registered_on(b, self.config.seed) + timedelta(days=int(rng.integers(0, 60)) + 400 * copy)
                accounts.append(
                    Account(
                        account_no=f"ACC-{next(numbers)}",
                        holder_name=holder,
                        address_line=address,
                        zip=zip_code,
                        town=town,
                        tariff="commercial" if b.building_type == "office" else "residential",
                        opened_on=min(opened, date(2011, 12, 31)),
                        customer_id=b.customer_id,
                        variations=";".join([v_name, v_addr, v_town] + (["second_account"] if copy else [])),
                    )
                )
        first_month = date.fromisoformat(f"{months[0]}-01") if months else date(2012, 1, 1)
        span_days = max(1, 30 * len(months))
        for k in range(self.billing_only):
            lookalike = k % 3 == 0 and bool(self.buildings)
            if lookalike:
                # same name as a registry customer, different address: must not be matched
                name = self.buildings[int(rng.integers(len(self.buildings)))].name
            else:
                name = f"{_FIRST[int(rng.integers(len(_FIRST)))]} {_LAST[int(rng.integers(len(_LAST)))]}"
            street = _STREETS[int(rng.integers(len(_STREETS)))]
            city = CITIES[int(rng.integers(len(CITIES)))]
            holder, v_name = spell_name(name, rng)
            address, v_addr = spell_address(street, int(rng.integers(200, 400)), rng)
            town, zip_code, v_town = spell_town(city, f"98{int(rng.integers(100, 200))}", rng)
            accounts.append(
                Account(
                    account_no=f"ACC-{next(numbers)}",
                    holder_name=holder,
                    address_line=address,
                    zip=zip_code,
                    town=town,
                    tariff=("residential", "commercial")[int(rng.integers(2))],
                    opened_on=first_month + timedelta(days=int(rng.integers(0, span_days))),
                    customer_id=None,
                    variations=";".join([v_name, v_addr, v_town] + (["same_name_as_a_customer"] if lookalike else [])),
                )
            )
        return accounts, registry_only

    def write(self, out: Path, months: list[str]) -> dict:
        """Registry database, one billing export per month, and ``truth/customer_matches.csv`` under ``out``."""
        write_registry(out, self.buildings, self.config.seed)
        accounts, registry_only = self.accounts(months)
        inbox = out / BILLING_INBOX
        inbox.mkdir(parents=True, exist_ok=True)
        files = 0
        for month in months:
            period = pd.Period(month, freq="M")
            month_end = period.end_time.date()
            open_accounts = sorted((a for a in accounts if a.opened_on <= month_end), key=lambda a: a.account_no)
            path = inbox / f"billing_export_{month}.csv"
            tmp = path.with_suffix(".csv.part")
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, delimiter=";", lineterminator="\n")
                writer.writerow(BILLING_HEADER)
                writer.writerows(
                    (a.account_no, a.holder_name, a.address_line, a.zip, a.town, a.tariff, a.opened_on.isoformat())
                    for a in open_accounts
                )
            tmp.rename(path)  # the billing system drops complete exports only
            files += 1
        truth = out / "truth"
        truth.mkdir(parents=True, exist_ok=True)
        with (truth / "customer_matches.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["account_no", "customer_id", "kind", "variations"])
            for a in sorted(accounts, key=lambda a: a.account_no):
                writer.writerow([a.account_no, a.customer_id or "", "match" if a.customer_id else "billing_only", a.variations])
            for cid in sorted(registry_only):
                writer.writerow(["", cid, "registry_only", ""])
        return {
            "customers": len(self.buildings),
            "accounts": len(accounts),
            "matched_accounts": sum(1 for a in accounts if a.customer_id),
            "billing_only": sum(1 for a in accounts if not a.customer_id),
            "registry_only": len(registry_only),
            "billing_files": files,
        }
