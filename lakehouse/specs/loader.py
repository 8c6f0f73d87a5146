"""Load and validate ``configs/``: one entry point, :func:`load_project`.

Errors are :class:`SpecError` and name the file, the line and the key, e.g.::

    configs/sources/meter_readings.yaml:12: columns.1.tpye: Extra inputs are not permitted

``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the environment mapping the caller
passes (``lakehouse.settings`` is the only reader of the process environment). Secrets never go through
this path: collectors name the variable (``url_env``) and read it at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lakehouse.specs.models import LakehouseSpec, PipelineSpec, Project, SourceSpec, ViewSpec

M = TypeVar("M", bound=BaseModel)
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """A config file is invalid. The message names the file, line and key."""


def _interpolate(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SpecError(f"{where}: environment variable {name} is not set and has no default")

        return _ENV_RE.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v, env, where) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env, where) for k, v in value.items()}
    return value


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path of a composed YAML document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = (*path, key_node.value)
            lines.update(_line_index(value_node, sub))
            lines[sub] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{line}: not valid YAML: {exc}") from exc
    lines = _line_index(node) if node is not None else {}
    return data, lines


def _validate(model: type[M], path: Path, env: Mapping[str, str]) -> M:
    data, lines = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: expected a mapping at the top level, got {type(data).__name__}")
    data = _interpolate(data, env, str(path))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
            # the nearest enclosing key that exists in the file gives the line
            line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), 1)
            key = ".".join(str(p) for p in loc) or "<root>"
            problems.append(f"{path}:{line}: {key}: {err['msg']}")
        raise SpecError("\n".join(problems)) from None


# pydantic puts the discriminator tag of a union member into error locations; files never contain it
_UNION_TAGS = {"file_drop", "http", "sql", "library"}


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))


def load_project(configs_dir: Path, *, env: Mapping[str, str] | None = None) -> Project:
    """Read ``lakehouse.yaml``, ``sources/``, ``exploitation/`` and ``ml/`` under ``configs_dir``.

    Args:
        configs_dir: the configs directory; its parent is the project root relative paths start from.
        env: values for ``${VAR}`` interpolation (empty when omitted).

    Raises:
        SpecError: a file is missing, not YAML, or does not validate; the message names file, line, key.
    """
    configs_dir = Path(configs_dir).resolve()
    env = env or {}
    main = configs_dir / "lakehouse.yaml"
    if not main.is_file():
        raise SpecError(f"{main}: missing (every configs directory needs a lakehouse.yaml)")
    lakehouse = _validate(LakehouseSpec, main, env)
    sources = [_validate(SourceSpec, p, env) for p in _yaml_files(configs_dir / "sources")]
    views = [_validate(ViewSpec, p, env) for p in _yaml_files(configs_dir / "exploitation")]
    pipelines = [_validate(PipelineSpec, p, env) for p in _yaml_files(configs_dir / "ml")]

    for kind, items in (("source", sources), ("view", views), ("pipeline", pipelines)):
        names = [i.name for i in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"{configs_dir}: {kind} names must be unique, repeated: {dupes}")

    known = {f"formatted/{s.name}" for s in sources} | {f"trusted/{s.name}" for s in sources}
    for view in views:
        for inp in view.inputs:
            if inp.table.startswith("exploitation/"):
                continue
            if inp.table not in known:
                raise SpecError(
                    f"{configs_dir / 'exploitation'}: view {view.name!r} reads {inp.table!r},"
                    f" which no source produces (known: {sorted(known)})"
                )
    return Project(
        root=configs_dir.parent,
        configs_dir=configs_dir,
        lakehouse=lakehouse,
        sources=tuple(sources),
        views=tuple(views),
        pipelines=tuple(pipelines),
    )
