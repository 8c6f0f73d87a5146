"""End to end with the real webserver + daemon: a monthly backfill launched through GraphQL.

Asserts on what a user sees (backfill and run status, the run's events and materializations, each month's
own figures and check results, partition and freshness status from the GraphQL API) and on the data (the
Delta tables, read with ``Lake``). One month of the three (:data:`BAD_MONTH`) fails a blocking check in the
trusted zone: it alone is held downstream.
"""

import re
from urllib.parse import quote

import pytest
import requests

from lakehouse.io.lake import Lake
from lakehouse_tests.e2e.conftest import BACKFILL_ASSETS, BAD_MONTH, METERS, MONTHS, poll

pytestmark = pytest.mark.e2e

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
HOURS = {"2012-01": 31 * 24, "2012-02": 29 * 24, "2012-03": 31 * 24}
GOOD = [m for m in MONTHS if m != BAD_MONTH]
VIEW = ["exploitation", "daily_consumption"]
CHECK_EXECUTIONS = """query($key: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $key, checkName: $check, partition: $partition, limit: 1) {
    runId status partition evaluation { severity description } } }"""
CHECK_STATUSES = """query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode {
  assetChecksOrError { ... on AssetChecks { checks { name blocking partitionStatuses { __typename
    ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } } } } } } } } }"""
PARTITIONS = """query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode {
  assetPartitionStatuses { __typename ... on TimePartitionStatuses { ranges { startKey endKey status } } } } } }"""

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
    # the bad month is held downstream, so the backfill does not complete cleanly; every run is a range
    assert monthly_backfill.status in ("COMPLETED_FAILED", "FAILED"), (monthly_backfill.status, dagster_server.log_tail())
    runs = monthly_backfill.runs
    assert runs and len(runs) <= len(BACKFILL_ASSETS), "a range of months runs once per asset range, not once per month"
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert (tags.get(RANGE_START), tags.get(RANGE_END)) == (MONTHS[0], MONTHS[-1]), tags
        assert tags.get("dagster/backfill") == monthly_backfill.id

    # one materialization per asset and month, each with that month's own figures; the held month of the
    # view has none
    mats = [m for r in runs for m in r["assetMaterializations"]]
    expected = {("/".join(p), month) for p in BACKFILL_ASSETS for month in MONTHS} - {("/".join(VIEW), BAD_MONTH)}
    assert sorted({("/".join(m["assetKey"]["path"]), m["partition"]) for m in mats}) == sorted(expected)
    lake = Lake(dagster_server.lake)
    for m in mats:
        zone, table = m["assetKey"]["path"]
        labels = {e["label"]: e.get("intValue") for e in m["metadataEntries"]}
        assert "total_rows" not in labels and "per_month" not in labels, labels
        assert labels["dagster/row_count"] == labels["rows"], labels
        if (zone, table) in (("formatted", "meter_readings"), ("trusted", "meter_readings")):
            hours = HOURS[m["partition"]] if (zone, m["partition"]) != ("trusted", BAD_MONTH) else 0
            assert labels["rows"] == METERS * hours, (zone, m["partition"], labels)
        if zone != "landing":
            assert labels["delta_version"] in {h["version"] for h in lake.history(zone, table)}
    versions = [
        {e["label"]: e.get("intValue") for e in m["metadataEntries"]}["delta_version"]
        for m in mats
        if m["assetKey"]["path"] == ["trusted", "meter_readings"]
    ]
    assert len(set(versions)) == len(MONTHS), "each month names its own commit"

    # the run's events: every month was committed on its own, with its progress line
    messages = []
    for run in runs:
        logs = dagster_server.graphql(RUN_LOGS, {"id": run["runId"]})["logsForRun"]
        assert logs["__typename"] == "EventConnection", logs
        messages += [e.get("message") or "" for e in logs["events"]]
    for path in BACKFILL_ASSETS:
        name = "/".join(path)
        months = GOOD if path == VIEW else MONTHS
        # months of a range run in parallel workers (month_workers): the count says how many were done, in
        # whatever order they finished
        for month in months:
            assert any(re.match(rf"{re.escape(name)} {month} \([1-{len(months)}]/{len(months)},", msg) for msg in messages), (
                name,
                month,
            )
    assert any(
        f"{'/'.join(VIEW)} {BAD_MONTH}: held: trusted/meter_readings {BAD_MONTH} failed blocking check(s) rejected_rate" in msg
        for msg in messages
    )


def test_each_month_has_its_own_check_results(dagster_server, monthly_backfill):
    """Per-partition results of a partitioned blocking check, through the GraphQL API the UI reads."""
    trusted = {"path": ["trusted", "meter_readings"]}
    for check, bad_status in (("rejected_rate", "FAILED"), ("conservation", "SUCCEEDED"), ("pandera_schema", "SUCCEEDED")):
        for month in MONTHS:
            (execution,) = dagster_server.graphql(CHECK_EXECUTIONS, {"key": trusted, "check": check, "partition": month})[
                "assetCheckExecutions"
            ]
            assert execution["partition"] == month
            assert execution["status"] == (bad_status if month == BAD_MONTH else "SUCCEEDED"), (check, month, execution)
    (bad,) = dagster_server.graphql(CHECK_EXECUTIONS, {"key": trusted, "check": "rejected_rate", "partition": BAD_MONTH})[
        "assetCheckExecutions"
    ]
    assert bad["evaluation"]["severity"] == "ERROR" and "none kept" in bad["evaluation"]["description"], bad
    # the check's partition statuses (what the UI colours per month): failed exactly in the bad month
    node = dagster_server.graphql(CHECK_STATUSES, {"path": trusted["path"]})["assetNodeOrError"]
    checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
    assert checks["rejected_rate"]["blocking"]
    ranges = checks["rejected_rate"]["partitionStatuses"]["ranges"]
    failed = [(r["startKey"], r["endKey"]) for r in ranges if r["status"] == "FAILED"]
    assert failed == [(BAD_MONTH, BAD_MONTH)], ranges


def test_only_the_bad_months_downstream_is_held(dagster_server, monthly_backfill):
    lake = Lake(dagster_server.lake)
    assert lake.months("formatted", "meter_readings") == MONTHS
    assert lake.months(*VIEW) == GOOD
    per_month = {m: METERS * h for m, h in HOURS.items()}
    rows = lake.read_arrow("formatted", "meter_readings", columns=["meter_id", "month"]).to_pylist()
    assert {m: sum(1 for r in rows if r["month"] == m) for m in MONTHS} == per_month
    rows = lake.read_arrow("trusted", "meter_readings", columns=["meter_id", "month"]).to_pylist()
    assert {m: sum(1 for r in rows if r["month"] == m) for m in GOOD} == {m: per_month[m] for m in GOOD}
    assert not [r for r in rows if r["month"] == BAD_MONTH]
    daily = lake.read_arrow(*VIEW).to_pylist()
    assert len(daily) == METERS * (31 + 31)
    assert all(d["hours"] == 24 and d["consumption_kwh"] > 0 for d in daily)
    landing = [p.name for p in sorted((dagster_server.lake / "landing" / "meter_readings").iterdir())]
    assert landing == MONTHS
    # the UI's partition status of the view: materialized but the bad month
    view = dagster_server.graphql(PARTITIONS, {"path": VIEW})["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
    done = sorted(
        {r["startKey"] for r in view if r["status"] == "MATERIALIZED"}
        | {r["endKey"] for r in view if r["status"] == "MATERIALIZED"}
    )
    assert done == GOOD, view


def test_partition_and_freshness_status_through_graphql(dagster_server, monthly_backfill):
    trusted = asset(dagster_server, ["trusted", "meter_readings"])
    assert trusted["groupName"] == "trusted"
    assert trusted["partitionStats"]["numMaterialized"] == len(MONTHS)  # the bad month too: its checks say why it is bad
    assert trusted["partitionStats"]["numFailed"] == 0
    assert trusted["partitionStats"]["numPartitions"] == 48
    assert asset(dagster_server, VIEW)["partitionStats"]["numMaterialized"] == len(GOOD)

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


PAUSED = "{ instance { autoMaterializePaused } }"
PAUSE = "mutation { setAutoMaterializePaused(paused: %s) }"


def test_the_ui_obeys_only_its_own_pages(dagster_server):
    """A foreign page's mutation (POST with its Origin, or GET) and a rebound Host are refused before Dagster."""
    url = f"{dagster_server.url}/graphql"
    before = dagster_server.graphql(PAUSED)["instance"]["autoMaterializePaused"]
    flip = PAUSE % str(not before).lower()
    forged = requests.post(url, json={"query": flip}, headers={"Origin": "https://evil.example"}, timeout=30)
    assert forged.status_code == 403 and "cross-origin" in forged.text
    by_get = requests.get(f"{url}?query={quote(flip)}", timeout=30)
    assert by_get.status_code == 405
    rebound = requests.post(
        url, json={"query": flip}, headers={"Host": "evil.example", "Origin": "http://evil.example"}, timeout=30
    )
    assert rebound.status_code == 403 and "host not allowed" in rebound.text
    assert requests.get(dagster_server.url, headers={"Host": "attacker.example:80"}, timeout=30).status_code == 403
    assert dagster_server.graphql(PAUSED)["instance"]["autoMaterializePaused"] == before  # nothing reached Dagster
    # the UI's own pages: same origin, answered
    same = requests.post(url, json={"query": PAUSED}, headers={"Origin": dagster_server.url}, timeout=30)
    assert same.status_code == 200 and same.json()["data"]["instance"]["autoMaterializePaused"] == before
