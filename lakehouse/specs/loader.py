"""Load and validate ``configs/``: one entry point, :func:`load_project`.

Errors are :class:`SpecError` and name the file, the line and the key, e.g.::

    configs/sources/meter_readings.yaml:12: columns.1.tpye: Extra inputs are not permitted

``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the environment mapping the caller
passes (``lakehouse.settings`` is the only reader of the process environment), for the variables
``interpolation.allowed`` in ``lakehouse.yaml`` lists only: a config naming any other fails at load, naming
file, line and variable, so a config cannot read the environment (a database password) into a URL, a query
or a manifest. Secrets never go through this path: collectors name the variable (``url_env``,
``headers_env``, ``params_env``) and read it at run time; a variable named so cannot be allowed.

YAML is read by the safe loader with aliases limited: none recursive, and the document with its aliases
expanded at most :data:`MAX_EXPANDED_NODES` nodes (a few lines of nested aliases would otherwise expand
to billions of nodes, or recurse forever).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from lakehouse.specs.ml import PIPELINE_KINDS, PipelineSpec
from lakehouse.specs.models import (
    InterpolationSpec,
    LakehouseSpec,
    Project,
    SourceSpec,
    ViewSpec,
)

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: nodes one config file may hold once its aliases are expanded (the largest shipped config has a few hundred)
MAX_EXPANDED_NODES = 100_000


class SpecError(ValueError):
    """A config file is invalid. The message names the file, line and key."""


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing an alias inside its own anchor (a recursive structure)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[str] = []  # anchors of the collections being composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                line = event.start_mark.line + 1
                raise SpecError(f":{line}: alias *{event.anchor} refers to its own anchor (a recursive structure)")
            return super().compose_node(parent, index)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None and isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self._open.append(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self._open.pop()
        return super().compose_node(parent, index)


def _expanded_size(root: yaml.Node) -> int:
    """The nodes of ``root`` with every alias expanded, counted once per distinct node (no expansion)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else (list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        )
        if done:
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_EXPANDED_NODES + 1)
        else:
            stack.append((node, True))
            stack += [(c, False) for c in children if id(c) not in sizes]
    return sizes[id(root)]


def _interpolate(
    value: Any,
    env: Mapping[str, str],
    allowed: frozenset[str],
    where: Path,
    lines: dict[tuple[Any, ...], int],
    path: tuple[Any, ...] = (),
) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            line = next((lines[path[:i]] for i in range(len(path), -1, -1) if path[:i] in lines), 1)
            at = f"{where}:{line}: {'.'.join(map(str, path)) or '<root>'}"
            if name not in allowed:
                raise SpecError(
                    f"{at}: ${{{name}}} names an environment variable that interpolation.allowed in lakehouse.yaml"
                    f" does not list (allowed: {', '.join(sorted(allowed)) or 'none'})"
                )
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SpecError(f"{at}: environment variable {name} is not set and has no default")

        return _ENV_RE.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v, env, allowed, where, lines, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate(v, env, allowed, where, lines, (*path, k)) for k, v in value.items()}
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
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node) > MAX_EXPANDED_NODES:
                raise SpecError(
                    f":1: more than {MAX_EXPANDED_NODES:,} nodes once its aliases are expanded (an alias expansion attack?)"
                )
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except SpecError as exc:
        raise SpecError(f"{path}{exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{line}: not valid YAML: {exc}") from exc
    lines = _line_index(node) if node is not None else {}
    return data, lines


def _validate(model: Any, path: Path, env: Mapping[str, str], allowed: frozenset[str] | None = None) -> Any:
    """``path`` read as ``model`` (a pydantic model, or an annotated union of models)."""
    data, lines = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: expected a mapping at the top level, got {type(data).__name__}")
    if allowed is None:  # lakehouse.yaml: its own list, read before anything is interpolated
        raw = data.get("interpolation", {})
        allowed = frozenset(_model(InterpolationSpec, raw, path, lines, ("interpolation",)).allowed)
    data = _interpolate(data, env, allowed, path, lines)
    return _model(model, data, path, lines)


def _model(model: Any, data: Any, path: Path, lines: dict[tuple[Any, ...], int], prefix: tuple[Any, ...] = ()) -> Any:
    try:
        return TypeAdapter(model).validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the discriminator key is at fault
                loc = (*loc, str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
            # the nearest enclosing key that exists in the file gives the line
            line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), 1)
            key = ".".join(str(p) for p in loc) or "<root>"
            problems.append(f"{path}:{line}: {key}: {err['msg']}")
        raise SpecError("\n".join(problems)) from None


# pydantic puts the discriminator tag of a union member into error locations; files never contain it
_UNION_TAGS = {"file_drop", "http", "sql", "library", *PIPELINE_KINDS}


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
    allowed = frozenset(lakehouse.interpolation.allowed)
    sources = [_validate(SourceSpec, p, env, allowed) for p in _yaml_files(configs_dir / "sources")]
    views = [_validate(ViewSpec, p, env, allowed) for p in _yaml_files(configs_dir / "exploitation")]
    pipelines = [_validate(PipelineSpec, p, env, allowed) for p in _yaml_files(configs_dir / "ml")]

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
    project = Project(
        root=configs_dir.parent,
        configs_dir=configs_dir,
        lakehouse=lakehouse,
        sources=tuple(sources),
        views=tuple(views),
        pipelines=tuple(pipelines),
    )
    secrets = project.secret_variables()
    leaked = sorted(set(allowed) & set(secrets))
    if leaked:
        line = _read_yaml(main)[1].get(("interpolation", "allowed"), 1)
        raise SpecError(
            f"{main}:{line}: interpolation.allowed lists {', '.join(leaked)}, which "
            + "; ".join(f"{n} is named as a secret by {secrets[n]}" for n in leaked)
            + ": a secret is read at run time, never interpolated into a config"
        )
    return project
