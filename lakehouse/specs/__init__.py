"""Pydantic models of ``lakehouse.yaml`` and of the declarations (``defs.yaml``), and their loader. No Dagster, no Spark."""

from lakehouse.specs.loader import SpecError, load_project
from lakehouse.specs.ml import PipelineSpec
from lakehouse.specs.models import (
    ColumnSpec,
    LakehouseSpec,
    Project,
    RuleSpec,
    SourceSpec,
    ViewSpec,
)

__all__ = [
    "ColumnSpec",
    "LakehouseSpec",
    "PipelineSpec",
    "Project",
    "RuleSpec",
    "SourceSpec",
    "SpecError",
    "ViewSpec",
    "load_project",
]
