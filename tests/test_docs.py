"""The docs: the site builds with ``mkdocs build --strict``, the README stays a front page (at most 300 lines,
every page it links exists), and the code blocks of the docs run as written (the monitor example in a temporary
directory, the hook example against a run context; the algorithm example runs in test_algorithm_contract.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 300


def block(page: str, name: str) -> str:
    found = re.search(rf"<!-- {name}.*?-->\n```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)
    assert found, f"{name} block missing from docs/{page}"
    return found.group(1)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.fail("mkdocs is not installed: it is in the test extra (pip install -e '.[test]')")
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(items: list) -> list[str]:
        out: list[str] = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += pages(value) if isinstance(value, list) else [value]
        return out

    listed = set(pages(nav))
    present = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert present - listed == set() and listed - present == set()


def test_readme_is_a_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", text):  # every relative link resolves
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target
    for command in ("make reproduce", "make test", "marl-stability doctor", "marl-stability ablate"):
        assert command in text


def test_monitor_example_runs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = block("monitor.md", "monitor-example")
    assert len(code.splitlines()) <= 35
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "docs/monitor.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "runs" / "my_loop"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("grad_norm/critic/shared", "optim/clip_fraction/actor/agent_0", "optim/update_ratio/critic/shared",
                "layers/grad_norm/actor/agent_2/2.weight", "policy/saturation/agent_1", "policy/sensitivity/agent_0"):
        assert tag in tags, tag


def test_hook_example_stops_a_saturated_run() -> None:
    from marl_stability.config import RunConfig
    from marl_stability.core.events import EvaluationEvent
    from marl_stability.core.hooks import RunContext
    from marl_stability.core.sinks import Logger, MemorySink
    from marl_stability.core.summary import AgentActionStats

    namespace: dict = {}
    exec(compile(block("architecture.md", "hook-example"), "docs/architecture.md", "exec"), namespace)
    sink = MemorySink()
    ctx = RunContext(cfg=RunConfig(), run_dir=Path("."), layout=None, algorithm=None, logger=Logger([sink]))
    hook = namespace["StopWhenSaturated"](ctx)
    for step, saturation in enumerate([0.99, 0.5, 0.99, 0.99, 0.99]):
        ctx.env_steps = step
        ev = EvaluationEvent(step, [], [], [], [])
        ev.derived["action_stats"] = {a: AgentActionStats(repeat_rate=1.0, saturation=saturation, batch_same_action=1.0,
                                                          sensitivity=0.0) for a in ("a", "b")}
        hook.on_evaluation(ev)
        assert ctx.status == ("interrupted" if step == 4 else "running")
    assert [v for _, v in sink.scalars["user/saturated_streak"]] == [1, 0, 1, 2, 3]
