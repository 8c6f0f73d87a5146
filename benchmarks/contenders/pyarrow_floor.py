"""Contender 4, the floor: pyarrow reads the raw files (typed) and writes Parquet once, month by month.

No rules, no lineage, no transaction log: the I/O and parsing bound of this machine for these files.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchmarks.contenders import Clock, arguments, meter_files, write_result

SCHEMA = pa.schema([("device_id", pa.string()), ("timestamp", pa.timestamp("s", tz="UTC")), ("reading_kwh", pa.float64())])


def main() -> None:
    args = arguments("benchmarks.contenders.pyarrow_floor")
    clock = Clock()
    out = args.work / "floor"
    out.mkdir(parents=True, exist_ok=True)
    fmt = ds.CsvFileFormat(
        parse_options=pcsv.ParseOptions(delimiter=";"),
        convert_options=pcsv.ConvertOptions(column_types=SCHEMA),
    )
    rows = 0
    for month, paths in meter_files(args.world, args.months).items():
        table = ds.dataset([str(p) for p in paths], format=fmt, schema=SCHEMA).to_table()
        pq.write_table(table, out / f"month={month}.parquet")
        rows += table.num_rows
    clock.lap("formatted")
    write_result(args.result, {"zone_seconds": clock.stages, "rows": {"formatted": rows}})


if __name__ == "__main__":
    main()
