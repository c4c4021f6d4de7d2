"""``python -m marl_stability.bench.instructions``: bad input and a missing valgrind are one-line errors (exit 2); the
measurement itself (slow: valgrind) counts instructions per step, about the same count on a rerun, and more for
a bigger batch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from marl_stability.bench import instructions as bench_instr

ROOT = Path(__file__).resolve().parents[1]


def _main_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        bench_instr.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_valgrind_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench_instr.shutil, "which", lambda name: None)
    assert "valgrind is not installed" in _main_error(["--env", "simple_v3", "--steps", "1"], capsys)


@pytest.mark.parametrize("argv,message", [
    (["--env", "simple_nope_v9"], "unknown env id"),
    (["--env", ","], "unknown env id"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--tree", "/nonexistent/checkout"], "no envs/fast_mpe.py there"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _main_error(argv, capsys)


def test_missing_valgrind_from_the_command_line(tmp_path: Path) -> None:
    """Through ``python -m`` with a PATH that has no valgrind: exit 2, one line, nothing else."""
    env = {"PATH": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "marl_stability.bench.instructions", "--env", "simple_v3"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: valgrind is not installed") and len(proc.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_counts_instructions_per_step() -> None:
    """One child measures three configurations; instruction counts repeat to about 1 % (the same configuration
    twice, after the default warm-up: Python's adaptive interpreter specializes code in the first calls) and
    grow with the batch size."""
    configs = [("simple_v3", False), ("simple_v3", False), ("simple_push_v3", True)]
    rows = bench_instr.measure(configs, batch=8, steps=10, warmup=10)
    assert [(r["env"], r["actions"]) for r in rows] == [("simple_v3", "continuous"), ("simple_v3", "continuous"),
                                                        ("simple_push_v3", "discrete")]
    first, again, push = (r["instructions_per_step"] for r in rows)
    assert 20_000 < first < 5_000_000 and abs(again - first) / first < 0.02
    assert push > first  # two agents, contacts and a goal cost more than one agent alone
    big = bench_instr.measure([("simple_v3", False)], batch=512, steps=10, warmup=10, top=3)[0]
    assert big["instructions_per_step"] > first
    if shutil.which("callgrind_annotate"):  # --top: the total, then the three most expensive functions
        lines = big["top_functions"].splitlines()
        assert len(lines) == 4 and "PROGRAM TOTALS" in lines[0], lines
