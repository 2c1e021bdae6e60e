"""The code stays readable: no function in the package or the scripts is longer than 60
lines, and the README's layout names every module of the package, its packages and the scripts
(and nothing that is gone)."""

from __future__ import annotations

import ast
import re
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


def _layout() -> str:
    """The README's "## Layout" section."""
    return (REPO / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def _layout_mismatches(layout: str) -> list[str]:
    """What the layout leaves out (a top-level module, a package, a script), then the
    ``sam_train/`` paths it names that do not exist."""
    modules = [p.name for p in sorted(PACKAGE.glob("*.py")) if p.name != "__init__.py"]
    packages = [f"{p.name}/" for p in sorted(PACKAGE.iterdir()) if (p / "__init__.py").exists()]
    scripts = [p.name for p in sorted((REPO / "scripts").iterdir()) if not p.name.startswith("_")]
    missing = [
        f"not in the layout: {name}"
        for name in [*modules, *packages, *scripts]
        if not re.search(rf"(?<![\w.]){re.escape(name)}", layout.replace("sam_train/", " "))
    ]
    named = sorted(set(re.findall(r"\bsam_train/[\w/]*\w(?:\.\w+|/)?", layout)))
    return missing + [f"gone: {path}" for path in named if not (REPO / path).exists()]


def test_the_readme_layout_matches_the_code():
    assert _layout_mismatches(_layout()) == []


def test_the_layout_check_sees_a_missing_and_a_stale_entry():
    layout = _layout().replace("sam_train/logfile.py", "sam_train/old_logfile.py")
    assert _layout_mismatches(layout) == [
        "not in the layout: logfile.py",
        "gone: sam_train/old_logfile.py",
    ]
