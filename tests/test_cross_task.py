"""Cross-task verdicts: the sweep files move arms to another task cleanly, the end-state classification and the
cure verdicts follow their definitions, per-team returns on competitive tasks, and the records round-trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from marl_stability.analysis import cross_task as ct
from marl_stability.runs.anchors import SPREAD_ANCHORS, task_anchors
from marl_stability.config import flatten
from marl_stability.runs.labels import is_collapsed
from marl_stability.studies.sweep.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "reference": ("simple_reference_v3", {"local_ratio": 0.5, "max_cycles": 25, "continuous_actions": True}),
    "speaker_listener": ("simple_speaker_listener_v4", {"max_cycles": 25, "continuous_actions": True}),
    "adversary": ("simple_adversary_v3", {"N": 2, "max_cycles": 25, "continuous_actions": True}),
}


def _core(cfg: dict) -> dict:
    flat = flatten(cfg)
    return {k: v for k, v in flat.items() if not k.startswith("env.")}


@pytest.mark.parametrize("short", sorted(TASKS))
def test_cross_task_sweeps_change_only_the_task(short):
    """Each arm equals its simple_spread counterpart except env.id and env.kwargs (no N leaking in)."""
    env_id, kwargs = TASKS[short]
    spread_repro = {a.name: a.config for a in make_plan(ROOT / "experiments/reproduce.yaml", probe=False).arms}
    spread_fixes = {a.name: a.config for a in make_plan(ROOT / "experiments/reproduce_single_fixes.yaml", probe=False).arms}
    for path, spread in ((f"reproduce_{short}.yaml", spread_repro), (f"reproduce_single_fixes_{short}.yaml", spread_fixes)):
        plan = make_plan(ROOT / "experiments" / path, probe=False)
        # the same arms (the main job's third arm, failure + heal, is simple_spread's only)
        assert [a.name for a in plan.arms] == [n for n in spread if n != "heal"]
        for arm in plan.arms:
            assert arm.config["env"]["id"] == env_id
            assert arm.config["env"]["kwargs"] == kwargs
            assert _core(arm.config) == _core(spread[arm.name]), (path, arm.name)


def test_strict_flatten_keeps_env_kwargs_whole():
    assert flatten({"env.kwargs": {"max_cycles": 25}}, strict=True) == {"env.kwargs": {"max_cycles": 25}}
    assert flatten({"env": {"kwargs": {"N": 4}}}, strict=True) == {"env.kwargs": {"N": 4}}
    assert flatten({"env.kwargs.N": 4}, strict=True) == {"env.kwargs.N": 4}  # one kwarg still merges
    assert flatten({"env": {"kwargs": {"N": 4}}}) == {"env.kwargs.N": 4}  # config diffs still see each kwarg


def _record(arm: str, seed: int, collapsed: list[str], task: str = "simple_spread_v3", sweep: str = "single_fixes",
            returns: dict | None = None, step: int | None = 30000) -> ct.TaskRun:
    agents = list(returns) if returns else ["agent_0", "agent_1"]
    return ct.TaskRun(task=task, sweep=sweep, arm=arm, seed=seed, status="completed", final_return=-50.0 - seed,
                        collapse_step=step, explosion_step=None, peak_critic_grad=100.0 + seed,
                        collapsed_agents=collapsed, agents=agents, agent_returns=returns or {a: -25.0 for a in agents})


def test_collapse_criterion_uses_the_detector_thresholds():
    det = {"repeat_threshold": 0.9, "saturation_threshold": 0.9, "sensitivity_threshold": 1e-3}
    stats = {"repeat_rate": 1.0, "saturation": 0.95, "sensitivity": 0.0, "batch_same_action": 1.0}
    assert is_collapsed(stats, det)
    for key, value in (("sensitivity", 0.01), ("repeat_rate", 0.89),
                       ("batch_same_action", 0.36)):  # 0.36: a saturated speaker with one message per goal
        assert not is_collapsed({**stats, key: value}, det), key
    assert is_collapsed({**stats, "saturation": 0.0}, det)  # saturation is the collapse's kind, not a condition


def test_verdicts_counts_and_matrix():
    recs = [_record("failure", s, ["agent_0", "agent_1"]) for s in range(3)]
    recs += [_record("lower_lr", s, [], step=30000 if s == 0 else None) for s in range(3)]
    recs += [_record("reward_scale", s, ["agent_1"] if s < 2 else []) for s in range(3)]
    recs += [_record("clip", s, ["agent_0"]) for s in range(3)]
    groups = ct.group(recs)
    by_arm = {v.arm: v for v in groups["simple_spread_v3"]}
    assert [v.arm for v in groups["simple_spread_v3"]] == ["failure", "clip", "lower_lr", "reward_scale"]
    assert (by_arm["lower_lr"].verdict, by_arm["lower_lr"].detected) == ("cures", 1)
    assert (by_arm["reward_scale"].verdict, by_arm["reward_scale"].ended_collapsed) == ("partly", 2)
    assert by_arm["clip"].verdict == "does not cure"
    assert by_arm["reward_scale"].agent_counts() == {"agent_0": 0, "agent_1": 2}
    table = "\n".join(ct.matrix(groups))
    assert "cures (0/3 [0.00, 0.56] end, 1/3 detected)" in table and "partly (2/3 [0.21, 0.94] end, 3/3 detected)" in table
    assert "fails (3/3 [0.44, 1.00] end, 3/3 detected)" in table


def test_labels_are_counted_and_old_records_say_so():
    """Each arm counts its runs' labels with their kinds; records from before labels existed show n/a, not healthy."""
    recs = [_record("fixed", s, [], sweep="reproduction") for s in range(4)]
    for r, (label, kind) in zip(recs, [("healthy", ""), ("degraded", "below_do_nothing"), ("healthy", ""),
                                       ("degraded", "dropped")]):
        r.label, r.label_kind = label, kind
    v = ct.group(recs)["simple_spread_v3"][0]
    assert v.labels() == "healthy 2, degraded 2 (below_do_nothing 1, dropped 1)"
    assert "| healthy 2, degraded 2 (below_do_nothing 1, dropped 1) |" in "\n".join(ct.task_table([v]))
    old = ct.group([_record("fixed", 0, [], sweep="reproduction")])["simple_spread_v3"][0]
    assert old.labels() == "n/a"


def test_competitive_tasks_report_each_team():
    returns = {"adversary_0": -10.0, "agent_0": 4.0, "agent_1": 4.0}
    recs = [_record("failure", s, [], task="simple_adversary_v3", returns=returns) for s in range(2)]
    v = ct.group(recs)["simple_adversary_v3"][0]
    assert v.team_returns() == {"adversaries": [-10.0, -10.0], "good agents": [8.0, 8.0]}
    assert "adversaries -10.0; good agents 8.0" in "\n".join(ct.task_table([v]))
    assert [ct.team_of(a) for a in ("leadadversary_0", "eve_0", "alice_0")] == ["adversaries", "adversaries", "good agents"]


def test_records_round_trip_and_bad_input(tmp_path, capsys):
    recs = [_record("failure", s, ["agent_0"]) for s in range(2)] + [_record("fixed", 0, [], sweep="reproduction")]
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"format": 1, "records": [ct.asdict(r) for r in recs]}))
    ct.main(["--from-records", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert ct.read_records(tmp_path / "out" / "records.json") == recs
    assert (tmp_path / "out" / "report.md").read_text() == ct.render(recs)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for argv in (["--from-records", str(bad)], [], [str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit) as e:
            ct.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_task_anchors():
    assert task_anchors("simple_spread_v3", {"N": 3, "max_cycles": 25, "continuous_actions": True}) is SPREAD_ANCHORS
    a = task_anchors("simple_reference_v3", TASKS["reference"][1], episodes=50)
    b = task_anchors("simple_reference_v3", TASKS["reference"][1], episodes=50)
    assert a == b and a.controller is None and math.isfinite(a.random) and math.isfinite(a.do_nothing)
    assert a.random < 0 and "50 episodes" in a.source
