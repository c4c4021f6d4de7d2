"""`marl-stability doctor` on a healthy real run and on a (synthetic) collapsed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marl_stability.analysis import doctor
from marl_stability.cli.main import main
from marl_stability.config import dump_yaml, load_config
from marl_stability.core.sinks import TensorBoardSink
from marl_stability.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_doctor_never_calls_a_run_that_did_not_learn_healthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1,500 env steps train nothing: no detector fires, but the final return is no better than doing nothing
    (simple_spread: -73.5), so the outcome is degraded and the verdict unstable, with what the label rests on."""
    cfg = load_config(ROOT / "experiments" / "maddpg_spread.yaml",
                      ["train.steps=1500", "maddpg.warmup_steps=300", "maddpg.batch_size=64", "maddpg.update_every=5",
                       "train.eval_every=500", "train.eval_episodes=2", "env.num_envs=2", "train.layer_stats_every=2"])
    Trainer(cfg, tmp_path / "short", quiet=True).run()
    code, out, err = run_cli(["doctor", str(tmp_path / "short"), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["collapse_step"] is None and d["explosion_step"] is None and d["nonfinite_step"] is None
    assert d["verdict"] == "unstable" and d["fixes"]
    o = d["outcome"]
    assert (o["label"], o["kind"], o["do_nothing"]) == ("degraded", "below_do_nothing", -73.5)
    assert o["final_return"] <= -73.5 and set(d["saturation"]) == {"agent_0", "agent_1", "agent_2"}
    code, out, _ = run_cli(["doctor", str(tmp_path / "short")], capsys)
    assert "outcome: degraded (below do nothing)" in out and "do-nothing policy scores -73.5" in out
    assert "verdict: healthy" not in out and "verdict: unstable" in out


def test_doctor_on_a_healthy_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that learned (well above doing nothing), kept it, and whose actions stay lively: healthy."""
    run = tmp_path / "ok"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(load_config(ROOT / "experiments" / "maddpg_spread.yaml")))
    sink = TensorBoardSink(run)
    for step in range(1000, 20001, 1000):
        sink.scalar("eval/team_return", -70.0 + step / 1000, step)
    sink.close()
    history = [{"env_steps": st, "team_return": -70.0 + st / 1000} for st in range(1000, 20001, 1000)]
    lively = {"repeat_rate": 0.2, "saturation": 0.1, "sensitivity": 0.5, "batch_same_action": 0.0}
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "env": "simple_spread_v3", "algo": "maddpg", "final_return": -50.0, "best_return": -50.0,
        "env_steps": 20000, "eval_history": history, "action_stats": {"agent_0": lively}, "agents": ["agent_0"]}))
    code, out, err = run_cli(["doctor", str(run), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["verdict"] == "healthy" and d["outcome"]["label"] == "healthy"
    code, out, _ = run_cli(["doctor", str(run)], capsys)
    assert "verdict: healthy" in out and "outcome: healthy" in out


def make_collapsed_run(run: Path) -> None:
    """A run as the failure leaves it: the critic's last layer gradient grows 1000x from step 20k, the
    actors end saturated, repeating and insensitive, and the detectors fired."""
    cfg = load_config(ROOT / "experiments" / "no_fix_baseline.yaml", ["env.reward_scale=10"])
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    sink = TensorBoardSink(run)
    for step in range(1000, 40001, 1000):
        late = step >= 20000
        sink.scalar("layers/grad_norm/critic/agent_0/mlp.out.weight", 5.0 * (1000 if late else 1), step)
        sink.scalar("layers/grad_norm/critic/agent_0/mlp.hidden.0.linear.weight", 2.0 * (50 if step >= 25000 else 1), step)
        sink.scalar("layers/grad_norm/actor/agent_0/mlp.out.weight", 0.1, step)
        sink.scalar("reward/raw_batch_mean/agent_0", -30.0, step)
        sink.scalar("policy/preact_max_abs_batch/agent_0", 500.0 if late else 2.0, step)
        sink.scalar("eval/saturation/agent_0", 1.0 if late else 0.3, step)
        sink.scalar("eval/repeat_rate/agent_0", 1.0 if late else 0.2, step)
        sink.scalar("eval/sensitivity/agent_0", 0.0 if late else 2.0, step)
    sink.close()
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "final_return": -200.0, "explosion_step": 20000, "collapse_step": 22000,
        "nonfinite_step": None, "detector_messages": ["collapse/agent_0: saturated, repeated, insensitive"]}))


def test_doctor_on_collapsed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "collapsed"
    make_collapsed_run(run)
    code, out, err = run_cli(["doctor", str(run), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["verdict"] == "unstable" and d["collapse_step"] == 22000 and d["explosion_step"] == 20000
    assert d["layers_grew_first"][0]["layer"] == "critic/agent_0/mlp.out.weight"  # grew first in its network
    assert d["layers_grew_first"][0]["env_step"] == 20000 and d["layers_grew_first"][0]["growth"] == 1000
    assert len(d["layers_grew_first"]) == 1  # the actor's gradient never grew
    names = [f["name"] for f in d["fixes"]]
    assert names[0].startswith("clip gradients") and "explosion" not in d["fixes"][0]["why"] or "exploded" in d["fixes"][0]["why"]
    assert names.index("lower the learning rate") < names.index("small last-layer init") < names.index("normalization layers")
    assert "fixes.grad_clip.critic.mode=global_norm" in d["fixes"][0]["set"]
    tanh = next(f for f in d["fixes"] if f["name"].startswith("tanh"))
    assert "linear_clip" in tanh["why"]
    assert any(f["name"] == "normalize observations" for f in d["fixes"])  # obs norm is off in this run: offered
    reward = next(f for f in d["fixes"] if "reward" in f["name"])
    assert "reward_scale 10" in reward["why"]
    code, text, _ = run_cli(["doctor", str(run)], capsys)
    assert "collapse at env step 22000" in text and "--set fixes.grad_clip.critic.mode=global_norm" in text


def test_doctor_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["doctor", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.startswith("error: not a run directory") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["doctor", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no TensorBoard events" in err


def test_real_collapse_is_detected_and_diagnosed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tanh outputs at reward x100 with Adam 1e-2 collapse to one saturated, state-independent action within a
    few thousand steps (seed 0: every agent from the first evaluation after warm-up). Budget 6k env steps."""
    cfg = load_config(ROOT / "experiments" / "no_fix_baseline.yaml",
                      ["actor.output=tanh_scaled", "env.reward_scale=100", "train.steps=6000", "maddpg.warmup_steps=2500",
                       "train.eval_every=1000", "train.eval_episodes=3", "seed=0"])
    summary = Trainer(cfg, tmp_path / "collapsed", quiet=True).run()
    assert summary["collapse_step"] is not None and summary["collapse_step"] <= 4000
    assert summary["saturation_rate"] >= 0.9 and summary["repeated_action_rate"] >= 0.9
    assert summary["action_sensitivity"] <= 1e-3
    code, out, err = run_cli(["doctor", str(tmp_path / "collapsed"), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["verdict"] == "unstable" and d["large_reward"]
    names = [f["name"] for f in d["fixes"]]
    assert "tanh output scaled to the action bounds" not in names  # already applied in this run
    # Saturation-first (the actor saturated at the first evaluation, the critic far below 1000x its early level):
    # ranked by the shipped saturation-first single-fix table -- the two fixes that cured 3/3 first, the ones it
    # measured as curing 0/3 (clipping among them) last, the unmeasured ones in between.
    assert d["mechanism"]["mechanism"] == "saturation-first"
    assert names[:2] == ["lower the learning rate", "scale or normalize the reward"]
    assert names.index("clip gradients (global L2 norm)") > names.index("normalization layers")
    assert d["fixes"][0]["measured"]["healthy"] == 3 and d["fixes"][0]["measured"]["n"] == 3
    assert d["fixes"][-1]["measured"] is not None and d["fixes"][-1]["measured"]["healthy"] == 0
    text = doctor.render(d)
    assert "mechanism: saturation-first" in text and "left 3/3 seeds healthy" in text


def test_doctor_reads_summary_json_through_the_run_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt or foreign summary.json is one error line (exit 2); a run without one yet is still diagnosed."""
    run = tmp_path / "collapsed"
    make_collapsed_run(run)
    for text in ("{not json", "[1, 2]", json.dumps({"final_return": -1.0})):  # the last lacks a status
        (run / "summary.json").write_text(text)
        code, _, err = run_cli(["doctor", str(run)], capsys)
        assert code == 2 and err.startswith("error: corrupt summary.json") and err.count("\n") == 1
    (run / "summary.json").unlink()
    code, out, err = run_cli(["doctor", str(run), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["status"] is None and d["collapse_step"] is None and d["detector_messages"] == []
    assert d["layers_grew_first"][0]["layer"] == "critic/agent_0/mlp.out.weight"  # the events still speak
