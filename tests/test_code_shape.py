"""The code stays readable: no function in the package or the scripts is longer than 60
lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sam_train"
MAX_LINES = 60
# scripts/bench*.py: being split into a package of small modules on its own branch; delete
# this once that lands.
NOT_YET = ("bench.py", "bench_sharding.py")


def _long_functions(source: str, name: str) -> list[str]:
    return [
        f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source, filename=name))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


def test_no_function_in_the_package_or_the_scripts_is_longer_than_60_lines():
    files = [*PACKAGE.rglob("*.py"), *(REPO / "scripts").rglob("*.py")]
    found = [
        line
        for path in sorted(files)
        if path.name not in NOT_YET
        for line in _long_functions(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not found, "\n".join(found)


def test_the_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert _long_functions(f"def long():\n{body}\n", "probe.py") == [
        f"probe.py:1 long ({MAX_LINES + 1} lines)"
    ]
    assert _long_functions(f"def short():\n{body[: body.rindex(chr(10))]}\n", "probe.py") == []
