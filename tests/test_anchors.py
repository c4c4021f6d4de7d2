"""The measured score anchors: the constants the verdicts use agree with what the command measures."""

from __future__ import annotations

import math
import subprocess
import sys

from marl_stability import anchors


def test_anchor_constants_are_what_the_command_measures() -> None:
    """200 fresh episodes (seed 7, not the reported seed 0): each mean within 3 standard errors of the
    1000-episode constant; and the ordering the README relies on."""
    got = anchors.measure(anchors.SPREAD, episodes=200, seed=7)
    expect = {"random": anchors.SPREAD_RANDOM, "do_nothing": anchors.SPREAD_DO_NOTHING,
              "move_right": anchors.SPREAD_MOVE_RIGHT, "assignment": anchors.SPREAD_ASSIGNMENT}
    for name, value in expect.items():
        r = got[name]
        assert abs(r["mean"] - value) < 3 * r["std"] / math.sqrt(r["episodes"]), (name, r, value)
    assert got["move_right"]["mean"] < got["random"]["mean"] < got["assignment"]["mean"]
    assert anchors.normalized_score(anchors.SPREAD_RANDOM) == 0.0
    assert anchors.normalized_score(anchors.SPREAD_ASSIGNMENT) == 1.0


def test_other_tasks_get_the_generic_anchors() -> None:
    got = anchors.measure("simple_reference_v3", episodes=20, seed=0)
    assert set(got) == {"random", "do_nothing", "move_right"}
    assert all(math.isfinite(r["mean"]) for r in got.values())


def test_bad_input_is_one_line() -> None:
    for args in (["--episodes", "1"], ["--env", "no_such_env_v9", "--episodes", "4"]):
        out = subprocess.run([sys.executable, "-m", "marl_stability.anchors", *args], capture_output=True,
                             text=True, check=False)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
