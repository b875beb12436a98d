"""The import graph of ``ctai``: one place per concern, and no module reaching up or sideways.

Every ``import`` in a module counts, a deferred one inside a function too: it is still a
dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ctai"
#: Only the command line and ``ctai serve`` put everything together; nothing below imports them.
TOP = {"ctai.cli", "ctai.serve"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The ctai modules that module ``name`` imports (a package's module when one is named)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                         for alias in node.names)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: imports(name) for name in MODULES}


def edges(where: str, to: str) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in GRAPH.items() if a.startswith(where)
                  for b in targets if b.startswith(to))


def test_no_import_cycles():
    seen: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> None:
        if name in stack:
            pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(name):], name]))
        if name in seen:
            return
        stack.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        stack.pop()
        seen.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_built_in_plugins_never_import_each_other():
    assert edges("ctai.builtin.", "ctai.builtin.") == []


def test_core_never_imports_a_plugin():
    assert [e for e in edges("ctai.", "ctai.builtin.") if not e.startswith("ctai.builtin.")] == []


def test_outputs_never_import_inputs_transports_or_the_web():
    assert [e for prefix in ("ctai.inputs", "ctai.transports", "ctai.web", "ctai.outbox")
            for e in edges("ctai.outputs", prefix)] == []


def test_outbox_and_transports_do_not_import_each_other():
    assert edges("ctai.outbox", "ctai.transports") == edges("ctai.transports", "ctai.outbox") == []


def test_nothing_imports_the_command_line_or_serve():
    assert [e for top in TOP for e in edges("ctai", top) if e.split(" -> ")[0] not in TOP] == []


def test_the_graph_sees_the_modules():
    """A guard for the test itself: it finds what it checks."""
    assert {"ctai.builtin.sr", "ctai.outputs.sr", "ctai.outbox"} <= set(GRAPH)
    assert "ctai.outputs.sr" in GRAPH["ctai.builtin.sr"]
