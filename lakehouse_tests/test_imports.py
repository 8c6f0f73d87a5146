"""The package's layering, checked on the source: every import statement, at any depth of a module.

- collectors fetch and land bytes: no Dagster, no Spark;
- transforms are pure functions of data: no file or table IO (``lakehouse.io``);
- nothing below the factories imports them (transforms, quality, io, ml, specs, collectors);
- the demo's simulated world (``lakehouse.sim``) is imported by nothing in the lakehouse but itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lakehouse"


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports, absolute (relative imports resolved against its package)."""
    names: set[str] = set()
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in paths:
        bad = sorted(n for n in imported(path) if n in forbidden or n.startswith(tuple(f"{f}." for f in forbidden)))
        if bad:
            out[str(path.relative_to(PACKAGE.parent))] = bad
    return out


@pytest.mark.parametrize(
    ("folders", "forbidden"),
    [
        (("collectors",), ("dagster", "pyspark", "lakehouse.factories")),
        (("transforms",), ("lakehouse.io",)),
        (("transforms", "quality", "io", "ml", "specs", "collectors"), ("lakehouse.factories", "lakehouse.definitions")),
    ],
)
def test_layers_import_only_downwards(folders, forbidden):
    assert offending(modules(*folders), forbidden) == {}


def test_nothing_outside_the_simulation_imports_it():
    paths = [p for p in PACKAGE.rglob("*.py") if "sim" not in p.relative_to(PACKAGE).parts[:1]]
    assert offending(paths, ("lakehouse.sim",)) == {}


def test_the_rule_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function, and a relative one, are both found."""
    module = PACKAGE / "collectors" / "_probe_for_test.py"
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: (
            "def f():\n    import pyspark.sql\n    from ..factories import common\n"
            if self == module
            else Path.read_bytes(self).decode()
        ),
    )
    assert offending([module], ("pyspark", "lakehouse.factories")) == {
        "lakehouse/collectors/_probe_for_test.py": ["lakehouse.factories", "lakehouse.factories.common", "pyspark.sql"]
    }
