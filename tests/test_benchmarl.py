"""The BenchMARL callback (marl_stability.integrations.benchmarl) on tiny real BenchMARL experiments: a deliberately broken
config fires the detectors and doctor reads the run, a healthy one stays quiet, and the callback leaves BenchMARL's
training bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("benchmarl", reason="the benchmarl extra (installed by `make test`)")

import torch  # noqa: E402

from marl_stability.analysis.doctor import diagnose, render  # noqa: E402
from marl_stability.fixes import registry  # noqa: E402
from marl_stability.fixes import benchmarl as benchmarl_fixes  # noqa: E402
from marl_stability.integrations.benchmarl import MarlStabilityCallback, apply_fix, mpe2_task, use_mpe2  # noqa: E402
from marl_stability.runs.record import RunRecord  # noqa: E402


def _experiment(tmp: Path, lr: float, clip: bool, callback: bool, seed: int = 0):
    from benchmarl.algorithms import MappoConfig
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig
    from benchmarl.utils import seed_everything

    seed_everything(seed)  # the networks are initialized at construction, from the global generators
    cfg = ExperimentConfig.get_from_yaml()
    # 4 iterations of 4 envs x 25 steps, 4 epochs of one minibatch, an evaluation episode after each iteration.
    cfg.max_n_frames, cfg.on_policy_collected_frames_per_batch, cfg.on_policy_n_envs_per_worker = 400, 100, 4
    cfg.on_policy_minibatch_size, cfg.on_policy_n_minibatch_iters = 100, 4
    cfg.evaluation_interval, cfg.evaluation_episodes = 100, 1
    cfg.loggers, cfg.create_json, cfg.render, cfg.checkpoint_at_end = [], True, False, False
    cfg.save_folder, cfg.lr, cfg.clip_grad_val = str(tmp), lr, (5.0 if clip else None)
    cb = MarlStabilityCallback(layer_stats_every=1, plasticity_every=1, strict=True) if callback else None
    tmp.mkdir(parents=True, exist_ok=True)
    e = Experiment(task=mpe2_task("simple_spread_v3"), algorithm_config=MappoConfig.get_from_yaml(),
                   model_config=MlpConfig.get_from_yaml(), critic_model_config=MlpConfig.get_from_yaml(), seed=seed,
                   config=cfg, callbacks=[cb] if cb else [])
    return e, cb


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MarlStabilityCallback]:
    torch.set_num_threads(1)
    out = {}
    for name, lr, clip in (("healthy", 5e-5, True), ("broken", 1.0, False)):
        e, cb = _experiment(tmp_path_factory.mktemp(name), lr, clip, callback=True)
        try:
            e.run()
        except AssertionError as err:  # lr 1.0 can reach a NaN action, which the env refuses: BenchMARL re-raises
            assert name == "broken" and "nan action" in str(err)
        out[name] = cb
    return out


def test_broken_config_fires_detectors_and_doctor_reads_it(runs: dict[str, MarlStabilityCallback]) -> None:
    run = runs["broken"].dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["on_policy"] and summary["algo"] == "mappo"
    # lr 1.0 without clipping: the KL spikes at the first update, then either the actions pin to the bounds
    # (saturated, repeated, input-insensitive: collapse) or they turn NaN (the env refuses them: diverged).
    assert summary["kl_spike_step"] == 100
    if summary["status"] == "diverged":
        assert summary["nonfinite_step"] is not None
    else:
        assert summary["status"] == "completed" and summary["collapse_step"] is not None
    assert summary["max_grad_norm"]["actor"] > 1e3
    d = diagnose(run)
    assert d["verdict"] == "unstable" and d["framework"] == "benchmarl"
    ids = [f["id"] for f in d["fixes"]]
    assert ids[0] == "lr_eps" and d["fixes"][0]["set"] == ["experiment.lr=0.0003", "experiment.adam_eps=1e-05"]
    assert "apply_fix(" in render(d)
    record = RunRecord(run)
    scalars = record.scalars
    for tag in ("grad_norm/actor/agent", "grad_norm/critic/agent", "optim/grad_norm_postclip/critic/agent",
                "layers/grad_norm/actor/agent/actor_network_params.module.0.module.0.mlp.params.0.weight",
                "optim/update_ratio/actor/agent", "policy/saturation/agent_0", "eval/sensitivity/agent_2",
                "policy/approx_kl/agent", "policy/entropy/agent", "plasticity/eff_rank/actor/agent",
                "plasticity/eff_rank/critic/agent", "eval/team_return", "rollout/team_return"):
        assert len(scalars.get(tag, [])) >= 1, tag
    assert record.label.label != "healthy"


def test_healthy_config_stays_quiet(runs: dict[str, MarlStabilityCallback]) -> None:
    summary = json.loads((runs["healthy"].dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["detector_messages"] == []
    assert [p["env_steps"] for p in summary["eval_history"]] == [100, 200, 300, 400]
    cfg = RunRecord(runs["healthy"].dir).config
    assert cfg["framework"] == "benchmarl" and cfg["env"] == {"id": "simple_spread_v3", "kwargs": {
        "max_cycles": 25, "N": 3, "local_ratio": 0.5, "continuous_actions": True}}
    # Clipping at 5 acted where the norm exceeded it: the post-clip norm never exceeds the limit.
    post = RunRecord(runs["healthy"].dir).scalars["optim/grad_norm_postclip/critic/agent"]
    assert max(v for _, v in post) <= 5.0 + 1e-4


def test_team_return_is_the_sum_over_agents(runs: dict[str, MarlStabilityCallback]) -> None:
    """Our team return = 3 x BenchMARL's logged mean over agents of per-agent returns on spread (its json)."""
    cb = runs["healthy"]
    ours = [p["team_return"] for p in json.loads((cb.dir / "summary.json").read_text())["eval_history"]]
    folder = Path(cb.experiment.folder_name)
    theirs = json.loads(next(folder.glob("*.json")).read_text())
    returns = [step["return"][0] for run in _runs(theirs) for step in sorted(run.values(), key=lambda s: s["step_count"])
               if isinstance(step, dict) and "return" in step]
    assert len(returns) == len(ours)
    assert ours == pytest.approx([3 * r for r in returns], rel=1e-5)


def _runs(data: dict) -> list[dict]:
    """The per-step records of BenchMARL's marl-eval json (env -> task -> algorithm -> seed -> steps)."""
    out = []
    for env in data.values():
        for task in env.values():
            for algo in task.values():
                for seed in algo.values():
                    out.append({k: v for k, v in seed.items() if k.startswith("step_")})
    return out


_RUN = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_benchmarl import _experiment
e, _ = _experiment(Path(sys.argv[2]), 1e-3, True, callback=sys.argv[3] == "1")
e.run()
torch.save([p.detach().clone() for p in e.losses["agent"].parameters()], Path(sys.argv[2]) / "params.pt")
"""


def test_callback_leaves_training_bit_identical(tmp_path: Path) -> None:
    """Each run in a fresh process: inside one process BenchMARL's first experiment already differs from its second in
    the last bits (with or without the callback), so only fresh processes compare the callback alone."""
    import subprocess
    import sys

    params = []
    for callback in ("0", "1"):
        out = tmp_path / callback
        subprocess.run([sys.executable, "-c", _RUN, str(Path(__file__).parent), str(out), callback], check=True,
                       capture_output=True, timeout=600)
        params.append(torch.load(out / "params.pt"))
    assert len(params[0]) == len(params[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_apply_fix_and_the_registry_translation() -> None:
    from benchmarl.algorithms import MappoConfig
    from benchmarl.experiment import ExperimentConfig

    cfg, algo = ExperimentConfig.get_from_yaml(), MappoConfig.get_from_yaml()
    cfg.lr = 7e-4
    assert apply_fix("lr_eps", cfg, algo) == ["experiment.lr=0.0003", "experiment.adam_eps=1e-05"]
    assert (cfg.lr, cfg.adam_eps) == (3e-4, 1e-5)
    cfg.lr = 5e-5  # BenchMARL's default: the fix never raises a learning rate
    assert apply_fix("lr_eps", cfg, algo) == ["experiment.lr=5e-05", "experiment.adam_eps=1e-05"]
    from benchmarl.models.mlp import MlpConfig

    model = MlpConfig.get_from_yaml()
    before = model.activation_class
    with pytest.raises(ValueError, match="pass the critic_model config"):
        apply_fix("activation", cfg, algo, model)  # nothing is set when a part is missing
    assert model.activation_class is before
    apply_fix("log_std_bounds", cfg, algo)
    assert algo.scale_mapping == benchmarl_fixes.BOUNDED_SCALE_MAPPING
    from tensordict.nn.utils import mappings

    std = mappings(algo.scale_mapping)(torch.linspace(-50, 50, 101))
    assert float(std.min()) >= torch.exp(torch.tensor(-5.0)) - 1e-6 and float(std.max()) <= 0.5016
    assert float(mappings(algo.scale_mapping)(torch.zeros(1))) == pytest.approx(float(torch.exp(torch.tensor(-1.0))))
    with pytest.raises(ValueError, match="no value normalization"):
        apply_fix("value_norm", cfg, algo)
    # The registry reads a BenchMARL config through the translation: clipping 10 on, value norm off.
    bm = {"experiment": {"clip_grad_norm": True, "clip_grad_val": 10.0, "lr": 7e-4, "adam_eps": 1e-5},
          "algorithm": {"use_tanh_normal": True, "entropy_coef": 0.01}}
    ours = benchmarl_fixes.as_run_config(bm)
    assert registry.get("grad_clip_10").applied(ours)
    assert not registry.get("value_norm").applied(ours)
    assert registry.get("beta").applied(ours)  # a TanhNormal is already bounded on the action range


def test_use_mpe2_is_idempotent_and_builds_mpe_tasks() -> None:
    import torchrl.envs.libs.pettingzoo as tpz

    use_mpe2()
    patched = tpz._load_available_envs
    use_mpe2()
    assert tpz._load_available_envs is patched
    envs = patched()
    assert any(m.__name__.endswith("simple_spread_v3") for m in envs.values())
    with pytest.raises(ValueError, match="unknown MPE task"):
        mpe2_task("simple_nothing_v1")


def test_docs_fix_table_is_the_translation() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "benchmarl.md").read_text(encoding="utf-8")
    assert benchmarl_fixes.markdown_table() in page
