"""Load and validate a project: ``lakehouse.yaml`` and the declarations of its defs folder (one
``defs.yaml`` per source, view and ML pipeline, Dagster's component layout); one entry point, :func:`load_project`.

Errors are :class:`SpecError` and name the file, the line and the key, e.g.::

    lakehouse/defs/sources/meter_readings/defs.yaml:14: attributes.columns.1.tpye: Extra inputs are not permitted

``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the environment mapping the caller
passes (``lakehouse.settings`` is the only reader of the process environment), for the variables
``interpolation.allowed`` in ``lakehouse.yaml`` lists only (Dagster's ``{{ env.VAR }}`` templating has no such
list, so a declaration using it is refused): a config naming any other fails at load, naming
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
from typing import Any, NamedTuple

import yaml
from pydantic import TypeAdapter, ValidationError

from lakehouse.specs.ml import PIPELINE_KINDS, PipelineSpec
from lakehouse.specs.models import (
    PLACEHOLDER_RE,
    InterpolationSpec,
    LakehouseSpec,
    Project,
    SourceSpec,
    ViewSpec,
)

_ENV_RE = PLACEHOLDER_RE
_DG_TEMPLATE_RE = re.compile(r"\{\{\s*env\b")
#: a ``defs.yaml``'s ``type`` -> what it declares and the model of its ``attributes``
#: (the component classes in :mod:`lakehouse.components` name the same models)
COMPONENT_TYPES: dict[str, tuple[str, Any]] = {
    "lakehouse.components.Source": ("source", SourceSpec),
    "lakehouse.components.View": ("view", ViewSpec),
    "lakehouse.components.Pipeline": ("pipeline", PipelineSpec),
}
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
        if _DG_TEMPLATE_RE.search(value):
            line = next((lines[path[:i]] for i in range(len(path), -1, -1) if path[:i] in lines), 1)
            raise SpecError(
                f"{where}:{line}: {'.'.join(map(str, path))}: {{{{ env.VAR }}}} templating is not applied to lakehouse"
                " declarations: write ${VAR} (a variable interpolation.allowed in lakehouse.yaml lists)"
            )

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


def _settings(path: Path, env: Mapping[str, str]) -> LakehouseSpec:
    """``lakehouse.yaml``: its own ``interpolation.allowed`` is read before anything is interpolated."""
    data, lines = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: expected a mapping at the top level, got {type(data).__name__}")
    raw = data.get("interpolation", {})
    allowed = frozenset(_model(InterpolationSpec, raw, path, lines, ("interpolation",)).allowed)
    data = _interpolate(data, env, allowed, path, lines)
    return _model(LakehouseSpec, data, path, lines)


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


def _declarations(defs_dir: Path) -> list[Path]:
    """Every ``defs.yaml`` under ``defs_dir``, in path order."""
    if not defs_dir.is_dir():
        raise SpecError(f"{defs_dir}: the defs folder is missing (lakehouse.yaml's 'defs' names it)")
    return sorted(p for p in defs_dir.rglob("*") if p.name in ("defs.yaml", "defs.yml", "component.yaml"))


class _Declared(NamedTuple):
    kind: str
    spec: Any
    path: Path
    lines: dict[tuple[Any, ...], int]


def _declaration(path: Path, env: Mapping[str, str], allowed: frozenset[str]) -> _Declared:
    """One ``defs.yaml``: its ``type`` picks the model, its ``${VAR}``-interpolated ``attributes`` are validated."""
    data, lines = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: expected a mapping at the top level, got {type(data).__name__}")
    for key in data:
        if key not in ("type", "attributes"):
            raise SpecError(
                f"{path}:{lines.get((key,), 1)}: {key}: not supported in a lakehouse declaration"
                " (project-wide policy is applied once, in lakehouse/definitions.py)"
            )
    component = data.get("type")
    if component not in COMPONENT_TYPES:
        raise SpecError(
            f"{path}:{lines.get(('type',), 1)}: type: {component!r} is not a lakehouse component"
            f" (known: {', '.join(COMPONENT_TYPES)})"
        )
    attributes = data.get("attributes")
    if not isinstance(attributes, dict):
        raise SpecError(f"{path}:{lines.get(('attributes',), 1)}: attributes: expected a mapping of the declaration's keys")
    kind, model = COMPONENT_TYPES[component]
    attributes = _interpolate(attributes, env, allowed, path, lines, ("attributes",))
    return _Declared(kind, _model(model, attributes, path, lines, ("attributes",)), path, lines)


def _where(item: _Declared, *key: Any) -> str:
    """``file:line: attributes.<key>`` of a declaration, for a cross-reference error."""
    loc = ("attributes", *key)
    line = next((item.lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in item.lines), 1)
    return f"{item.path}:{line}: {'.'.join(map(str, loc))}"


def _check_references(declared: list[_Declared]) -> None:
    """Names unique per kind; every table a view, an ML pipeline or a reference rule reads is declared (a
    declared table without data for a month leaves its reference rule "not evaluated" that month)."""
    for kind in ("source", "view", "pipeline"):
        seen: dict[str, _Declared] = {}
        for item in (d for d in declared if d.kind == kind):
            if item.spec.name in seen:
                raise SpecError(
                    f"{_where(item, 'name')}: {kind} {item.spec.name!r} is also declared by {seen[item.spec.name].path}"
                )
            seen[item.spec.name] = item
    sources = [d.spec.name for d in declared if d.kind == "source"]
    views = [d.spec.name for d in declared if d.kind == "view"]
    zones = {f"{z}/{s}" for s in sources for z in ("formatted", "trusted")}
    known = zones | {f"exploitation/{v}" for v in views}
    for item in declared:
        refs: list[tuple[tuple[Any, ...], str]] = []
        if item.kind == "view":
            refs = [(("inputs", i, "table"), inp.table) for i, inp in enumerate(item.spec.inputs)]
        elif item.kind == "pipeline":
            refs = [(("input",), item.spec.input)]
        else:
            rules = item.spec.quality.rules
            refs = [
                (("quality", "rules", i, "reference", "table"), r.reference.table) for i, r in enumerate(rules) if r.reference
            ]
        for key, table in refs:
            if table not in known:
                raise SpecError(
                    f"{_where(item, *key)}: {item.kind} {item.spec.name!r} reads {table!r},"
                    f" which nothing declares (known: {sorted(known)})"
                )


def load_project(configs_dir: Path, *, env: Mapping[str, str] | None = None) -> Project:
    """Read ``lakehouse.yaml`` under ``configs_dir`` and every declaration of its defs folder.

    Args:
        configs_dir: the folder of ``lakehouse.yaml``; its parent is the project root relative paths start from.
        env: values for ``${VAR}`` interpolation (empty when omitted).

    Raises:
        SpecError: a file is missing, not YAML, or does not validate, or a declaration reads a table nothing
            declares; the message names file, line, key.
    """
    configs_dir = Path(configs_dir).resolve()
    env = env or {}
    main = configs_dir / "lakehouse.yaml"
    if not main.is_file():
        raise SpecError(f"{main}: missing (every configs directory needs a lakehouse.yaml)")
    lakehouse = _settings(main, env)
    allowed = frozenset(lakehouse.interpolation.allowed)
    defs_dir = (configs_dir / lakehouse.defs).resolve()
    declared = [_declaration(p, env, allowed) for p in _declarations(defs_dir)]
    _check_references(declared)
    project = Project(
        root=configs_dir.parent,
        configs_dir=configs_dir,
        defs_dir=defs_dir,
        lakehouse=lakehouse,
        sources=tuple(d.spec for d in declared if d.kind == "source"),
        views=tuple(d.spec for d in declared if d.kind == "view"),
        pipelines=tuple(d.spec for d in declared if d.kind == "pipeline"),
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
