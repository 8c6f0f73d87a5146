"""The declarations as Dagster components, driven by ``dg``: scaffold a source, fill it, materialize it through
trusted; a mistake in a ``defs.yaml`` named by file, line and key; ``dg check yaml`` and ``dg list defs``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from lakehouse.components import Pipeline, Source, View
from lakehouse.factories import build_definitions
from lakehouse.io.lake import Lake
from lakehouse.specs import SpecError, load_project
from lakehouse.specs.loader import COMPONENT_TYPES
from lakehouse.specs.ml import PIPELINE_KINDS
from lakehouse_tests.conftest import REPO

VENV = Path(sys.executable).parent
MONTH = "2012-03"


def dg_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``dg`` of the project's environment, the worktree's package first on the path."""
    values = {
        **os.environ,
        "VIRTUAL_ENV": str(VENV.parent),
        "PATH": f"{VENV}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        **env,
    }
    done = subprocess.run([str(VENV / "dg"), *args], cwd=cwd, env=values, capture_output=True, text=True, timeout=300)
    assert "Warning" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    return done


@pytest.fixture
def dg_project(tmp_path: Path) -> Path:
    """A dg project of its own: the repository's pyproject.toml, an empty defs folder, the shipped settings."""
    root = tmp_path / "project"
    (root / "lakehouse" / "defs").mkdir(parents=True)
    (root / "configs").mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO / "configs" / "lakehouse.yaml", root / "configs" / "lakehouse.yaml")
    return root


def test_the_components_schemas_are_the_specs():
    assert Source.get_model_cls().__name__ == "SourceSpec" and View.get_model_cls().__name__ == "ViewSpec"
    kinds = Pipeline.get_model_cls().model_json_schema()["discriminator"]["mapping"]
    assert set(kinds) == set(PIPELINE_KINDS) == {"consumption_forecast", "meter_anomaly"}
    assert set(COMPONENT_TYPES) == {f"lakehouse.components.{c.__name__}" for c in (Source, View, Pipeline)}


def test_a_scaffolded_source_filled_in_materializes_through_trusted(dg_project: Path, tmp_path: Path):
    done = dg_cli("scaffold", "defs", "lakehouse.components.Source", "sources/heat_drop", cwd=dg_project)
    assert done.returncode == 0, done.stderr[-3000:]
    path = dg_project / "lakehouse" / "defs" / "sources" / "heat_drop" / "defs.yaml"
    template = path.read_text()
    assert template.startswith("# A source:") and "name: heat_drop" in template
    # the template as written is a valid declaration: fill in the columns of the meters' csv files
    declared = yaml.safe_load(template)
    assert declared["type"] == "lakehouse.components.Source"
    filled = template.replace("    - name: id\n      type: string", "    - name: meter_id\n      type: string")
    filled = filled.replace(
        "    - name: recorded_at\n      type: timestamp", "    - name: ts\n      type: timestamp\n      nullable: false"
    )
    filled = filled.replace("    column: recorded_at", "    column: ts").replace("key: [id, recorded_at]", "key: [meter_id, ts]")
    filled = filled.replace("not_null: [id]", "not_null: [meter_id]").replace(
        "      nullable: false\n", "      nullable: false\n    - name: reading_kwh\n      type: double\n", 1
    )
    path.write_text(filled)
    inbox = tmp_path / "world" / "inbox" / "heat_drop"
    inbox.mkdir(parents=True)
    good = [(m, d, h) for m in (1, 2, 3) for d in (1, 2, 3) for h in (0, 1, 2, 3)]
    rows = "".join(f"M{m},{MONTH}-0{d}T0{h}:00:00Z,{m + d + h / 10}\n" for m, d, h in good)
    (inbox / f"heat_{MONTH}.csv").write_text("meter_id,ts,reading_kwh\n" + rows + f",{MONTH}-03T00:00:00Z,9.0\n")

    checked = dg_cli("check", "yaml", cwd=dg_project)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    env = {"LAKEHOUSE_ROOT": str(tmp_path / "lake"), "LAKEHOUSE_DEMO_ROOT": str(tmp_path / "world")}
    project = load_project(dg_project / "configs", env=env)
    assert [s.name for s in project.sources] == ["heat_drop"]
    defs = build_definitions(project)
    selection = [dg.AssetKey([zone, "heat_drop"]) for zone in ("landing", "formatted", "trusted")]
    result = dg.materialize(defs.assets, selection=selection, partition_key=MONTH, resources=defs.resources)
    assert result.success
    trusted = Lake(project.lake_root).read_arrow("trusted", "heat_drop").to_pylist()
    assert len(trusted) == len(good) and {r["meter_id"] for r in trusted} == {"M1", "M2", "M3"}  # the id-less row is not
    assert sum(r["reading_kwh"] for r in trusted) == pytest.approx(sum(m + d + h / 10 for m, d, h in good))


def test_a_yaml_mistake_is_named_by_file_line_and_key(dg_project: Path):
    dg_cli("scaffold", "defs", "lakehouse.components.Source", "sources/heat_drop", cwd=dg_project)
    path = dg_project / "lakehouse" / "defs" / "sources" / "heat_drop" / "defs.yaml"
    text = path.read_text().replace("      type: timestamp", "      tpye: timestamp")
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "tpye:" in t)
    with pytest.raises(SpecError) as err:
        load_project(dg_project / "configs", env={})
    assert f"{path}:{line}: attributes.columns.1.tpye: Extra inputs are not permitted" in str(err.value)
    # dg's own check names the same file, line and key
    checked = dg_cli("check", "yaml", cwd=dg_project)
    assert checked.returncode == 1
    assert f"{path}:{line}" in checked.stdout and "attributes.columns.1" in checked.stdout and "tpye" in checked.stdout


def test_dg_checks_and_lists_the_repository_project():
    checked = dg_cli("check", "yaml", cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = dg_cli("list", "defs", "--json", cwd=REPO)
    assert listed.returncode == 0, listed.stderr[-3000:]
    project = load_project(REPO / "configs", env={})
    for source in project.sources:
        assert f"trusted/{source.name}" in listed.stdout
    for view in project.views:
        assert f"exploitation/{view.name}" in listed.stdout
