"""``make demo`` as a contender: ``python -m lakehouse.sim.demo --world <work>/world`` at its default scale
(40 meters × 48 months: builds the world, materializes every zone, trains the model). The harness sets
``DAGSTER_HOME``, ``LAKEHOUSE_ROOT`` and ``LAKEHOUSE_DEMO_ROOT`` to temporary folders. Its figures add the CPU seconds of the process tree and the
utilisation of the machine's cores (CPU ÷ (wall × cores))."""

from __future__ import annotations

from benchmarks.contenders import arguments, write_result


def main() -> None:
    args = arguments("benchmarks.contenders.demo")
    from lakehouse.sim import demo

    cpu = demo.CpuMeter()
    code = demo.main(["--world", str(args.world)])
    if code:
        raise SystemExit(code)
    figures = cpu.figures()
    write_result(args.result, {"zone_seconds": {"demo": figures["wall_s"]}, "cpu": figures})


if __name__ == "__main__":
    main()
