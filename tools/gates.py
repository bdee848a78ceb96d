"""Report what breaks the code-shape targets: modules over 600 lines, functions over 60
lines or above radon complexity 20, modules whose maintainability index is not A.

Run: python tools/gates.py [paths...] (default src). Exits 1 when anything is over.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from radon.complexity import cc_visit
from radon.metrics import mi_rank, mi_visit

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
MAX_COMPLEXITY = 20


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def problems(path: Path) -> list[str]:
    """Every target this one module misses, one line each."""
    source = path.read_text(encoding="utf-8")
    found = []
    lines = source.count("\n")
    if lines > MAX_MODULE_LINES:
        found.append(f"{path}: {lines} lines (> {MAX_MODULE_LINES})")
    for func in _functions(ast.parse(source)):
        length = (func.end_lineno or func.lineno) - func.lineno + 1
        if length > MAX_FUNCTION_LINES:
            found.append(f"{path}:{func.lineno} {func.name}: {length} lines")
    for block in cc_visit(source):
        if block.complexity > MAX_COMPLEXITY:
            found.append(f"{path}:{block.lineno} {block.name}: complexity {block.complexity}")
    index = mi_visit(source, multi=True)
    if mi_rank(index) != "A":
        found.append(f"{path}: maintainability index {index:.1f} ({mi_rank(index)})")
    return found


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("src")]
    files = sorted(p for root in roots for p in (root.rglob("*.py") if root.is_dir() else [root]))
    found = [line for path in files for line in problems(path)]
    print("\n".join(found) if found else f"{len(files)} modules within every target")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
