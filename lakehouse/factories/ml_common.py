"""What the ML pipelines' asset builders share: a pipeline's names and inputs, and ML results as Dagster
metadata (frames as typed tables, plots as embedded images, numbers as plain values)."""

from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from lakehouse.factories.common import key, spec_version, table_key
from lakehouse.io.lake import Lake
from lakehouse.ml import evaluate
from lakehouse.specs.ml import PipelineSpec
from lakehouse.specs.models import Project


@dataclass(frozen=True)
class PipelineAssets:
    """One pipeline's names: its assets are ``ml/<prefix>_<part>``, all in the ``ml`` group, tagged with
    the pipeline, versioned with its spec."""

    project: Project
    spec: PipelineSpec
    prefix: str

    def key(self, part: str) -> dg.AssetKey:
        return key("ml", f"{self.prefix}_{part}")

    @property
    def source_key(self) -> dg.AssetKey:
        return table_key(self.spec.input)

    @property
    def all_months(self) -> dict[str, dg.AssetIn]:
        """The input, every month (what an asset that learns from history depends on)."""
        return {"daily": dg.AssetIn(key=self.source_key, partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing)}

    def months_back(self, months: int) -> dict[str, dg.AssetIn]:
        """The input from ``months`` months before a partition to the partition (what a monthly output reads)."""
        mapping = dg.TimeWindowPartitionMapping(start_offset=-months, end_offset=0, allow_nonexistent_upstream_partitions=True)
        return {"daily": dg.AssetIn(key=self.source_key, partition_mapping=mapping, dagster_type=dg.Nothing)}

    @property
    def common(self) -> dict[str, Any]:
        return {"group_name": "ml", "tags": {"zone": "ml", "pipeline": self.spec.name}, "code_version": spec_version(self.spec)}


def md_images(root: Lake, uris: dict[str, str]) -> dg.MetadataValue:
    """The plots at ``uris`` (name -> PNG on the lake) embedded in one Markdown value."""
    return dg.MetadataValue.md(
        "\n\n".join(f"**{name}**\n\n{evaluate.embed_png(root.storage.read(u), name)}" for name, u in uris.items())
    )


def frame_table(df: pd.DataFrame, digits: int = 4) -> dg.TableMetadataValue:
    """A frame as Dagster table metadata (typed columns, sortable in the UI) instead of a Markdown table."""
    kinds = {}
    for col, dtype in df.dtypes.items():
        kinds[col] = (
            "bool"
            if pd.api.types.is_bool_dtype(dtype)
            else "int"
            if pd.api.types.is_integer_dtype(dtype)
            else "float"
            if pd.api.types.is_float_dtype(dtype)
            else "string"
        )

    def cell(value: Any, kind: str) -> Any:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if kind == "float":
            return round(float(value), digits)
        return int(value) if kind == "int" else bool(value) if kind == "bool" else str(value)

    records = [
        dg.TableRecord({str(c): cell(v, kinds[c]) for c, v in zip(df.columns, row, strict=True)})
        for row in df.itertuples(index=False)
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), k) for c, k in kinds.items()])
    return dg.MetadataValue.table(records, schema=schema)


def plain_number(v: Any) -> Any:
    """numpy scalars as Python numbers (Dagster metadata takes plain values)."""
    return float(v) if isinstance(v, (float, np.floating)) else int(v) if isinstance(v, (int, np.integer)) else v
