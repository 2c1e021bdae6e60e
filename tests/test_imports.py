"""The seams between the packages: no import cycle among sam_train's modules and the scripts,
and the libraries (``sam_train.sam``, ``sam_train.step``, ``sam_train.data``) usable without
Hydra, OmegaConf or the config package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO, subprocess_env

# scripts/bench.py <-> scripts/bench_sharding.py: being split into a package on its own
# branch; delete this entry once that lands.
KNOWN_CYCLES = [{"bench", "bench_sharding"}]


def _modules() -> dict[str, Path]:
    """Module name -> file: sam_train's by package path, the scripts by file name (as they
    import each other)."""
    found = {}
    for path in (REPO / "sam_train").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (REPO / "scripts").rglob("*.py"):
        found[".".join(path.relative_to(REPO / "scripts").with_suffix("").parts)] = path
    return found


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """What one import statement names: modules, and ``module.attribute`` candidates."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    module = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        module = ".".join(package + ([module] if module else []))
    return [module, *(f"{module}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Every import statement counts: module level, under TYPE_CHECKING, inside functions."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(name, path, node):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [{"a", "b", "c"}]


def test_no_import_cycle_in_sam_train_or_scripts():
    graph = import_graph()
    assert {"sam_train.trainer", "sam_train.build", "sam_train.callbacks.ema"} <= set(graph)
    assert "sam_train.run" in graph["sam_train.trainer"]  # the graph does see imports
    found = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles: {found}"


def test_the_trainer_never_imports_a_callback_nor_the_factory():
    graph = import_graph()
    for module in ("sam_train.trainer", "sam_train.run", "sam_train.checkpoint"):
        assert not {t for t in graph[module] if t.startswith("sam_train.callbacks")}, module
        assert "sam_train.build" not in graph[module], module


def test_sam_step_and_data_import_without_hydra_omegaconf_or_the_config():
    """One process: the libraries load no config; sam, step and strategy no timm either (a
    distributed test worker that needs only them starts 2 s of CPU sooner)."""
    code = (
        "import sys, sam_train.sam, sam_train.step, sam_train.strategy\n"
        "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))\n"
        "import sam_train.data\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')"
        " or m.startswith('sam_train.config')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "[]"], result.stdout


def test_the_schemas_lists_are_the_libraries():
    """The validator's torch-free copies of the libraries' names (an import would load torch
    into the validator, or Hydra into the libraries)."""
    from sam_train.config import schema
    from sam_train.data import constants
    from sam_train.sam import VARIANTS
    from sam_train.step.precision import PRECISIONS

    assert set(schema.SAM_VARIANTS) == {"none", *VARIANTS}
    assert schema.AUGMENTATIONS == constants.CIFAR_AUGMENTATIONS
    assert schema.CIFAR_IMAGE_SIZE == constants.CIFAR_IMAGE_SIZE
    assert set(schema.PRECISIONS) == set(PRECISIONS)
