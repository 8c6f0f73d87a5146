"""Entity reconciliation: registry and billing records → one golden customer per real customer.

Two systems describe the same customers with different ids, spellings and address formats (``MILLER,
ANNA`` / ``Anna Miller``, ``12 Pine St.`` / ``Pine Street`` + ``12``, ``98123-0412`` / ``98123``). The
resolution runs in four pure steps, each testable on its own:

1. **normalize** each side to canonical fields (name tokens, street without number and with standard
   abbreviations, house number, 5-digit postcode, city without state suffix);
2. **block**: candidate pairs share at least one blocking key (postcode, house number + city initial, a
   surname prefix) — the full cross product is never scored;
3. **score** each candidate pair: a weighted sum of per-field similarities (``rapidfuzz``), in [0, 1];
4. **assign**: each billing record goes to its best registry record when the score reaches the threshold.
   A registry customer may own several billing accounts; a billing record matches at most one customer.

:func:`golden_records` then builds one row per real customer (registry fields win, billing fills gaps) and
keeps the source ids and the match scores. :func:`golden_customers` is the Spark entry point of the
``exploitation/golden_customers`` view; the table is updated with a Delta MERGE month after month.

The core works on pandas frames: customer tables are small (one row per customer), and fuzzy scoring is
per-pair Python work that Spark would only slow down.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from rapidfuzz import fuzz

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: canonical spelling of street-kind words (every variant maps to the same token)
STREET_WORDS = {
    "street": "st",
    "str": "st",
    "st": "st",
    "avenue": "ave",
    "av": "ave",
    "ave": "ave",
    "road": "rd",
    "rd": "rd",
    "lane": "ln",
    "ln": "ln",
    "way": "way",
    "wy": "way",
    "drive": "dr",
    "dr": "dr",
    "boulevard": "blvd",
    "blvd": "blvd",
    "place": "pl",
    "pl": "pl",
    "court": "ct",
    "ct": "ct",
}
#: US state suffixes seen after a town name (``Seattle WA``)
STATE_SUFFIXES = {"wa", "washington"}

DEFAULT_WEIGHTS = {"name": 0.3, "street": 0.2, "house_number": 0.2, "postcode": 0.15, "city": 0.15}
CANONICAL = ("id", "name", "street", "house_number", "postcode", "city")


# ------------------------------------------------------------------------------------- normalization
def _ascii_lower(text: Any) -> str:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    return text.lower()


def name_tokens(name: Any) -> list[str]:
    """Lower-case tokens of a person's name; ``LAST, First`` is turned into ``first last``."""
    text = _ascii_lower(name)
    if "," in text:
        last, _, first = text.partition(",")
        text = f"{first} {last}"
    return [t for t in re.split(r"[^a-z]+", text) if t]


def normalize_address(street: Any, house_number: Any = None) -> tuple[str, str]:
    """``(street, number)``: street words in canonical abbreviations, the number apart.

    ``house_number`` may be given separately (registry) or inside ``street`` (``12 Pine St.`` or
    ``Pine Street 12``, billing); digits inside the street text are taken as the number when none is given.
    """
    text = _ascii_lower(street)
    tokens = [t for t in re.split(r"[^a-z0-9]+", text) if t]
    numbers = [t for t in tokens if t.isdigit()]
    words = [STREET_WORDS.get(t, t) for t in tokens if not t.isdigit()]
    number = ""
    if house_number is not None and not (isinstance(house_number, float) and pd.isna(house_number)):
        number = re.sub(r"\D", "", str(house_number).split(".")[0])
    if not number and numbers:
        number = numbers[0]
    return " ".join(words), number.lstrip("0")


def normalize_postcode(code: Any) -> str:
    """The 5-digit ZIP (``98123-0412`` → ``98123``); other formats keep their digits."""
    digits = re.sub(r"\D", "", _ascii_lower(code))
    return digits[:5]


def normalize_city(city: Any) -> str:
    tokens = [t for t in re.split(r"[^a-z]+", _ascii_lower(city)) if t]
    while len(tokens) > 1 and tokens[-1] in STATE_SUFFIXES:
        tokens.pop()
    return " ".join(tokens)


@dataclass(frozen=True)
class Fields:
    """Which columns of a source hold the canonical fields. ``street`` may include the house number."""

    id: str
    name: str
    street: str
    postcode: str
    city: str
    house_number: str | None = None

    @classmethod
    def of(cls, mapping: Mapping[str, str]) -> Fields:
        unknown = sorted(set(mapping) - set(CANONICAL) - {"input"})
        if unknown:
            raise ValueError(f"unknown reconciliation field(s) {unknown}; known: {list(CANONICAL)}")
        missing = [f for f in ("id", "name", "street", "postcode", "city") if f not in mapping]
        if missing:
            raise ValueError(f"reconciliation fields {missing} are not mapped to columns")
        return cls(**{k: v for k, v in mapping.items() if k != "input"})


def normalize(df: pd.DataFrame, fields: Fields) -> pd.DataFrame:
    """One row per source record with canonical fields: ``src_id, name, street, number, postcode, city``."""
    needed = [c for c in (fields.id, fields.name, fields.street, fields.postcode, fields.city, fields.house_number) if c]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are missing; the frame has {list(df.columns)}")
    numbers = df[fields.house_number] if fields.house_number else pd.Series([None] * len(df), index=df.index)
    addresses = [normalize_address(s, n) for s, n in zip(df[fields.street], numbers, strict=True)]
    tokens = [name_tokens(n) for n in df[fields.name]]
    out = pd.DataFrame(
        {
            "src_id": df[fields.id].astype(str).to_numpy(),
            "name": [" ".join(t) for t in tokens],
            "street": [a[0] for a in addresses],
            "number": [a[1] for a in addresses],
            "postcode": [normalize_postcode(p) for p in df[fields.postcode]],
            "city": [normalize_city(c) for c in df[fields.city]],
        }
    )
    if out["src_id"].duplicated().any():
        dupes = sorted(out.loc[out["src_id"].duplicated(), "src_id"].unique())[:5]
        raise ValueError(f"ids must be unique within a source, repeated: {dupes}")
    return out


# ------------------------------------------------------------------------------------------ blocking
def blocking_keys(row: pd.Series) -> set[str]:
    """The blocks a normalized record falls in; records sharing any block become a candidate pair."""
    keys = set()
    if row["postcode"]:
        keys.add(f"zip:{row['postcode']}")
    if row["number"] and row["city"]:
        keys.add(f"num:{row['number']}:{row['city'][:1]}")
    tokens = row["name"].split()
    long = [t for t in tokens if len(t) > 1]
    if long:
        keys.add(f"name:{max(long, key=len)[:3]}")
    return keys


def candidate_pairs(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """``left_id, right_id`` of every pair sharing a blocking key (no full cross product)."""
    index: dict[str, list[str]] = {}
    for _, row in left.iterrows():
        for k in blocking_keys(row):
            index.setdefault(k, []).append(row["src_id"])
    pairs = set()
    for _, row in right.iterrows():
        for k in blocking_keys(row):
            for lid in index.get(k, ()):
                pairs.add((lid, row["src_id"]))
    return pd.DataFrame(sorted(pairs), columns=["left_id", "right_id"])


# ------------------------------------------------------------------------------------------- scoring
def name_similarity(a: str, b: str) -> float:
    """Token-order-insensitive similarity in [0, 1]; an initial (``a.``) matches a name starting with it."""
    ta, tb = a.split(), b.split()
    if not ta or not tb:
        return 0.0

    def expand(short: list[str], full: list[str]) -> list[str]:
        out = []
        for t in short:
            if len(t) == 1:
                hit = next((f for f in full if len(f) > 1 and f[0] == t), None)
                out.append(hit or t)
            else:
                out.append(t)
        return out

    ta, tb = expand(ta, tb), expand(tb, ta)
    return fuzz.token_sort_ratio(" ".join(ta), " ".join(tb)) / 100.0


def field_scores(left: pd.Series, r: pd.Series) -> dict[str, float]:
    return {
        "name": name_similarity(left["name"], r["name"]),
        "street": fuzz.ratio(left["street"], r["street"]) / 100.0 if left["street"] and r["street"] else 0.0,
        "house_number": float(bool(left["number"]) and left["number"] == r["number"]),
        "postcode": float(bool(left["postcode"]) and left["postcode"] == r["postcode"]),
        "city": fuzz.ratio(left["city"], r["city"]) / 100.0 if left["city"] and r["city"] else 0.0,
    }


def score_pairs(
    left: pd.DataFrame, right: pd.DataFrame, pairs: pd.DataFrame, weights: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """``pairs`` with one similarity column per field and their weighted ``score`` in [0, 1]."""
    weights = dict(weights or DEFAULT_WEIGHTS)
    unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown weight(s) {unknown}; fields are {sorted(DEFAULT_WEIGHTS)}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("reconciliation weights must sum to a positive number")
    lrows = left.set_index("src_id")
    rrows = right.set_index("src_id")
    rows = []
    for lid, rid in pairs[["left_id", "right_id"]].itertuples(index=False):
        s = field_scores(lrows.loc[lid], rrows.loc[rid])
        s["score"] = sum(weights.get(k, 0.0) * v for k, v in s.items()) / total
        rows.append({"left_id": lid, "right_id": rid, **s})
    cols = ["left_id", "right_id", *DEFAULT_WEIGHTS, "score"]
    return pd.DataFrame(rows, columns=cols)


def assign(scored: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Each right record's best left record when its score reaches ``threshold`` (ties: smallest id)."""
    ok = scored[scored["score"] >= threshold]
    if ok.empty:
        return ok.copy()
    ok = ok.sort_values(["right_id", "score", "left_id"], ascending=[True, False, True])
    return ok.drop_duplicates("right_id", keep="first").reset_index(drop=True)


# ---------------------------------------------------------------------------------------- resolution
@dataclass
class Resolution:
    """The outcome of one reconciliation: scored candidates, accepted matches and figures."""

    matches: pd.DataFrame  # left_id (registry), right_id (billing), per-field scores, score
    scored: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def resolve(
    registry: pd.DataFrame,
    billing: pd.DataFrame,
    registry_fields: Fields,
    billing_fields: Fields,
    *,
    weights: Mapping[str, float] | None = None,
    threshold: float = 0.8,
) -> Resolution:
    """Match billing records to registry records (see the module docstring for the steps)."""
    left = normalize(registry, registry_fields)
    right = normalize(billing, billing_fields)
    pairs = candidate_pairs(left, right)
    scored = score_pairs(left, right, pairs, weights)
    matches = assign(scored, threshold)
    cross = len(left) * len(right)
    stats = {
        "registry_records": len(left),
        "billing_records": len(right),
        "candidate_pairs": len(pairs),
        "cross_product_pairs": cross,
        "reduction_ratio": round(1 - len(pairs) / cross, 4) if cross else 0.0,
        "matched_billing_records": len(matches),
        "matched_customers": int(matches["left_id"].nunique()) if len(matches) else 0,
        "threshold": threshold,
    }
    return Resolution(matches=matches, scored=scored, stats=stats)


def golden_records(
    registry: pd.DataFrame,
    billing: pd.DataFrame,
    resolution: Resolution,
    registry_fields: Fields,
    billing_fields: Fields,
    *,
    registry_columns: list[str] | None = None,
    billing_columns: list[str] | None = None,
    month: str | None = None,
) -> pd.DataFrame:
    """One row per real customer: a registry customer with its billing accounts, or a billing-only account.

    Columns: ``golden_id`` (``G-<registry id>`` or ``G-<billing id>`` for billing-only customers),
    ``registry_id``, ``billing_ids`` (``;``-joined, sorted), ``match_score`` (the lowest accepted score of
    its accounts; null without a match), ``match_status`` (``matched`` / ``registry_only`` /
    ``billing_only``), the canonical ``name, street, house_number, postcode, city`` (registry wins; billing
    fills customers the registry does not know, normalized), then ``registry_columns`` from the registry and
    ``billing_columns`` from the (first) billing account, and ``first_seen_month``/``last_seen_month``.
    """
    registry_columns = list(registry_columns or [])
    billing_columns = list(billing_columns or [])
    matches = resolution.matches
    by_customer: dict[str, list[tuple[str, float]]] = {}
    for lid, rid, score in matches[["left_id", "right_id", "score"]].itertuples(index=False):
        by_customer.setdefault(lid, []).append((rid, float(score)))
    matched_billing = set(matches["right_id"]) if len(matches) else set()
    reg = registry.assign(_id=registry[registry_fields.id].astype(str)).set_index("_id")
    bil = billing.assign(_id=billing[billing_fields.id].astype(str)).set_index("_id")
    bnorm = normalize(billing, billing_fields).set_index("src_id")
    rows = []
    for rid in sorted(reg.index):
        r = reg.loc[rid]
        accounts = sorted(by_customer.get(rid, []))
        first = bil.loc[accounts[0][0]] if accounts else None
        row = {
            "golden_id": f"G-{rid}",
            "registry_id": rid,
            "billing_ids": ";".join(a for a, _ in accounts) or None,
            "match_score": min(s for _, s in accounts) if accounts else None,
            "match_status": "matched" if accounts else "registry_only",
            "name": r[registry_fields.name],
            "street": r[registry_fields.street],
            "house_number": str(r[registry_fields.house_number]) if registry_fields.house_number else None,
            "postcode": str(r[registry_fields.postcode]),
            "city": r[registry_fields.city],
        }
        row.update({c: r[c] for c in registry_columns})
        row.update({c: (first[c] if first is not None else None) for c in billing_columns})
        rows.append(row)
    for bid in sorted(set(bil.index) - matched_billing):
        b, n = bil.loc[bid], bnorm.loc[bid]
        row = {
            "golden_id": f"G-{bid}",
            "registry_id": None,
            "billing_ids": bid,
            "match_score": None,
            "match_status": "billing_only",
            "name": b[billing_fields.name],
            "street": n["street"],
            "house_number": n["number"] or None,
            "postcode": n["postcode"],
            "city": n["city"].title(),
        }
        row.update({c: None for c in registry_columns})
        row.update({c: b[c] for c in billing_columns})
        rows.append(row)
    out = pd.DataFrame(rows)
    out["first_seen_month"] = month
    out["last_seen_month"] = month
    return out


# -------------------------------------------------------------------------------------- Spark entry
def golden_customers(inputs: dict[str, DataFrame], month: str, options: dict[str, Any]) -> DataFrame:
    """View transform: the month's registry and billing snapshots → golden customer rows of that month.

    ``options``: ``registry`` / ``billing`` map canonical fields to columns (plus ``input``: the input
    alias, default ``registry``/``billing``); ``registry_columns`` / ``billing_columns`` are carried over;
    ``weights`` and ``threshold`` tune the scoring. The factory MERGEs the rows into the golden table.
    """
    reg_opts, bil_opts = dict(options["registry"]), dict(options["billing"])
    reg_in, bil_in = reg_opts.get("input", "registry"), bil_opts.get("input", "billing")
    for name in (reg_in, bil_in):
        if name not in inputs:
            raise KeyError(f"golden_customers needs input {name!r}; inputs are {sorted(inputs)}")
    reg_fields, bil_fields = Fields.of(reg_opts), Fields.of(bil_opts)
    registry = inputs[reg_in].toPandas()
    billing = inputs[bil_in].toPandas()
    registry_columns = list(options.get("registry_columns", []))
    billing_columns = list(options.get("billing_columns", []))
    resolution = resolve(
        registry,
        billing,
        reg_fields,
        bil_fields,
        weights=options.get("weights"),
        threshold=float(options.get("threshold", 0.8)),
    )
    golden = golden_records(
        registry,
        billing,
        resolution,
        reg_fields,
        bil_fields,
        registry_columns=registry_columns,
        billing_columns=billing_columns,
        month=month,
    )
    spark = inputs[reg_in].sparkSession
    schema = _golden_schema(inputs[reg_in], inputs[bil_in], registry_columns, billing_columns)
    return spark.createDataFrame(_python_rows(golden[schema.fieldNames()], schema), schema)


def _python_rows(df: pd.DataFrame, schema) -> list[tuple]:
    """Rows of plain Python values of the schema's types (``None`` for missing) for ``createDataFrame``
    (pandas turns an int column with gaps into floats)."""
    from pyspark.sql import types as T

    def caster(dtype):
        if isinstance(dtype, (T.IntegerType, T.LongType, T.ShortType, T.ByteType)):
            return int
        if isinstance(dtype, (T.DoubleType, T.FloatType)):
            return float
        if isinstance(dtype, T.StringType):
            return str
        return lambda v: v.item() if hasattr(v, "item") else v

    casts = [caster(f.dataType) for f in schema.fields]

    def plain(v: Any, cast) -> Any:
        if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
            return None
        return cast(v)

    return [tuple(plain(v, c) for v, c in zip(row, casts, strict=True)) for row in df.itertuples(index=False)]


def _golden_schema(registry: DataFrame, billing: DataFrame, registry_columns: list[str], billing_columns: list[str]):
    from pyspark.sql import types as T

    fields = [
        T.StructField("golden_id", T.StringType(), False),
        T.StructField("registry_id", T.StringType()),
        T.StructField("billing_ids", T.StringType()),
        T.StructField("match_score", T.DoubleType()),
        T.StructField("match_status", T.StringType(), False),
        T.StructField("name", T.StringType()),
        T.StructField("street", T.StringType()),
        T.StructField("house_number", T.StringType()),
        T.StructField("postcode", T.StringType()),
        T.StructField("city", T.StringType()),
    ]
    fields += [T.StructField(c, registry.schema[c].dataType) for c in registry_columns]
    fields += [T.StructField(c, billing.schema[c].dataType) for c in billing_columns]
    fields += [T.StructField("first_seen_month", T.StringType()), T.StructField("last_seen_month", T.StringType())]
    return T.StructType(fields)
