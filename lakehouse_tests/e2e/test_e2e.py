"""End to end with the real webserver + daemon: a monthly backfill launched through GraphQL.

Asserts on what a user sees (backfill and run status, the run's events and materializations, partition
and freshness status from the GraphQL API) and on the data (the Delta tables, read with ``Lake``).
"""

import pytest

from lakehouse.io.lake import Lake
from lakehouse_tests.e2e.conftest import BACKFILL_ASSETS, METERS, MONTHS, poll

pytestmark = pytest.mark.e2e

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
HOURS = {"2012-01": 31 * 24, "2012-02": 29 * 24}

RUN_LOGS = """query($id: ID!) { logsForRun(runId: $id) { __typename
  ... on EventConnection { events { __typename ... on MessageEvent { message level } } } ... on Error { message } } }"""
ASSET = """query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { __typename
  ... on AssetNode { groupName partitionStats { numMaterialized numPartitions numFailed }
    internalFreshnessPolicy { __typename ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds } }
    freshnessStatusInfo { freshnessStatus } automationCondition { label } } } }"""


def asset(server, path: list[str]) -> dict:
    node = server.graphql(ASSET, {"path": path})["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    return node


def test_instance_starts_with_automation_on(dagster_server):
    states = dagster_server.initial_sensor_states
    assert states.get("lakehouse_automation") == "RUNNING", states
    assert asset(dagster_server, ["trusted", "meter_readings"])["automationCondition"]["label"].startswith("eager")


def test_monthly_backfill_is_one_run_per_asset_range(dagster_server, monthly_backfill):
    assert monthly_backfill.status == "COMPLETED_SUCCESS", dagster_server.log_tail()
    runs = monthly_backfill.runs
    assert runs and all(r["status"] == "SUCCESS" for r in runs), [(r["runId"], r["status"]) for r in runs]
    assert len(runs) <= len(BACKFILL_ASSETS), "a range of months runs once per asset range, not once per month"
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert (tags.get(RANGE_START), tags.get(RANGE_END)) == (MONTHS[0], MONTHS[-1]), tags
        assert tags.get("dagster/backfill") == monthly_backfill.id

    # one materialization per asset and month, each naming the Delta version its month committed
    mats = [m for r in runs for m in r["assetMaterializations"]]
    assert sorted({("/".join(m["assetKey"]["path"]), m["partition"]) for m in mats}) == sorted(
        ("/".join(p), month) for p in BACKFILL_ASSETS for month in MONTHS
    )
    lake = Lake(dagster_server.lake)
    for m in mats:
        zone, table = m["assetKey"]["path"]
        if zone == "landing":
            continue
        labels = {e["label"]: e.get("intValue") for e in m["metadataEntries"]}
        assert "per_month" in labels or "delta_version" in labels, labels
        assert labels.get("total_rows", labels.get("rows", 0)) > 0
        history_versions = {h["version"] for h in lake.history(zone, table)}
        if "delta_version" in labels:
            assert labels["delta_version"] in history_versions

    # the run's events: every month was committed on its own, with its progress line
    messages = []
    for run in runs:
        logs = dagster_server.graphql(RUN_LOGS, {"id": run["runId"]})["logsForRun"]
        assert logs["__typename"] == "EventConnection", logs
        messages += [e.get("message") or "" for e in logs["events"]]
    for path in BACKFILL_ASSETS:
        name = "/".join(path)
        for i, month in enumerate(MONTHS, 1):
            assert any(msg.startswith(f"{name} {month} ({i}/{len(MONTHS)},") for msg in messages), (name, month)


def test_backfilled_months_are_in_the_delta_tables(dagster_server, monthly_backfill):
    lake = Lake(dagster_server.lake)
    for zone, table in BACKFILL_ASSETS[1:]:
        assert lake.months(zone, table) == MONTHS, (zone, table)
    per_month = {m: METERS * h for m, h in HOURS.items()}
    for zone in ("formatted", "trusted"):
        rows = lake.read_arrow(zone, "meter_readings", columns=["meter_id", "month"]).to_pylist()
        counts = {m: sum(1 for r in rows if r["month"] == m) for m in MONTHS}
        assert counts == per_month, (zone, counts)
        assert len({r["meter_id"] for r in rows}) == METERS
    daily = lake.read_arrow("exploitation", "daily_consumption").to_pylist()
    assert len(daily) == METERS * (31 + 29)
    assert all(d["hours"] == 24 and d["consumption_kwh"] > 0 for d in daily)
    landing = [p.name for p in sorted((dagster_server.lake / "landing" / "meter_readings").iterdir())]
    assert landing == MONTHS


def test_partition_and_freshness_status_through_graphql(dagster_server, monthly_backfill):
    trusted = asset(dagster_server, ["trusted", "meter_readings"])
    assert trusted["groupName"] == "trusted"
    assert trusted["partitionStats"]["numMaterialized"] == len(MONTHS)
    assert trusted["partitionStats"]["numFailed"] == 0
    assert trusted["partitionStats"]["numPartitions"] == 48

    landing = ["landing", "meter_readings"]
    policy = asset(dagster_server, landing)["internalFreshnessPolicy"]
    assert policy == {"__typename": "TimeWindowFreshnessPolicy", "failWindowSeconds": 48 * 3600, "warnWindowSeconds": 24 * 3600}
    # the freshness daemon evaluates the fresh landing table as healthy
    poll(
        "landing freshness to be evaluated",
        lambda: asset(dagster_server, landing)["freshnessStatusInfo"]["freshnessStatus"] == "HEALTHY",
        timeout=90,
        every=3,
    )


def test_a_source_that_never_landed_has_no_freshness_yet(dagster_server, monthly_backfill):
    """Sources the backfill did not touch are not reported fresh: the UI cannot vouch for them."""
    from lakehouse import settings

    others = [s.name for s in settings.load().sources if s.name != "meter_readings"]
    if not others:
        pytest.skip("the project has a single source")
    path = ["landing", others[0]]
    info = asset(dagster_server, path)
    assert info["internalFreshnessPolicy"]["__typename"] == "TimeWindowFreshnessPolicy"
    status = (info["freshnessStatusInfo"] or {}).get("freshnessStatus")
    assert status in (None, "UNKNOWN"), (path, status)
