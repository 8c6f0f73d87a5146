"""The UI in a real browser (Debian's Chromium driven by Playwright): the graph grouped by zone, a
partitioned asset's months, and one month's own figures and check results. Screenshots (and the page's
text, when an expectation fails) land in the test's tmp dir."""

from pathlib import Path

import pytest

from lakehouse.io.lake import MONTH_KEY, Lake
from lakehouse_tests.e2e.conftest import BAD_MONTH, METERS, MONTHS

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ZONES = ["landing", "formatted", "trusted", "exploitation", "ml"]
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium chromium-driver")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1000})
        finally:
            browser.close()


def dismiss_welcome(page) -> None:
    """The first visit shows a 'Join the Dagster community' dialog (after the page loads); skip it."""
    dialog = page.get_by_text("Join the Dagster community")
    try:
        dialog.wait_for(state="visible", timeout=10_000)
    except Exception:  # noqa: BLE001 - no dialog this time: nothing to dismiss
        return
    page.get_by_text("Skip", exact=True).click()
    dialog.wait_for(state="hidden", timeout=10_000)


def test_asset_graph_grouped_by_zone_and_monthly_partitions(dagster_server, monthly_backfill, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{dagster_server.url}/asset-groups")
    dismiss_welcome(page)
    for zone in ZONES:
        # the sidebar lists the group first; the graph draws it as a group node (the last match)
        expect(page.get_by_text(zone, exact=True).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text(zone, exact=True).last).to_be_visible()
        assert page.get_by_text(zone, exact=True).count() >= 2, f"group {zone} is not drawn in the graph"
    page.screenshot(path=str(tmp_path / "asset_graph.png"))

    page.goto(f"{dagster_server.url}/assets/trusted/meter_readings?view=partitions")
    dismiss_welcome(page)
    expect(page.get_by_text(f"Materialized ({len(MONTHS)})")).to_be_visible(timeout=30_000)
    expect(page.get_by_text(f"Missing ({48 - len(MONTHS)})")).to_be_visible()
    expect(page.get_by_text("48 Partitions Selected")).to_be_visible()
    # show only what is not missing: the backfilled months, then open the latest one
    page.get_by_text(f"Missing ({48 - len(MONTHS)})").click()
    expect(page.get_by_text(f"{len(MONTHS)} Partitions Selected")).to_be_visible(timeout=15_000)
    for month in MONTHS:
        expect(page.get_by_text(month, exact=True).first).to_be_visible(timeout=15_000)
    expect(page.get_by_text("2015-12", exact=True)).to_have_count(0)
    page.get_by_text(MONTHS[-1], exact=True).first.click()
    expect(page.get_by_text("Latest materialization")).to_be_visible(timeout=15_000)
    expect(page.get_by_text("delta_version").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "trusted_partitions.png"))
    print(f"screenshots: {tmp_path}")


def month_commit(lake: Lake, zone: str, table: str, month: str) -> int:
    """The Delta version of ``month``'s latest commit, from the table's own log (not from Dagster)."""
    return max(h["version"] for h in lake.history(zone, table) if h.get(MONTH_KEY) == month)


def test_a_month_shows_its_own_rows_delta_version_and_checks(dagster_server, monthly_backfill, page, tmp_path):
    """One month's page of a zone table shows that month's row count and Delta version (not the range's),
    and the blocking check's page shows each month's own result (failed in the bad month only)."""
    from playwright.sync_api import expect

    month = MONTHS[0]
    lake = Lake(dagster_server.lake)
    rows = lake.read_arrow("trusted", "meter_readings", months=[month], columns=["month"]).num_rows
    assert rows == METERS * 31 * 24
    version = month_commit(lake, "trusted", "meter_readings", month)
    try:
        page.goto(f"{dagster_server.url}/assets/trusted/meter_readings?view=partitions&partition={month}")
        dismiss_welcome(page)
        expect(page.get_by_text("Latest materialization")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("row", name=f"rows {rows}", exact=True)).to_be_visible()
        expect(page.get_by_role("row", name=f"dagster/row_count {rows}", exact=True)).to_be_visible()
        expect(page.get_by_role("row", name=f"delta_version {version}", exact=True)).to_be_visible()
        expect(page.get_by_role("row", name="blocking_failed []", exact=True)).to_be_visible()
        page.screenshot(path=str(tmp_path / "trusted_month.png"), full_page=True)

        # the check's partitions: each month has its own result
        page.goto(f"{dagster_server.url}/assets/trusted/meter_readings?view=checks&checkDetail=rejected_rate")
        expect(page.get_by_role("tab", name="Execution history")).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Partitions").last.click()  # the check's tab, not the asset's
        search = page.get_by_placeholder("Filter by", exact=False).first
        for m, text in ((BAD_MONTH, "none kept"), (month, f"0 of {rows} row(s) rejected")):
            search.fill(m)  # the list is virtualized: filter it down to the month
            # the list's entry: the range picker shows the first month too, and each name has a hidden twin
            page.get_by_text(m, exact=True).filter(visible=True).last.click()
            # the month's own result: its description, tied to that month's materialization
            expect(page.get_by_text(text)).to_be_visible(timeout=15_000)
            expect(page.get_by_text("Target materialization")).to_be_visible()
            page.screenshot(path=str(tmp_path / f"rejected_rate_{m}.png"), full_page=True)
    finally:
        (tmp_path / "page.txt").write_text(page.inner_text("body"))
        print(f"screenshots: {tmp_path}")
