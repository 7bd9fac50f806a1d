"""The shape of the package: layers that import only downwards, no import circles, small modules.

Every import counts, also one inside a function or under TYPE_CHECKING: a circle
that only type checking sees is still two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "stackvisor"

# Lowest first: a module may import its own layer and the layers before it.
LAYERS = [
    {
        "stackvisor.errors",
        "stackvisor.paths",
        "stackvisor.stackref",
        "stackvisor.textfmt",
        "stackvisor.graph",
        "stackvisor.config",
    },
    {"stackvisor.system"},
    {"stackvisor.ports"},
    {"stackvisor.runtime"},
    {"stackvisor.export"},
    {"stackvisor.control"},
    {"stackvisor.logsetup", "stackvisor.app"},
    {"stackvisor.cli", "stackvisor.tui", "stackvisor.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for imported in names:
            # `from stackvisor.runtime import process` imports the module process.
            name = imported
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("stackvisor") and name != "stackvisor":
                found.add(name)
    return found


def layer(name: str) -> int:
    for i, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return i
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. Importing a submodule runs its package's
    `__init__` first whatever the code says, so that edge is left out."""
    found = modules()
    known = set(found)
    return {
        name: {t for t in imports(path, known) if t != name and not name.startswith(t + ".")}
        for name, path in found.items()
    }


def test_every_import_goes_down_the_layers() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name != "stackvisor"
        for target in targets
        if layer(target) > layer(name)
    ]
    assert wrong == []


def test_the_runtime_never_imports_the_control_socket() -> None:
    below = [name for name in graph() if name != "stackvisor" and layer(name) <= layer("stackvisor.runtime")]
    reached = {t for name in below for t in graph()[name]}
    assert not any(t.startswith("stackvisor.control") for t in reached)


def test_no_import_circles() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert circles == []


def test_no_module_is_over_four_hundred_lines() -> None:
    long = {name: len(p.read_text().splitlines()) for name, p in modules().items()}
    assert {name: n for name, n in long.items() if n > 420} == {}


def test_only_the_gate_sends_signals() -> None:
    """`os.kill` and `os.killpg` appear in one module: every signal passes its rules."""
    senders = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("kill", "killpg", "pidfd_send_signal")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                senders.add(name)
    assert senders == {"stackvisor.system.signals"}
