"""The only reader of the process environment.

``LAKEHOUSE_CONFIGS``   the folder of ``lakehouse.yaml`` (default: ``configs/`` next to this package's parent);
                       its ``defs`` key names the folder of the declarations (Dagster components)
``LAKEHOUSE_ROOT``      overrides ``lake_root`` from ``lakehouse.yaml`` (a local path or ``s3://bucket/prefix``)
the variables ``storage.credentials`` names in ``lakehouse.yaml``  object-store credentials (read by
                       :func:`lake`, never copied into a config, a log or metadata)
``LAKEHOUSE_SPARK_REMOTE`` / ``LAKEHOUSE_SPARK_MASTER``  override ``spark.remote`` / ``spark.master``
``LAKEHOUSE_BACKFILL_MONTHS_PER_RUN``  zone backfills in runs of that many months (unset: one run per range)
``LAKEHOUSE_UI_TOKEN``  the token the UI asks for (required to bind beyond loopback, :mod:`lakehouse.ui`)

Every other variable is visible to configs only through ``${VAR}`` interpolation (see the loader), and
secrets only through ``dagster.EnvVar`` at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from lakehouse.specs import Project, load_project
from lakehouse.specs.models import LakehouseSpec, SparkSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


def configs_dir() -> Path:
    return Path(os.environ.get("LAKEHOUSE_CONFIGS", REPO_ROOT / "configs")).resolve()


def env() -> dict[str, str]:
    return dict(os.environ)


def secret(name: str) -> str | None:
    """A secret from the environment (never logged, never written to a config or metadata)."""
    return os.environ.get(name)


def load(configs: Path | None = None) -> Project:
    """The project from ``configs`` (or ``LAKEHOUSE_CONFIGS``), with environment overrides applied."""
    project = load_project(configs or configs_dir(), env=env())
    spec = project.lakehouse
    spark = spec.spark
    overrides_spark: dict[str, object] = {}
    if "LAKEHOUSE_SPARK_REMOTE" in os.environ:
        overrides_spark["remote"] = os.environ["LAKEHOUSE_SPARK_REMOTE"] or None
    if "LAKEHOUSE_SPARK_MASTER" in os.environ:
        overrides_spark["master"] = os.environ["LAKEHOUSE_SPARK_MASTER"]
    overrides: dict[str, object] = {}
    if overrides_spark:
        overrides["spark"] = SparkSpec(**{**spark.model_dump(), **overrides_spark})
    if "LAKEHOUSE_ROOT" in os.environ:
        overrides["lake_root"] = os.environ["LAKEHOUSE_ROOT"]
    if overrides:
        new_lake = LakehouseSpec(**{**spec.model_dump(), **{k: v for k, v in overrides.items()}})
        project = project.model_copy(update={"lakehouse": new_lake})
    lake(project)  # an object-store root whose credential variables are not set fails now, naming them
    return project


def lake(project: Project):
    """The project's :class:`lakehouse.io.lake.Lake`, with object-store credentials from the environment."""
    from lakehouse.io.lake import Lake

    return Lake(project.lake_root, project.lakehouse.storage, env=os.environ)


def backfill_months_per_run() -> int | None:
    """``LAKEHOUSE_BACKFILL_MONTHS_PER_RUN`` as a positive int; ``None`` (one run per range) when unset."""
    value = os.environ.get("LAKEHOUSE_BACKFILL_MONTHS_PER_RUN", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"LAKEHOUSE_BACKFILL_MONTHS_PER_RUN must be a positive integer, got {value!r}")
    return int(value)


def ui_token() -> str | None:
    """``LAKEHOUSE_UI_TOKEN``: the UI's token (``None`` when unset or blank)."""
    return os.environ.get("LAKEHOUSE_UI_TOKEN", "").strip() or None
