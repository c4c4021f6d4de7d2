"""Every ``python -m marl_stability.<tool>`` script answers a bad argument like the rest of the testbed: one line
``error: ...`` on stderr, exit code 2, no usage block and no traceback."""

from __future__ import annotations

import importlib

import pytest

TOOLS = ["anchors", "bench", "bench_instr", "bench_instrumentation", "bench_versions", "compare_runs", "cross_task",
         "fix_evidence", "learning_table", "mechanism", "tb_screenshot"]


@pytest.mark.parametrize("tool", TOOLS)
def test_unknown_option_is_one_error_line(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    mod = importlib.import_module(f"marl_stability.{tool}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--no-such-option"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    # argparse names the missing positional arguments first, else the unknown option
    assert "--no-such-option" in err or "the following arguments are required" in err, err


def test_help_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    from marl_stability import mechanism

    with pytest.raises(SystemExit) as e:
        mechanism.main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m marl_stability.mechanism")
