"""``make demo`` as a contender: ``python -m lakehouse.sim.demo --world <work>/world`` at its default scale
(40 meters × 48 months: builds the world, materializes every zone, trains the model). The harness sets
``DAGSTER_HOME``, ``LAKEHOUSE_ROOT`` and ``LAKEHOUSE_DEMO_ROOT`` to temporary folders."""

from __future__ import annotations

import time

from benchmarks.contenders import arguments, write_result


def main() -> None:
    args = arguments("benchmarks.contenders.demo")
    from lakehouse.sim import demo

    t0 = time.monotonic()
    code = demo.main(["--world", str(args.world)])
    if code:
        raise SystemExit(code)
    write_result(args.result, {"zone_seconds": {"demo": round(time.monotonic() - t0, 3)}})


if __name__ == "__main__":
    main()
