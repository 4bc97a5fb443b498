"""The package's shape, checked: imports run one way (no cycle, no import of a higher layer), argparse lives in
``cli`` only, the integrations import ``ettin_rerank.adapters`` only, and the light parts stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "packages" / "ettin-rerank" / "src" / "ettin_rerank"
LAYERS = {  # a module may import its own layer and lower ones, never a higher one
    "ettin_rerank": 0,  # the public data types and checks: args, options, results, errors, validation, models, ...
    "ettin_rerank.engine": 1,
    "ettin_rerank.adapters": 2,
    "ettin_rerank.batch": 3,
    "ettin_rerank.serving": 3,
    "ettin_rerank.evaluation": 3,
    "ettin_rerank.training": 4,  # measures itself with the evaluation harness
    "ettin_rerank.cli": 5,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every ``ettin_rerank`` module ``path`` imports, at module level or inside a function (lazy imports count:
    a loop through them is still a loop for the reader); ``if TYPE_CHECKING:`` imports are for type checkers only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for statement in node.body for inner in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ettin_rerank")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ettin_rerank"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found & known


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_a_higher_layer():
    graph = _graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, upward


def test_argparse_and_the_cli_stay_in_cli():
    graph = _graph()
    outside = [name for name in graph if not name.startswith("ettin_rerank.cli")]
    assert not [name for name in outside if any(t.startswith("ettin_rerank.cli") for t in graph[name])]
    argparse_users = [name for name in outside
                      if any(isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names)
                             for node in ast.walk(ast.parse(_modules()[name].read_text(encoding="utf-8"))))]
    assert not argparse_users


def test_the_integrations_import_only_the_adapters_module():
    used = set()
    for path in (ROOT / "integrations").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ettin_rerank")}
        used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
                 if alias.name.startswith("ettin_rerank")}
    assert used == {"ettin_rerank.adapters"}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("module", ["ettin_rerank", "ettin_rerank.adapters", "ettin_rerank.args",
                                    "ettin_rerank.options", "ettin_rerank.results"])
def test_light_modules_do_not_import_torch(module):
    result = _run(f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'")
    assert result.returncode == 0, result.stderr


def test_the_batcher_imports_without_the_server_extra():
    server_extra = ["fastapi", "uvicorn", "prometheus_client", "starlette"]
    blocker = f"import sys\nsys.modules.update(dict.fromkeys({server_extra!r}))\n"  # each import of them now fails
    assert _run(blocker + "import ettin_rerank.serving.batcher").returncode == 0
    refused = _run(blocker + "from ettin_rerank.serving import create_app")
    assert refused.returncode != 0 and 'pip install "ettin-rerank[server]"' in refused.stderr
