"""No function in ``lakehouse/`` is 80 lines or longer (issue 22): a long function is split by meaning."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lakehouse"
LIMIT = 80


def long_functions(root: Path = PACKAGE, limit: int = LIMIT) -> dict[str, int]:
    """``<file>:<function>`` -> length of every function (nested ones included) of ``limit`` lines or more."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length >= limit:
                    out[f"{path.relative_to(root.parent).as_posix()}:{node.name}"] = length
    return out


def test_no_function_is_80_lines_or_longer():
    offenders = long_functions()
    assert not offenders, "functions of 80 lines or more (split them by meaning): " + ", ".join(
        f"{name} ({n} lines)" for name, n in sorted(offenders.items(), key=lambda item: -item[1])
    )


def test_the_checker_sees_nested_and_async_functions(tmp_path):
    """The checker itself: a nested def and an async def at the limit are found, one line shorter is not."""

    def function(header: str, lines: int, indent: str = "") -> list[str]:
        return [indent + header, *(f"{indent}    x = {i}" for i in range(lines - 1))]

    source = [
        *function("def outer():", 2),  # outer holds inner: LIMIT + 2 lines
        *function("def inner():", LIMIT, indent="    "),
        *function("async def a():", LIMIT),
        *function("def short():", LIMIT - 1),
    ]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("\n".join(source) + "\n")
    assert long_functions(tmp_path / "pkg") == {"pkg/m.py:outer": LIMIT + 2, "pkg/m.py:inner": LIMIT, "pkg/m.py:a": LIMIT}
