"""Dagster column-schema metadata from declared columns."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from lakehouse.specs.models import ColumnSpec, SourceSpec, ViewColumnSpec


def column_schema(columns: Sequence[ColumnSpec | ViewColumnSpec]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description=(c.description + (f" [{c.unit}]" if c.unit else "")).strip(),
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in columns
        ]
    )


def derived_lineage(source: SourceSpec) -> dg.TableColumnLineage | None:
    """``dagster/column_lineage`` of ``trusted/<source>``: each derived column depends on the formatted
    columns its expression reads (through earlier derived columns)."""
    upstream = dg.AssetKey(["formatted", source.name])
    deps = {
        name: [dg.TableColumnDep(asset_key=upstream, column_name=c) for c in inputs]
        for name, inputs in source.derive_inputs().items()
        if inputs
    }
    return dg.TableColumnLineage(deps_by_column=deps) if deps else None
