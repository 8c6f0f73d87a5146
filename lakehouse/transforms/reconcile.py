"""Entity reconciliation: registry and billing records → one golden customer per real customer.

Two systems describe the same customers with different ids, spellings and address formats (``MILLER,
ANNA`` / ``Anna Miller``, ``12 Pine St.`` / ``Pine Street`` + ``12``, ``98123-0412`` / ``98123``). The
resolution runs in four steps, each testable on its own:

1. **normalize** each side to canonical fields (name tokens, street without number and with standard
   abbreviations, house number, 5-digit postcode, city without state suffix);
2. **block**: candidate pairs share at least one blocking key (postcode, house number + city initial, a
   surname prefix) — the full cross product is never scored;
3. **score** each candidate pair: a weighted sum of per-field similarities (``rapidfuzz``), in [0, 1];
4. **assign**: each billing record goes to its best registry record when the score reaches the threshold.
   A registry customer may own several billing accounts; a billing record matches at most one customer.

:func:`golden_frame` then builds one row per real customer (registry fields win, billing fills gaps) and
keeps the source ids and the match scores. :func:`golden_customers` is the Spark entry point of the
``exploitation/golden_customers`` view; the table is updated with a Delta MERGE month after month.

The per-record work is pure pandas (:func:`normalize`, :func:`blocking_keys`, :func:`score_pairs`) and runs
inside ``mapInPandas`` on the executors; blocking is a join on the exploded keys, assignment a window and
the golden rows joins, all in Spark: the driver never holds a source's rows, whatever its size.

The Spark steps reconcile a batch of months at once: every record carries the month it is read for
(:data:`MONTH`), and the month is part of every key — of the ids checked, the blocking join, the
scoring, the assignment window and the golden rows' joins — so no record meets a record of another month,
and each month's rows are those the month reconciled alone gives.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
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

#: the column holding the month a record is read for (:data:`lakehouse.io.lake.PARTITION_COLUMN`)
MONTH = "month"
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

    @property
    def columns(self) -> list[str]:
        """The source columns the fields read, each once."""
        named = (self.id, self.name, self.street, self.postcode, self.city, self.house_number)
        return list(dict.fromkeys(c for c in named if c))


def require_columns(columns: list[str], fields: Fields) -> None:
    """Raise ``KeyError`` naming the mapped columns a frame with ``columns`` lacks."""
    missing = [c for c in fields.columns if c not in columns]
    if missing:
        raise KeyError(f"columns {missing} are missing; the frame has {list(columns)}")


def normalize(df: pd.DataFrame, fields: Fields) -> pd.DataFrame:
    """One row per source record with canonical fields: ``src_id, name, street, number, postcode, city``.

    Row by row, so it runs on any batch of a source; ids are checked over the whole source (null,
    repeated) by :func:`check_ids`.
    """
    require_columns(list(df.columns), fields)
    numbers = df[fields.house_number] if fields.house_number else pd.Series([None] * len(df), index=df.index)
    addresses = [normalize_address(s, n) for s, n in zip(df[fields.street], numbers, strict=True)]
    tokens = [name_tokens(n) for n in df[fields.name]]
    return pd.DataFrame(
        {
            "src_id": df[fields.id].astype(str).to_numpy(),
            "name": [" ".join(t) for t in tokens],
            "street": [a[0] for a in addresses],
            "number": [a[1] for a in addresses],
            "postcode": [normalize_postcode(p) for p in df[fields.postcode]],
            "city": [normalize_city(c) for c in df[fields.city]],
        }
    )


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


def field_scores(left: Mapping[str, Any], r: Mapping[str, Any]) -> dict[str, float]:
    return {
        "name": name_similarity(left["name"], r["name"]),
        "street": fuzz.ratio(left["street"], r["street"]) / 100.0 if left["street"] and r["street"] else 0.0,
        "house_number": float(bool(left["number"]) and left["number"] == r["number"]),
        "postcode": float(bool(left["postcode"]) and left["postcode"] == r["postcode"]),
        "city": fuzz.ratio(left["city"], r["city"]) / 100.0 if left["city"] and r["city"] else 0.0,
    }


def checked_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """The scoring weights (default :data:`DEFAULT_WEIGHTS`), refused when a field is unknown or they sum to 0."""
    weights = dict(weights or DEFAULT_WEIGHTS)
    unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown weight(s) {unknown}; fields are {sorted(DEFAULT_WEIGHTS)}")
    if sum(weights.values()) <= 0:
        raise ValueError("reconciliation weights must sum to a positive number")
    return weights


def score_pairs(
    left: pd.DataFrame, right: pd.DataFrame, pairs: pd.DataFrame, weights: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """``pairs`` with one similarity column per field and their weighted ``score`` in [0, 1]."""
    weights = checked_weights(weights)
    total = sum(weights.values())
    # plain dicts: a pandas row lookup per pair would cost more than the scoring
    lrows = left.set_index("src_id").to_dict("index")
    rrows = right.set_index("src_id").to_dict("index")
    rows = []
    for lid, rid in pairs[["left_id", "right_id"]].itertuples(index=False):
        s = field_scores(lrows[lid], rrows[rid])
        s["score"] = sum(weights.get(k, 0.0) * v for k, v in s.items()) / total
        rows.append({"left_id": lid, "right_id": rid, **s})
    cols = ["left_id", "right_id", *DEFAULT_WEIGHTS, "score"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------ Spark (executors)
#: what :func:`normalize_frame` yields per record: its month, the canonical fields and the sorted blocking keys
NORMALIZED_SCHEMA = (
    f"{MONTH} string, src_id string, name string, street string, number string, postcode string, city string, keys array<string>"
)
_NORMALIZED = ("name", "street", "number", "postcode", "city")
#: a billing record's normalized fields kept to the golden row (billing-only customers)
_KEPT = tuple(f"right_{c}" for c in _NORMALIZED[1:])
#: what :func:`score_candidates` yields per candidate pair (or per right record without one)
SCORED_SCHEMA = ", ".join(
    [f"{MONTH} string", "right_id string", *(f"{c} string" for c in _KEPT), "left_id string", "score double"]
)


def check_ids(sources: Mapping[str, tuple[DataFrame, Fields]]) -> None:
    """Ids are the records' identity within a month: a null id, or an id repeated within a month of a
    source, is refused, naming the source, the month and up to five ids. One job over all sources and
    months; only the offending ids (up to five per source and month) come back to the driver, and the
    earliest month with one is reported."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ids = None
    for source, (frame, fields) in sources.items():
        require_columns(frame.columns, fields)
        side = frame.select(F.lit(source).alias("source"), MONTH, frame[fields.id].cast("string").alias("id"))
        ids = side if ids is None else ids.unionByName(side)
    if ids is None:
        return
    counts = ids.groupBy("source", MONTH, "id").count()
    bad = counts.where(F.col("id").isNull() | (F.col("count") > 1))
    first = Window.partitionBy("source", MONTH).orderBy(F.col("id").asc_nulls_first())
    rows = bad.withColumn("_n", F.row_number().over(first)).where(F.col("_n") <= 5).drop("_n").collect()
    for month in sorted({r[MONTH] for r in rows}):
        for source in sources:
            found = sorted(
                (r for r in rows if r["source"] == source and r[MONTH] == month), key=lambda r: (r["id"] is not None, r["id"])
            )
            if found and found[0]["id"] is None:
                column = sources[source][1].id
                raise ValueError(
                    f"{source}, month {month}: ids must not be null; {found[0]['count']} record(s) have no {column!r}"
                )
            if found:
                raise ValueError(
                    f"{source}, month {month}: ids must be unique within a source's month, repeated: {[r['id'] for r in found]}"
                )


def normalize_frame(frame: DataFrame, fields: Fields) -> DataFrame:
    """:func:`normalize` and :func:`blocking_keys` of a Spark frame, batch by batch on the executors: one
    row per record with its :data:`MONTH`, ``src_id`` (the id as text), the canonical fields and ``keys``."""
    require_columns(frame.columns, fields)
    id_column = frame[fields.id].cast("string").alias(fields.id)
    cols = [frame[MONTH], id_column, *(frame[c] for c in fields.columns if c != fields.id)]

    def normalized(batches):
        for batch in batches:
            out = normalize(batch, fields)
            out.insert(0, MONTH, batch[MONTH].to_numpy())
            out["keys"] = [sorted(blocking_keys(row)) for _, row in out.iterrows()]
            yield out

    return frame.select(*cols).mapInPandas(normalized, NORMALIZED_SCHEMA)


def candidate_pairs(left: DataFrame, right: DataFrame) -> DataFrame:
    """Every right record with each left record of its month sharing a blocking key (a join on the month
    and the exploded keys, never the cross product), both records' fields as ``left_*`` / ``right_*``. A
    right record with a key no left record shares (or without keys) also has one row with null ``left_*``,
    so every right record is kept."""
    from pyspark.sql import functions as F

    def side(frame: DataFrame, name: str, explode) -> DataFrame:
        fields = (F.col(c).alias(f"{name}_{c}") for c in _NORMALIZED)
        return frame.select(MONTH, F.col("src_id").alias(f"{name}_id"), *fields, explode("keys").alias("key"))

    joined = side(right, "right", F.explode_outer).join(side(left, "left", F.explode), [MONTH, "key"], "left")
    return joined.drop("key").dropDuplicates([MONTH, "right_id", "left_id"])


def score_candidates(pairs: DataFrame, weights: Mapping[str, float] | None = None) -> DataFrame:
    """:func:`score_pairs` of each candidate pair on the executors, a month at a time (a record's fields
    are those of its month; ``score`` null for a right record without candidates); the right record's
    month and normalized address are kept."""
    weights = checked_weights(weights)

    def records(batch: pd.DataFrame, side: str) -> pd.DataFrame:
        names = {f"{side}_id": "src_id", **{f"{side}_{c}": c for c in _NORMALIZED}}
        return batch[list(names)].rename(columns=names).drop_duplicates("src_id")

    def scored(batches):
        for batch in batches:
            out = batch[[MONTH, "right_id", *_KEPT, "left_id"]].assign(score=float("nan"))
            for _, pairs in batch[batch["left_id"].notna()].groupby(MONTH, sort=False):
                scores = score_pairs(records(pairs, "left"), records(pairs, "right"), pairs, weights)
                out.loc[pairs.index, "score"] = scores["score"].to_numpy()
            yield out

    return pairs.mapInPandas(scored, SCORED_SCHEMA)


def assign(scored: DataFrame, threshold: float) -> DataFrame:
    """One row per right record and month: its best left record of that month (``left_id``, ``score``)
    when the score reaches ``threshold``, ties to the smallest left id; nulls when none does. A left record
    may own several."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ok = F.coalesce(F.col("score") >= threshold, F.lit(False))
    best = Window.partitionBy(MONTH, "right_id").orderBy(ok.desc(), F.col("score").desc(), F.col("left_id").asc())
    ranked = scored.withColumn("_rank", F.row_number().over(best)).where(F.col("_rank") == 1)
    return ranked.select(
        MONTH, "right_id", *_KEPT, F.when(ok, F.col("left_id")).alias("left_id"), F.when(ok, F.col("score")).alias("score")
    )


# ---------------------------------------------------------------------------------------- golden rows
def golden_frame(
    registry: DataFrame,
    billing: DataFrame,
    assigned: DataFrame,
    registry_fields: Fields,
    billing_fields: Fields,
    *,
    registry_columns: list[str],
    billing_columns: list[str],
) -> DataFrame:
    """One row per real customer and month: a registry customer with its billing accounts of that month,
    or a billing-only account.

    ``assigned`` is :func:`assign`'s outcome per billing record; every frame has the :data:`MONTH`
    column, and records are joined within their month only. Columns: ``golden_id`` (``G-<registry id>``
    or ``G-<billing id>`` for billing-only customers), ``registry_id``, ``billing_ids`` (``;``-joined,
    sorted), ``match_score`` (the lowest accepted score of its accounts; null without a match),
    ``match_status`` (``matched`` / ``registry_only`` / ``billing_only``), the canonical ``name, street,
    house_number, postcode, city`` (registry wins; billing fills customers the registry does not know,
    normalized), then ``registry_columns`` from the registry and ``billing_columns`` from the (first)
    billing account, ``first_seen_month``/``last_seen_month`` (the row's month) and :data:`MONTH`.
    """
    from pyspark.sql import functions as F

    # one group per registry customer with accounts, and one per billing record without a customer
    groups = assigned.groupBy(
        MONTH, F.col("left_id").alias("registry_id"), F.when(F.col("left_id").isNull(), F.col("right_id")).alias("_alone")
    ).agg(
        F.concat_ws(";", F.sort_array(F.collect_list("right_id"))).alias("billing_ids"),
        F.min("score").alias("match_score"),
        F.min("right_id").alias("_bid"),
        *(F.first(c).alias(c) for c in _KEPT),  # a billing-only group has one record
    )
    own = list(dict.fromkeys([*registry_fields.columns, *registry_columns]))
    reg = registry.select(
        registry[MONTH],
        registry[registry_fields.id].cast("string").alias("registry_id"),
        F.lit(True).alias("_known"),
        *(registry[c].alias(f"_r_{c}") for c in own),
    )
    bil = billing.select(
        billing[MONTH],
        billing[billing_fields.id].cast("string").alias("_bid"),
        billing[billing_fields.name].cast("string").alias("_name"),
        *(billing[c].alias(f"_b_{c}") for c in billing_columns),
    )
    rows = reg.join(groups, [MONTH, "registry_id"], "full_outer").join(bil, [MONTH, "_bid"], "left")
    known = F.col("_known").isNotNull()

    def registry_or(field: str, billing_value):
        column = getattr(registry_fields, field)
        value = F.col(f"_r_{column}").cast("string") if column else F.lit(None).cast("string")
        return F.when(known, value).otherwise(billing_value).alias(field)

    status = F.when(~known, "billing_only").when(F.col("billing_ids").isNull(), "registry_only").otherwise("matched")
    return rows.select(
        # ids are checked non-null: the empty string only declares golden_id non-nullable, as the table has it
        F.concat(F.lit("G-"), F.coalesce("registry_id", "_bid", F.lit(""))).alias("golden_id"),
        "registry_id",
        "billing_ids",
        F.col("match_score").cast("double").alias("match_score"),
        status.alias("match_status"),
        registry_or("name", F.col("_name")),
        registry_or("street", F.col("right_street")),
        registry_or("house_number", F.when(F.col("right_number") != "", F.col("right_number"))),
        registry_or("postcode", F.col("right_postcode")),
        # the normalized city is lower-case words split by single spaces: initcap is str.title there
        registry_or("city", F.initcap("right_city")),
        *(F.col(f"_r_{c}").alias(c) for c in registry_columns),
        *(F.col(f"_b_{c}").alias(c) for c in billing_columns),
        # every row has its month (the joins' key): the empty string only declares them non-nullable, as
        # the table has them
        F.coalesce(F.col(MONTH).cast("string"), F.lit("")).alias("first_seen_month"),
        F.coalesce(F.col(MONTH).cast("string"), F.lit("")).alias("last_seen_month"),
        MONTH,
    )


# -------------------------------------------------------------------------------------- Spark entry
def golden_customers(inputs: dict[str, DataFrame], months: list[str], options: dict[str, Any]) -> DataFrame:
    """View transform of a batch of months: each month's registry and billing snapshots → golden customer
    rows of that month, all months of ``months`` in one plan.

    Each input holds, for every month of the batch, the snapshot that month reads, its rows tagged with
    that month in the :data:`MONTH` column (docs/ml.md, "View transforms"); every result row carries its
    month there too, and each month's rows are those the month computed alone gives. ``options``:
    ``registry`` / ``billing`` map canonical fields to columns (plus ``input``: the input alias, default
    ``registry``/``billing``); ``registry_columns`` / ``billing_columns`` are carried over; ``weights`` and
    ``threshold`` tune the scoring. Every step runs on the executors and no input row reaches the driver;
    the factory MERGEs each month's rows into the golden table.
    """
    reg_opts, bil_opts = dict(options["registry"]), dict(options["billing"])
    reg_in, bil_in = reg_opts.get("input", "registry"), bil_opts.get("input", "billing")
    for name in (reg_in, bil_in):
        if name not in inputs:
            raise KeyError(f"golden_customers needs input {name!r}; inputs are {sorted(inputs)}")
    reg_fields, bil_fields = Fields.of(reg_opts), Fields.of(bil_opts)
    registry, billing = inputs[reg_in], inputs[bil_in]
    registry_columns = list(options.get("registry_columns", []))
    billing_columns = list(options.get("billing_columns", []))
    _check_carried(registry_columns, registry.columns, reg_in, billing_columns, billing.columns, bil_in)
    weights = checked_weights(options.get("weights"))
    for name, frame in ((reg_in, registry), (bil_in, billing)):
        if MONTH not in frame.columns:
            raise KeyError(f"golden_customers: {name} has no {MONTH!r} column (the month each record is read for)")
    check_ids({reg_in: (registry, reg_fields), bil_in: (billing, bil_fields)})
    pairs = candidate_pairs(normalize_frame(registry, reg_fields), normalize_frame(billing, bil_fields))
    assigned = assign(score_candidates(pairs, weights), float(options.get("threshold", 0.8)))
    return golden_frame(
        registry,
        billing,
        assigned,
        reg_fields,
        bil_fields,
        registry_columns=registry_columns,
        billing_columns=billing_columns,
    )


GOLDEN_COLUMNS = (
    "golden_id",
    "registry_id",
    "billing_ids",
    "match_score",
    "match_status",
    "name",
    "street",
    "house_number",
    "postcode",
    "city",
    "first_seen_month",
    "last_seen_month",
)


def _check_carried(
    registry_columns: list[str],
    registry_has: list[str],
    reg_in: str,
    billing_columns: list[str],
    billing_has: list[str],
    bil_in: str,
) -> None:
    """Carried columns exist in their input and name each golden column once."""
    for wanted, has, name in ((registry_columns, registry_has, reg_in), (billing_columns, billing_has, bil_in)):
        missing = [c for c in wanted if c not in has]
        if missing:
            raise KeyError(f"golden_customers: {name} has no column(s) {missing}; it has {list(has)}")
    carried = [*registry_columns, *billing_columns]
    clash = sorted({c for c in carried if c in (*GOLDEN_COLUMNS, MONTH) or carried.count(c) > 1})
    if clash:
        raise ValueError(f"golden_customers: carried column(s) {clash} repeat a golden column or each other")
