"""What a month's check results cost in the Dagster instance's event log: Dagster's SQLite storage vs the
project's pooled one (``lakehouse.instance``). A script, not a test.

    .venv/bin/python -m benchmarks.event_log [--months 12] [--checks 10] [--repeats 3]

One monthly asset with ``--checks`` asset checks, materialized for ``--months`` months in one range run that
logs, as the lakehouse's assets do, one materialization per month and one check evaluation per month and
check (``AssetCheckEvaluation`` with the month's partition). Each storage gets a fresh instance directory;
the two alternate, ``--repeats`` times. Prints the seconds of the run and per event, and checks that both
instances hold the same events.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg


def _asset(months: dg.MonthlyPartitionsDefinition, checks: int) -> dg.AssetsDefinition:
    names = [f"check_{i}" for i in range(checks)]

    @dg.asset(
        partitions_def=months,
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[dg.AssetCheckSpec(n, asset="monthly") for n in names],
    )
    def monthly(context: dg.AssetExecutionContext):
        keys = context.partition_keys
        for month in keys:
            context.add_asset_metadata({"rows": 1}, partition_key=month)
        yield dg.MaterializeResult()
        for month in keys:
            for n in names:
                context.log_event(
                    dg.AssetCheckEvaluation(asset_key=context.asset_key, check_name=n, passed=True, partition=month)
                )
        for n in names:
            yield dg.Output(
                None, output_name=context.assets_def.get_output_name_for_asset_check_key(dg.AssetCheckKey(context.asset_key, n))
            )

    return monthly


def run_once(pooled: bool, months: int, checks: int) -> tuple[float, int]:
    """Seconds of one range run of ``months`` months on a fresh instance, and the events it stored."""
    keys = [f"{2012 + i // 12}-{i % 12 + 1:02d}" for i in range(months + 1)]
    definition = dg.MonthlyPartitionsDefinition(start_date=keys[0], end_date=keys[-1], fmt="%Y-%m")
    asset = _asset(definition, checks)
    with tempfile.TemporaryDirectory() as home:
        storage = {
            "module": "lakehouse.instance",
            "class": "PooledSqliteEventLogStorage",
            "config": {"base_dir": str(Path(home) / "events")},
        }
        overrides = {"event_log_storage": storage} if pooled else {}
        with dg.instance_for_test(temp_dir=home, overrides=overrides) as instance:
            tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-2]}
            started = time.monotonic()
            result = dg.materialize([asset], instance=instance, tags=tags)
            seconds = time.monotonic() - started
            assert result.success
            return seconds, len(instance.get_records_for_run(result.run_id).records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--checks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    timings: dict[str, list[float]] = {"stock": [], "pooled": []}
    events: dict[str, set[int]] = {"stock": set(), "pooled": set()}
    run_once(True, 1, 1)  # imports and first-use costs outside the figures
    for _ in range(args.repeats):
        for name in ("stock", "pooled"):
            seconds, stored = run_once(name == "pooled", args.months, args.checks)
            timings[name].append(seconds)
            events[name].add(stored)
    assert events["stock"] == events["pooled"], f"the two storages stored different numbers of events: {events}"
    (stored,) = events["stock"]
    for name, values in timings.items():
        median = statistics.median(values)
        print(
            f"{name:7s} run {median:6.2f} s (min {min(values):.2f}, max {max(values):.2f}); {1000 * median / stored:5.1f} ms per event, {stored} events"
        )
    print(f"pooled / stock: {statistics.median(timings['pooled']) / statistics.median(timings['stock']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
