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
    for tag in ("grad_norm/critic/shared", "clip_fraction/actor/agent_0", "update_ratio/critic/shared",
                "grad_norm_layer/actor/agent_2/2.weight", "actor/saturation/agent_1", "actor/sensitivity/agent_0"):
        assert tag in tags, tag
