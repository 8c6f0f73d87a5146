"""The project's declarations, one folder each: Dagster's defs folder (``[tool.dg.project]`` in pyproject.toml)."""
