"""The first-party import graph of src/highlightsmail: edges, hidden edges and circles.

An import inside a function or under `if TYPE_CHECKING:` is a real dependency that a
reader of the module's top does not see. This prints how many module-to-module edges
there are, how many are seen only inside functions or under TYPE_CHECKING, and the
import circles (strongly connected modules) counting top-level imports alone, then with
function-level imports, then with everything. lint-imports enforces the rules
(pyproject.toml, [tool.importlinter]); this gives the figures.

Run from the repository root: python tools/imports.py [--edges]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "highlightsmail"
TOP, FUNCTION, TYPE_CHECKING = "top", "function", "type_checking"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, packages by their __init__.py."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(node: ast.AST, package: list[str], resolve: Callable[[str], str]) -> list[str]:
    """The first-party modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = ".".join([*package[: len(package) - node.level + 1], node.module or ""])
        else:
            base = node.module or ""
        if not base.startswith("highlightsmail"):
            return []
        return [resolve(f"{base.rstrip('.')}.{alias.name}") for alias in node.names]
    if isinstance(node, ast.Import):
        return [resolve(alias.name) for alias in node.names if alias.name.startswith("highlightsmail")]
    return []


def edges(mods: dict[str, Path]) -> dict[tuple[str, str], set[str]]:
    """(importer, imported) -> the kinds of place the import sits in."""

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    found: dict[tuple[str, str], set[str]] = {}

    def visit(node: ast.AST, where: str, name: str, package: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for inner in child.body:
                    visit(ast.Module([inner], []), TYPE_CHECKING, name, package)
                for inner in child.orelse:
                    visit(ast.Module([inner], []), where, name, package)
                continue
            here = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and where == TOP:
                here = FUNCTION
            for target in _targets(child, package, resolve):
                if target and target != name:
                    found.setdefault((name, target), set()).add(here)
            visit(child, here, name, package)

    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        visit(ast.parse(path.read_text(encoding="utf-8")), TOP, name, package)
    return found


def circles(graph: dict[str, set[str]], nodes: Iterable[str]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in nodes:
        if v not in index:
            connect(v)
    return sorted(out)


def main() -> int:
    """Print the graph's figures and its circles; 1 when there is any circle."""
    parser = argparse.ArgumentParser(prog="imports.py", description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="also list every edge with where it is imported")
    args = parser.parse_args()
    mods = modules()
    found = edges(mods)
    short = lambda m: m.removeprefix("highlightsmail.")  # noqa: E731
    if args.edges:
        for (a, b), kinds in sorted(found.items()):
            print(f"{short(a)} -> {short(b)}  {','.join(sorted(kinds))}")
    hidden = [kinds for kinds in found.values() if TOP not in kinds]
    print(f"modules {len(mods)}  edges {len(found)}  hidden {len(hidden)}", end="")
    print(f" (only in functions {sum(1 for k in hidden if FUNCTION in k)},", end="")
    print(f" only under TYPE_CHECKING {sum(1 for k in hidden if k == {TYPE_CHECKING})})")
    any_circle = False
    for kinds in ({TOP}, {TOP, FUNCTION}, {TOP, FUNCTION, TYPE_CHECKING}):
        graph: dict[str, set[str]] = {}
        for (a, b), where in found.items():
            if where & kinds:
                graph.setdefault(a, set()).add(b)
        groups = circles(graph, mods)
        any_circle = any_circle or bool(groups)
        label = " + ".join(sorted(kinds))
        print(f"circles ({label}): " + ("none" if not groups else "; ".join(", ".join(map(short, g)) for g in groups)))
    return 1 if any_circle else 0


if __name__ == "__main__":
    sys.exit(main())
