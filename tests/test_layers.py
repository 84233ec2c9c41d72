"""The house's floors: every import of trainers/, baselines/ and orchestrator/ points down or sideways, never up, and
no modules import each other in a circle. The runtime room spans two floors: the contracts and tasks algorithms
are written against sit below the algorithms, the registry that lists them (and the record and trial core that
use it) above. Imports made only for type checking (`if TYPE_CHECKING:`) are not imports at run time and are not
counted."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own floor and those below.
FLOORS = [
    ("trainers.envs",),  # the environments this project builds
    ("trainers.data",),  # the in-memory dataset, its readers, subsets, samplers
    ("trainers.runtime.algorithm", "trainers.runtime.tasks", "trainers.runtime.evaluation",
     "trainers.runtime.cpu_allocator"),  # what algorithms are written against
    ("trainers.sequence", "baselines"),  # the algorithms
    ("trainers.runtime",),  # the registry, the record, the trial core and its adapters, the train CLI
    ("trainers.tools",),  # command-line tools around the data
    ("orchestrator",),  # the sweep, tracking and the aggregator
]


def floor_of(module: str) -> int | None:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def runtime_imports(path: Path) -> set[str]:
    """Modules the file imports when it runs (at the top or inside functions), without `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    imported = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return imported


def project_modules() -> dict[str, set[str]]:
    graph = {}
    for package in ("trainers", "baselines", "orchestrator"):
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            graph[name] = runtime_imports(path)
    return {name: {m for m in imported if m in graph} for name, imported in graph.items()}


def test_every_import_points_down_or_sideways():
    upward = [f"{module} -> {target}" for module, imported in project_modules().items() for target in imported
              if floor_of(target) > floor_of(module)]
    assert upward == []


def test_no_import_circle():
    graph = project_modules()
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            if target != module:
                visit(target, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    assert circles == []
