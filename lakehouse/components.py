"""The project's declarations as Dagster components: ``type: lakehouse.components.Source`` (or ``View``,
``Pipeline``) in a ``defs.yaml`` of the defs folder, its ``attributes`` the typed spec of
:mod:`lakehouse.specs` (their JSON schema is what ``dg check yaml`` and editors validate against).

:func:`lakehouse.specs.load_project` reads every ``defs.yaml`` first (``${VAR}`` interpolation, errors with
file, line and key, cross-references between declarations); :func:`lakehouse.factories.build_definitions`
then builds Dagster's component tree over the same folder, and each component builds its assets with the
zone factories from the spec the project holds under its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, RootModel

from lakehouse.factories.exploitation import build_view_asset
from lakehouse.factories.formatted import build_formatted_asset
from lakehouse.factories.landing import build_landing_asset
from lakehouse.factories.ml import build_pipeline_assets
from lakehouse.factories.sensors import build_source_automation
from lakehouse.factories.trusted import build_trusted_asset
from lakehouse.specs.ml import PipelineSpec
from lakehouse.specs.models import Project, SourceSpec, ViewSpec

_PROJECT: ContextVar[Project | None] = ContextVar("lakehouse_project", default=None)


@contextmanager
def building(project: Project) -> Iterator[None]:
    """The project the components build from while Dagster builds the component tree."""
    token = _PROJECT.set(project)
    try:
        yield
    finally:
        _PROJECT.reset(token)


def _project() -> Project:
    project = _PROJECT.get()
    if project is None:
        raise RuntimeError(
            "lakehouse components build inside lakehouse.factories.build_definitions, which loads the whole"
            " project first (its settings and the cross-references between declarations)"
        )
    return project


class PipelineAttributes(RootModel[PipelineSpec]):
    """An ML pipeline's attributes: ``kind`` selects the parameters (:data:`lakehouse.specs.ml.PipelineSpec`)."""


class _Template(dg.Scaffolder):
    """Writes a commented ``defs.yaml`` named after its folder."""

    text = ""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        path = Path(request.target_path) / "defs.yaml"
        path.write_text(self.text.format(type=request.type_name, name=Path(request.target_path).name), encoding="utf-8")


class _SourceTemplate(_Template):
    text = """\
# A source: landing (bytes as received) -> formatted (typed Delta table) -> trusted (rules and cleaning).
# Every key is documented in docs/sources.md; `dg check yaml` validates this file, and so does every load.
type: {type}
attributes:
  name: {name}
  description: What one row is and where it comes from (shown in the UI).
  collector:
    # file_drop: devices push files into an inbox, the month is read from the file name;
    # http, sql and library collectors are described in docs/sources.md
    type: file_drop
    inbox: ${{LAKEHOUSE_DEMO_ROOT:-.demo}}/inbox/{name}   # ${{VAR}}: only variables interpolation.allowed lists
    pattern: "*.csv"
  format:
    kind: csv
  columns:
    - name: id
      type: string
      nullable: false
    - name: recorded_at
      type: timestamp
  partitioning:
    # each row's month comes from its own timestamp column
    kind: time_column
    column: recorded_at
  quality:
    key: [id, recorded_at]
    rules:
      - name: no_null_ids
        not_null: [id]
"""


class _ViewTemplate(_Template):
    text = """\
# An exploitation view: Spark SQL (or a Python transform) over trusted tables and other views, per month.
# Every key is documented in docs/ml.md ("Views").
type: {type}
attributes:
  name: {name}
  description: What one row is.
  inputs:
    - table: trusted/<source>   # a table some source or view of the project produces
      alias: t
  sql: |
    SELECT * FROM t
"""


class _PipelineTemplate(_Template):
    text = """\
# An ML pipeline: `kind` selects its parameters (consumption_forecast, meter_anomaly);
# every key is documented in docs/ml.md.
type: {type}
attributes:
  name: {name}
  kind: consumption_forecast
  description: What the pipeline learns and what its champion serves.
  input: exploitation/<view>   # a view of the project
  params: {{}}
"""


class _Declaration(dg.Component):
    """A declaration whose attributes are a spec of :mod:`lakehouse.specs`; built from the project's copy of it."""

    model: type[BaseModel]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return cls.model

    @classmethod
    def load(cls, attributes: Any, context: dg.ComponentLoadContext) -> _Declaration:
        spec = attributes.root if isinstance(attributes, RootModel) else attributes
        if spec is None:
            raise ValueError(f"{context.path}: a lakehouse declaration needs its attributes")
        return cls(spec.name)


@dg.scaffold_with(_SourceTemplate)
class Source(_Declaration):
    """A source: its landing, formatted and trusted assets, their checks, and its inbox sensor or schedule."""

    model = SourceSpec

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        project = _project()
        spec = project.source(self.name)
        automation = build_source_automation(project, spec)
        return dg.Definitions(
            assets=[
                build_landing_asset(project, spec),
                build_formatted_asset(project, spec),
                build_trusted_asset(project, spec),
            ],
            jobs=automation.jobs,
            sensors=automation.sensors,
            schedules=automation.schedules,
        )


@dg.scaffold_with(_ViewTemplate)
class View(_Declaration):
    """An exploitation view: one month-partitioned (or merged) Delta table computed from its inputs."""

    model = ViewSpec

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        project = _project()
        (spec,) = [v for v in project.views if v.name == self.name]
        return dg.Definitions(assets=[build_view_asset(project, spec)])


@dg.scaffold_with(_PipelineTemplate)
class Pipeline(_Declaration):
    """An ML pipeline (its ``kind``: forecast, anomaly detection, regression): features to champion."""

    model = PipelineAttributes

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        project = _project()
        (spec,) = [p for p in project.pipelines if p.name == self.name]
        return dg.Definitions(assets=build_pipeline_assets(project, spec))
