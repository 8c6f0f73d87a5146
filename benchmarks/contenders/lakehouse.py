"""Contender 1, this lakehouse: landing → formatted → trusted → exploitation as Dagster runs it.

One ``dg.materialize`` of the meter assets over the month range, in process (one Spark session), on a
lake under ``--work`` (``LAKEHOUSE_ROOT``), the world as ``LAKEHOUSE_DEMO_ROOT`` and a SQLite Dagster
instance under ``--work``. Seconds per zone come from the run's step statistics. ML assets are not run. ``check``: the trusted
table's figures per month (:func:`benchmarks.check.lake_figures`), which other contenders are compared with.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from benchmarks.check import lake_figures
from benchmarks.contenders import Clock, arguments, meter_files, write_result

ASSETS = ("landing/meter_readings", "formatted/meter_readings", "trusted/meter_readings", "exploitation/daily_consumption")


#: the meter-only daily view the tests use too (next to ``configs/`` in the same source tree)
DAILY_VIEW = Path("lakehouse_tests/fixtures/configs/defs/views/daily_consumption")


def bench_configs(configs: Path, target: Path) -> Path:
    """The project's configs reduced to the meter pipeline: lakehouse.yaml, the meter source, the meter-only
    daily view, and the customer registry's declaration (never materialized: the meter source's reference
    rule names its table).

    The other sources need the demo's HTTP and SQL servers; the benchmark measures the meter files only.
    """
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if (configs / "sources").is_dir():  # commits before the declarations became components: configs/<kind>/*.yaml
        for rel in ("lakehouse.yaml", "sources/meter_readings.yaml"):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(configs / rel, target / rel)
        # commits before the view moved to the tests' fixtures kept it under configs/exploitation/
        old = Path("lakehouse_tests/fixtures/configs/exploitation/daily_consumption.yaml")
        view = next(p for p in (configs.parent / old, configs / "exploitation" / old.name) if p.exists())
        (target / "exploitation").mkdir()
        shutil.copy(view, target / "exploitation" / old.name)
        return target
    text = (configs / "lakehouse.yaml").read_text()
    (target / "lakehouse.yaml").write_text(re.sub(r"(?m)^defs: .*$", "defs: defs", text))
    # the customer registry stays declared (the table of the meter source's reference rule), never materialized
    for source in ("meter_readings", "customers"):
        shutil.copytree(configs.parent / "lakehouse" / "defs" / "sources" / source, target / "defs" / "sources" / source)
    shutil.copytree(configs.parent / DAILY_VIEW, target / "defs" / "views" / "daily_consumption")
    return target


def main() -> None:
    args = arguments("benchmarks.contenders.lakehouse")
    os.environ["LAKEHOUSE_ROOT"] = str(args.work / "lake")
    os.environ["LAKEHOUSE_DEMO_ROOT"] = str(args.world)
    clock = Clock()
    import dagster as dg
    import pyarrow as pa
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    import lakehouse
    from lakehouse import settings
    from lakehouse.factories import build_definitions
    from lakehouse.io.lake import Lake

    months = list(meter_files(args.world, args.months))
    os.environ["LAKEHOUSE_CONFIGS"] = str(
        bench_configs(Path(lakehouse.__file__).parent.parent / "configs", args.work / "configs")
    )
    project = settings.load()
    defs = build_definitions(project)
    keys = [dg.AssetKey.from_user_string(k) for k in ASSETS]
    (args.work / "dagster_home").mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.local_temp(str(args.work / "dagster_home"))
    clock.lap("import_and_definitions")
    # start this process's Spark session up front (the assets reuse it) so zone seconds exclude the JVM start
    defs.resources["spark"].session()
    clock.lap("spark_start")
    result = dg.materialize(
        defs.assets,
        selection=keys,
        resources=defs.resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: months[0], ASSET_PARTITION_RANGE_END_TAG: months[-1]},
        raise_on_error=False,
    )
    clock.lap("materialize")
    if not result.success:
        raise SystemExit("the run failed")
    zones: dict[str, float] = {}
    for stat in instance.get_run_step_stats(result.run_id):
        zone = stat.step_key.split("__")[0]
        zones[zone] = round(zones.get(zone, 0.0) + (stat.end_time or time.time()) - stat.start_time, 3)
    lake = Lake(project.lake_root)
    rows = {}
    for zone, table in (("formatted", "meter_readings"), ("trusted", "meter_readings"), ("exploitation", "daily_consumption")):
        actions = pa.table(lake.delta(zone, table).get_add_actions(flatten=True))
        rows[zone] = int(sum(int(n or 0) for n in actions.column("num_records").to_pylist()))
    write_result(
        args.result,
        {
            "months": len(months),
            "zone_seconds": zones,
            "code": os.path.dirname(os.path.dirname(lakehouse.__file__)),
            "stages": clock.stages,
            "rows": rows,
            "run_id": result.run_id,
            "check": lake_figures(lake),
        },
    )


if __name__ == "__main__":
    main()
