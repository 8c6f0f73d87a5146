"""Dagster column-schema metadata from declared columns."""

from __future__ import annotations

import dagster as dg

from lakehouse.specs.models import ColumnSpec


def column_schema(columns: list[ColumnSpec] | tuple[ColumnSpec, ...]) -> dg.TableSchema:
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
