"""The shape of the code: functions that fit a screen, and an import graph without cycles.

Both read the source with ``ast`` (nothing is imported), over every module of the three packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("marl_stability", "agents", "envs")
MAX_FUNCTION_LINES = 60  # a function that does not fit a screen is two
MAX_CLASS_LINES = 250

# Files allowed over the limits (an exemption must say why); a stale entry fails the test.
PENDING: set[str] = set()  # files allowed over the limits for now (none)


def python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---------------------------------------------------------------------------------------------- length
def too_long(path: Path) -> list[str]:
    """``name (N lines)`` for every function over MAX_FUNCTION_LINES and class over MAX_CLASS_LINES."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines = node.end_lineno - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                found.append(f"{node.name} ({lines} lines)")
    return found


def test_no_long_functions() -> None:
    offenders = {rel(p): too_long(p) for p in python_files()}
    offenders = {f: names for f, names in offenders.items() if names}
    assert {f: n for f, n in offenders.items() if f not in PENDING} == {}, f"limits: {MAX_FUNCTION_LINES} lines a " \
        f"function, {MAX_CLASS_LINES} a class"
    stale = sorted(PENDING - set(offenders))
    assert not stale, f"no longer over the limits (or gone): remove from PENDING: {stale}"


def test_length_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert too_long(path) == [f"long ({MAX_FUNCTION_LINES + 1} lines)"]


# ---------------------------------------------------------------------------------------------- imports
def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Import statements executed when the module is imported: not in a function, not under TYPE_CHECKING."""
    found: list[ast.stmt] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]))
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _targets(node: ast.stmt, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """Our modules that one import statement loads, parent packages included."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules
    return out


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    """Module -> our modules it imports. Packages that contain the importer are left out: they are already
    being imported when it runs, so they cannot start a cycle through it."""
    files = {module_name(p): p for p in python_files()}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _module_level(tree) if module_level_only else [
            n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        is_package = path.name == "__init__.py"
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        graph[name] = set().union(*(_targets(n, name, is_package, modules) for n in nodes)) - own
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = dfs(start)
            if cycle:
                return cycle
    return []


def test_no_import_cycles() -> None:
    """No cycle among module-level imports of marl_stability, agents and envs.

    Imports inside a function (lazy imports, e.g. the trainer imported by a sweep worker) run after every
    module is loaded and are allowed to point back; the graph of all imports, lazy ones included, only has
    to contain the module-level one.
    """
    eager = import_graph(module_level_only=True)
    assert "marl_stability.config" in eager["marl_stability.detect"]  # the graph sees `from x import y`
    assert "marl_stability.sweep" in eager["marl_stability.report"]  # and the package a submodule loads
    assert find_cycle(eager) == [], "module-level import cycle"
    everything = import_graph(module_level_only=False)
    assert all(eager[m] <= everything[m] for m in eager)


def test_sweep_never_imports_the_report() -> None:
    """The runner does not build the report (its caller does), so no sweep module imports it, not even lazily:
    the report reads a sweep directory, the sweep never needs the report."""
    everything = import_graph(module_level_only=False)
    sweep_modules = [m for m in everything if m == "marl_stability.sweep" or m.startswith("marl_stability.sweep.")]
    assert len(sweep_modules) > 1
    assert {m: everything[m] & {"marl_stability.report", "marl_stability.reproduce"} for m in sweep_modules} == {
        m: set() for m in sweep_modules}


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
