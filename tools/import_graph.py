"""Print the import graph between the stages of src/pixellm: each stage (top-level module or
package) and the stages it imports, module- and function-level imports alike.

    python tools/import_graph.py [REPO_ROOT]

tests/test_import_graph.py checks the layering (docs/architecture.md, "Import graph"); this
prints the whole graph, e.g. to compare two commits.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pixellm" and len(parts) > 1 else None


def stage_graph(package: Path) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in package.rglob("*.py"):
        me = stage(".".join(path.relative_to(package.parent).with_suffix("").parts))
        if me in (None, "__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [a.name for a in node.names] if node.module == "pixellm" else [stage(node.module)]
            elif isinstance(node, ast.Import):
                names = [stage(a.name) for a in node.names]
            else:
                continue
            edges[me].update(n for n in names if n and n != me)
    return edges


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for name, targets in sorted(stage_graph(root / "src" / "pixellm").items()):
        if not targets:
            continue
        print(f"{name:12s} -> {', '.join(sorted(targets))}")
