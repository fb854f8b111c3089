"""Fail when a source file is over 400 lines or a function over 80 (`make lint` runs this).

Long files and functions are where a design stops being readable: a model file reads top-down like
its paper in a few hundred lines, and a function does one thing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def problems(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_FILE_LINES:
            found.append(f"{path}: {lines} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    limit = MAX_FUNCTION_LINES
                    found.append(f"{path}:{node.lineno}: {node.name}() is {length} lines (at most {limit})")
    return found


if __name__ == "__main__":
    roots = [Path(p) for p in sys.argv[1:]] or [Path("src")]
    found = [p for root in roots for p in problems(root)]
    ok = f"sizes ok: files <= {MAX_FILE_LINES} lines, functions <= {MAX_FUNCTION_LINES}"
    print("\n".join(found) if found else ok)
    sys.exit(1 if found else 0)
