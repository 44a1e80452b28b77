"""The task kinds the code hands out, read from its source: every TaskLink(...) and
PendingTask(...) call, by the file that writes it."""

from __future__ import annotations

import ast
from pathlib import Path

import perfcycle

PACKAGE = Path(perfcycle.__file__).resolve().parent


def declared_kinds() -> dict[str, set[tuple[str, str | None]]]:
    """Every kind written in the code's TaskLink(...) and PendingTask(...) calls, by the file
    that writes it, with the action a PendingTask pairs it with."""
    found: dict[str, set[tuple[str, str | None]]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if node.func.id == "TaskLink" and args and isinstance(args[0], str):
                pair: tuple[str, str | None] = (args[0], None)
            elif node.func.id == "PendingTask" and len(args) >= 3 and isinstance(args[2], str):
                pair = (args[2], str(args[1]))
            else:
                continue
            found.setdefault(str(path.relative_to(PACKAGE)), set()).add(pair)
    return found
