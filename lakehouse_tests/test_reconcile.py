"""Reconciliation of registry and billing customers on a small fixture with known truth, and the MERGE."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from lakehouse.io.lake import Lake
from lakehouse.transforms import reconcile as rc

REGISTRY = pd.DataFrame(
    [
        ("C1", "M1", "Anna Miller", "Pine Street", 12, "98123", "Seattle"),
        ("C2", "M2", "Ben Schmidt", "Maple Avenue", 7, "98101", "Bellevue"),
        ("C3", "M3", "Carla Garcia", "Lake Road", 150, "98177", "Kirkland"),
        ("C4", "M4", "David Johnson", "Cedar Lane", 33, "98150", "Tacoma"),
        ("C5", "M5", "Elena Weber", "Pine Street", 14, "98123", "Seattle"),
    ],
    columns=["customer_id", "meter_id", "name", "street", "house_number", "postcode", "city"],
)
BILLING = pd.DataFrame(
    [
        ("A1", "MILLER, ANNA", "12 Pine St.", "98123-0412", "SEATTLE", "residential"),
        ("A2", "B. Schmidt", "Maple Ave 7", "98101", "Bellevue WA", "residential"),
        ("A3", "Carla Garica", "150 LAKE ROAD", "98177", "Kirkland", "commercial"),
        ("A4", "Carla Garcia", "150 Lake Rd", "98177-1111", "Kirklnad", "commercial"),
        # namesake of C1 at another address: a different person
        ("A5", "Anna Miller", "250 Harbor Way", "98160", "Redmond", "residential"),
        ("A6", "Olga Wolf", "17 Elm Avenue", "98111", "Tacoma", "residential"),
        # C5's neighbour-looking typo: same street, other house number and name
        ("A7", "WEBER, ELENA", "Pine Street 14", "98123", "Seattle", "residential"),
    ],
    columns=["account_no", "holder_name", "address_line", "zip", "town", "tariff"],
)
TRUE_PAIRS = {("C1", "A1"), ("C2", "A2"), ("C3", "A3"), ("C3", "A4"), ("C5", "A7")}
RF = rc.Fields.of(
    {
        "id": "customer_id",
        "name": "name",
        "street": "street",
        "house_number": "house_number",
        "postcode": "postcode",
        "city": "city",
    }
)
BF = rc.Fields.of({"id": "account_no", "name": "holder_name", "street": "address_line", "postcode": "zip", "city": "town"})


def precision_recall(predicted: set, truth: set) -> tuple[float, float]:
    hit = len(predicted & truth)
    return (hit / len(predicted) if predicted else 0.0, hit / len(truth))


def test_normalization_of_spellings():
    assert rc.name_tokens("MILLER, ANNA") == ["anna", "miller"]
    assert rc.normalize_address("Pine Street 12") == ("pine st", "12")
    assert rc.normalize_address("12 Pine St.") == ("pine st", "12")
    assert rc.normalize_address("Pine Street", 12) == ("pine st", "12")
    assert rc.normalize_postcode("98123-0412") == "98123"
    assert rc.normalize_city("Seattle WA") == "seattle"
    assert rc.name_similarity("a miller", "anna miller") == 1.0
    assert rc.name_similarity("anna miller", "olga wolf") < 0.5


def test_resolution_matches_the_known_truth():
    res = rc.resolve(REGISTRY, BILLING, RF, BF, threshold=0.8)
    pairs = set(map(tuple, res.matches[["left_id", "right_id"]].to_numpy()))
    precision, recall = precision_recall(pairs, TRUE_PAIRS)
    assert (precision, recall) == (1.0, 1.0), res.scored.sort_values("score", ascending=False).head(10)
    # blocking: fewer candidates than the cross product, but every true pair is among them
    cands = set(map(tuple, rc.candidate_pairs(rc.normalize(REGISTRY, RF), rc.normalize(BILLING, BF)).to_numpy()))
    assert TRUE_PAIRS <= cands and len(cands) < len(REGISTRY) * len(BILLING)
    assert res.stats["reduction_ratio"] > 0


def test_namesake_elsewhere_is_not_matched_by_name_alone():
    # with the name as the only evidence the namesake would match: the address is what keeps it apart
    by_name = rc.resolve(REGISTRY, BILLING, RF, BF, weights={"name": 1.0}, threshold=0.8)
    assert ("C1", "A5") in set(map(tuple, by_name.matches[["left_id", "right_id"]].to_numpy()))
    full = rc.resolve(REGISTRY, BILLING, RF, BF, threshold=0.8)
    assert "A5" not in set(full.matches["right_id"])


def test_golden_records_one_per_real_customer_with_scores_and_source_ids():
    res = rc.resolve(REGISTRY, BILLING, RF, BF)
    golden = rc.golden_records(
        REGISTRY, BILLING, res, RF, BF, registry_columns=["meter_id"], billing_columns=["tariff"], month="2012-03"
    ).set_index("golden_id")
    # 5 registry customers + 2 billing-only accounts (A5, A6)
    assert len(golden) == 7
    assert golden.loc["G-C3", "billing_ids"] == "A3;A4" and golden.loc["G-C3", "tariff"] == "commercial"
    assert golden.loc["G-C4", "match_status"] == "registry_only" and pd.isna(golden.loc["G-C4", "match_score"])
    assert golden.loc["G-A6", "match_status"] == "billing_only" and golden.loc["G-A6", "city"] == "Tacoma"
    assert 0.8 <= golden.loc["G-C1", "match_score"] <= 1.0
    assert golden.loc["G-C1", "name"] == "Anna Miller"  # registry wins
    assert set(golden["first_seen_month"]) == {"2012-03"}


def test_missing_columns_and_duplicate_ids_are_clear_errors():
    with pytest.raises(KeyError, match="holder_name"):
        rc.normalize(BILLING.drop(columns=["holder_name"]), BF)
    with pytest.raises(ValueError, match="unique"):
        rc.normalize(pd.concat([BILLING, BILLING.head(1)]), BF)
    with pytest.raises(ValueError, match="unknown reconciliation field"):
        rc.Fields.of({"id": "a", "name": "b", "street": "c", "postcode": "d", "city": "e", "zipcode": "f"})


def _rows(month: str, rows: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {
            "golden_id": [g for g, _ in rows],
            "name": [n for _, n in rows],
            "first_seen_month": [month] * len(rows),
            "last_seen_month": [month] * len(rows),
        }
    )


def test_lake_merge_updates_golden_records_as_months_arrive(tmp_path):
    lake = Lake(tmp_path)
    kw = {"on": ["golden_id"], "newer": "last_seen_month", "keep_first": ["first_seen_month"]}
    v0 = lake.merge("exploitation", "golden", _rows("2012-01", [("G1", "Anna"), ("G2", "Ben")]), **kw)
    v1 = lake.merge("exploitation", "golden", _rows("2012-02", [("G1", "Anna M."), ("G3", "Carla")]), **kw)
    assert v1 == v0 + 1
    # a rerun of an older month does not undo the newer state, and first_seen stays the earliest
    lake.merge("exploitation", "golden", _rows("2012-01", [("G1", "Anna"), ("G3", "Carla (old)")]), **kw)
    got = {r["golden_id"]: r for r in lake.read_arrow("exploitation", "golden").to_pylist()}
    assert set(got) == {"G1", "G2", "G3"}
    assert got["G1"]["name"] == "Anna M." and got["G1"]["first_seen_month"] == "2012-01"
    assert got["G1"]["last_seen_month"] == "2012-02"
    assert got["G3"]["name"] == "Carla" and got["G3"]["first_seen_month"] == "2012-01"
    assert not lake.partitioned("exploitation", "golden")
    # time travel: the first version still has the first month's state
    first = {r["golden_id"]: r["name"] for r in lake.read_arrow("exploitation", "golden", version=v0).to_pylist()}
    assert first == {"G1": "Anna", "G2": "Ben"}
    with pytest.raises(ValueError, match="repeat a key"):
        lake.merge("exploitation", "golden", _rows("2012-03", [("G1", "x"), ("G1", "y")]), **kw)
