"""The shape of the code: functions that fit a screen, and an import graph without cycles.

Both read the source with ``ast`` (nothing is imported), over every module of the three packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("marl_stability", "agents", "envs")  # folders; envs/agents are imported as marl_stability.envs/.agents
MAX_FUNCTION_LINES = 60  # a function that does not fit a screen is two
MAX_CLASS_LINES = 250

# Files allowed over the limits (an exemption must say why); a stale entry fails the test.
PENDING: set[str] = set()  # files allowed over the limits for now (none)


def python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    """Dotted name as imported: envs/ and agents/ are the subpackages marl_stability.envs / .agents."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("envs", "agents"):
        parts.insert(0, "marl_stability")
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


def _literal_import(node: ast.AST) -> bool:
    """``importlib.import_module("name")`` / ``import_module("name")`` / ``__import__("name")`` with a literal."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return False
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return called in ("import_module", "__import__") and isinstance(node.args[0].value, str)


def _targets(node: ast.AST, importer: str, is_package: bool, modules: set[str]) -> set[str]:
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
    if isinstance(node, ast.Call):  # importlib.import_module("marl_stability...") with a literal name
        names = [node.args[0].value]
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
            n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) or _literal_import(n)]
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
    assert "marl_stability.config" in eager["marl_stability.hooks.detectors"]  # the graph sees `from x import y`
    assert "marl_stability.runs" in eager["marl_stability.studies.report"]  # and the package a submodule loads
    assert find_cycle(eager) == [], "module-level import cycle"
    everything = import_graph(module_level_only=False)
    assert all(eager[m] <= everything[m] for m in eager)


def test_sweep_never_imports_the_report() -> None:
    """The runner does not build the report (its caller does), so no sweep module imports it, not even lazily:
    the report reads a sweep directory, the sweep never needs the report."""
    everything = import_graph(module_level_only=False)
    sweep_modules = [m for m in everything if m == "marl_stability.studies.sweep" or m.startswith("marl_stability.studies.sweep.")]
    assert len(sweep_modules) > 1
    assert {m: everything[m] & {"marl_stability.studies.report", "marl_stability.studies.reproduce"} for m in sweep_modules} == {
        m: set() for m in sweep_modules}


# The layers of marl_stability, lowest first (docs/architecture.md). A module imports from its own layer or
# below, never above, not even lazily. envs/ and agents/ (marl_stability.envs / .agents) belong to the run core:
# the algorithms emit core events and the core builds them.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("marl_stability", "marl_stability.config", "marl_stability.errors", "marl_stability.fmt", "marl_stability.atomic",
     "marl_stability.tags"),
    ("marl_stability.fixes",),
    ("marl_stability.core", "marl_stability.envs", "marl_stability.agents"),
    ("marl_stability.hooks",),
    ("marl_stability.training",),
    ("marl_stability.runs",),
    ("marl_stability.analysis",),
    ("marl_stability.integrations",),
    ("marl_stability.studies",),
    ("marl_stability.bench",),
    ("marl_stability.cli", "marl_stability.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of a module: the longest LAYERS name that is it or a package above it; the package itself
    (``marl_stability``) covers only its own __init__, so a new subpackage missing from LAYERS fails."""
    best, level = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            covers = module == name or (name != "marl_stability" and module.startswith(name + "."))
            if covers and len(name) > best:
                best, level = len(name), i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return level


def test_imports_flow_down_the_layers() -> None:
    """Every import, lazy and TYPE_CHECKING ones included, goes to the importer's layer or a lower one; every
    subpackage of marl_stability is in a layer."""
    everything = import_graph(module_level_only=False)
    assert {layer_of(m) for m in everything} == set(range(len(LAYERS)))  # each layer has modules
    upward = sorted(f"{m} -> {t}" for m, targets in everything.items() for t in targets if layer_of(t) > layer_of(m))
    assert upward == []


def test_layer_of_refuses_an_unlisted_subpackage() -> None:
    import pytest

    assert layer_of("marl_stability.config") == 0 and layer_of("marl_stability.envs.fast_mpe") == 2
    with pytest.raises(AssertionError):
        layer_of("marl_stability.newpackage.module")


def test_no_import_uses_the_old_top_level_names() -> None:
    """envs/ and agents/ are imported as marl_stability.envs / marl_stability.agents only: `import envs` works in a
    checkout (its root on sys.path) but not from a wheel, and would load a second copy of every module."""
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{rel(path)}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("envs", "agents")]
    # the one deliberate exception: measuring a checkout from before 0.2.0, whose envs package was top-level
    assert found == ["marl_stability/bench/instructions.py:58 envs.fast_mpe"]


def test_no_cycles_counting_lazy_imports() -> None:
    """The graph of every import (inside functions and under TYPE_CHECKING too) has no cycle: an update strategy
    states what it needs from its algorithm as a Protocol (agents.ddpg_updates.DDPGLearner,
    agents.ppo_update.PPOLearner) instead of importing the algorithm."""
    assert find_cycle(import_graph(module_level_only=False)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    call = ast.parse('importlib.import_module("marl_stability.studies.report")').body[0].value
    assert _literal_import(call) and _targets(call, "marl_stability.core.build", False,
                                              {"marl_stability", "marl_stability.studies.report"}) == {
        "marl_stability", "marl_stability.studies.report"}
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_architecture_page_matches_the_folders() -> None:
    """Every ``marl_stability/...`` file or folder the architecture page (docs/architecture.md) names exists, every
    subpackage of marl_stability is named there, and each layer row names every module of its folder."""
    import fnmatch
    import re

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("# Architecture"):text.index("## Adding an algorithm")]
    named = set(re.findall(r"`(marl_stability/[\w/]*\w(?:\.py)?/?)`", section))
    assert len(named) > 10
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert missing == []
    subpackages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "marl_stability").glob("*/__init__.py")}
    assert sorted(p for p in subpackages if f"`{p}/`" not in section) == []
    rows = re.findall(r"^\| \w[\w ]* \| `(marl_stability/\w+/)`[^|]*\| (.*) \|$", section, re.M)
    assert len(rows) >= 8
    for folder, what in rows:
        patterns = re.findall(r"`([\w*]+\.py)`", what)
        for module in patterns:  # each file a layer row names is in its folder
            assert list((ROOT / folder).rglob(module)) or (ROOT / "marl_stability" / module).exists(), (folder, module)
        unnamed = [m.name for m in (ROOT / folder).glob("*.py") if m.name != "__init__.py"
                   and not any(fnmatch.fnmatch(m.name, pat) for pat in patterns)]
        assert unnamed == [], f"{folder}: modules the architecture page does not name"


def test_every_test_file_has_one_tier() -> None:
    """tests/conftest.py's tier table names every test file exactly once (a new file must choose its tier)."""
    from conftest import TIERS

    listed = [name for names in TIERS.values() for name in names]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))


# ---------------------------------------------------------------------------------------------- reading runs
# What only marl_stability/runs/ may do with a finished run: parse its event files, load its summary or config.
RUN_READING_IMPORTS = ("tensorboard.backend.event_processing", "marl_stability.core.summary.read_summary")
RUN_READERS = ("marl_stability/runs/",)
# The sweep runner decides from a trial's summary whether to run it again: running, not analysing.
RUN_READING_EXEMPT = ("marl_stability/studies/sweep/",)


def run_reading(path: Path) -> list[str]:
    """``file:line what`` for each import of an event-file reader or of read_summary, and each yaml.safe_load."""
    found, where = [], rel(path) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "yaml.safe_load":
            names = ["yaml.safe_load"]
        found += [f"{where}:{node.lineno} {n}" for n in names
                  if n == "yaml.safe_load" or any(n.startswith(r) for r in RUN_READING_IMPORTS)]
    return found


def test_only_the_run_reader_reads_runs() -> None:
    """Analysis and studies read runs through marl_stability.runs (RunRecord), never the files themselves."""
    folders = ("marl_stability/analysis/", "marl_stability/studies/", "marl_stability/cli/", "marl_stability/bench/")
    found = [hit for p in python_files() if rel(p).startswith(folders) and not rel(p).startswith(RUN_READING_EXEMPT)
             for hit in run_reading(p)]
    assert found == []


def test_run_reading_check_sees_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "reader.py"
    path.write_text("import yaml\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
                    "from marl_stability.core.summary import RunSummary, read_summary\n"
                    "def f(p):\n    return yaml.safe_load(p)\n")
    assert [h.split(" ")[1] for h in run_reading(path)] == [
        "tensorboard.backend.event_processing.event_accumulator",
        "tensorboard.backend.event_processing.event_accumulator.EventAccumulator",
        "marl_stability.core.summary.read_summary", "yaml.safe_load"]
