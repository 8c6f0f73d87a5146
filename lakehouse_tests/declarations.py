"""Writing a declaration (a component's ``defs.yaml``) into a test project's defs folder."""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

COMPONENTS = {"sources": "Source", "views": "View", "ml": "Pipeline"}

#: a small csv file-drop source of hourly heat readings (``heat_<device>_<YYYY-MM>.csv`` in its inbox)
HEAT_DROP = """
name: heat_drop
description: Hourly heat readings dropped as csv.
collector:
  type: file_drop
  inbox: ${LAKEHOUSE_DEMO_ROOT}/inbox/heat_drop
  pattern: "heat_*.csv"
  month_regex: '_(\\d{4}-\\d{2})\\.csv$'
format: {delimiter: ","}
columns:
  - {name: meter_id, type: string, nullable: false}
  - {name: ts, type: timestamp, nullable: false}
  - {name: reading_kwh, type: double, nullable: false}
partitioning: {kind: time_column, column: ts}
quality:
  key: [meter_id, ts]
"""


def declare(configs: Path, kind: str, name: str, attributes: str) -> Path:
    """``<configs>/defs/<kind>/<name>/defs.yaml`` holding ``attributes`` (YAML text) under its component type.

    The attributes start at line 3 of the file (after ``type:`` and ``attributes:``).
    """
    path = configs / "defs" / kind / name / "defs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(attributes).strip("\n"), "  ")
    path.write_text(f"type: lakehouse.components.{COMPONENTS[kind]}\nattributes:\n{body}\n")
    return path


def declaration(configs: Path, kind: str, name: str) -> Path:
    """The ``defs.yaml`` of a declaration of a test project."""
    return configs / "defs" / kind / name / "defs.yaml"


def copy_configs(target: Path, keep: Iterable[str] | None = None, base: Path = REPO / "configs") -> Path:
    """``base``'s ``lakehouse.yaml`` and its declarations at ``target`` (``target/defs``, the default defs
    folder); with ``keep``, only the declarations named ``<kind>/<name>`` (e.g. ``sources/weather``)."""
    target.mkdir(parents=True)
    text = (base / "lakehouse.yaml").read_text()
    defs = (base / (yaml.safe_load(text).get("defs") or "defs")).resolve()
    (target / "lakehouse.yaml").write_text(re.sub(r"(?m)^defs: .*$", "defs: defs", text))
    for path in sorted(defs.glob("*/*/defs.yaml")):
        rel = path.parent.relative_to(defs)
        if keep is None or rel.as_posix() in keep:
            shutil.copytree(path.parent, target / "defs" / rel)
    return target
