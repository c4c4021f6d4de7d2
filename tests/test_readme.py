"""The README's monitor example runs as written (in a temporary directory) and logs what it promises."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_monitor_example_runs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = README.read_text()
    block = re.search(r"<!-- monitor-example.*?-->\n```python\n(.*?)```", text, re.S)
    assert block, "monitor example block missing from README"
    code = block.group(1)
    assert len(code.splitlines()) <= 35
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), {})
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


def test_readme_hook_example_stops_a_saturated_run() -> None:
    from marl_stability.config import RunConfig
    from marl_stability.core.events import EvaluationEvent
    from marl_stability.core.hooks import RunContext
    from marl_stability.core.sinks import Logger, MemorySink
    from marl_stability.core.summary import AgentActionStats

    block = re.search(r"<!-- hook-example.*?-->\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "hook example block missing from README"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
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
