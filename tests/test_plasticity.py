"""Plasticity and representation metrics: the definitions on hand-built layers and matrices of known spectrum
(against independent numpy computations), the tags every algorithm writes (also read back from the event
files), their summary block, that measuring changes no training number, and config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from marl_stability.agents.networks import MLP, feature_probe

from marl_stability.cli.main import main
from marl_stability.agents import algorithm_class
from marl_stability.config import RunConfig, describe_schema, load_config
from marl_stability.core.hooks import Hook
from marl_stability.core.plasticity import (
    FeatureProbe,
    even_rows,
    measure,
    metric_names,
    metrics_of,
    tag_of,
    tau_label,
)
from marl_stability.core.sinks import MemorySink
from marl_stability.training.trainer import TIMING_KEYS, Trainer

ROOT = Path(__file__).resolve().parents[1]
MADDPG_PRESET = ROOT / "experiments" / "maddpg_spread.yaml"
MAPPO_PRESET = ROOT / "experiments" / "mappo_spread.yaml"
IPPO_PRESET = ROOT / "experiments" / "ippo_spread.yaml"

# MADDPG/MATD3: 8 env copies, updates from env step 400 on, one per 25 env steps -> 32 updates in 1200 steps.
OFF_POLICY = ["maddpg.warmup_steps=400", "maddpg.batch_size=128", "train.steps=1200", "train.eval_every=1200",
              "train.eval_episodes=2", "train.checkpoint_every=100000", "plasticity.every=5"]
# MAPPO/IPPO: 8 env copies x 25-step rollouts -> one update per 200 env steps, 5 updates in 1000 steps.
ON_POLICY = ["env.num_envs=8", "ppo.rollout_steps=25", "ppo.epochs=2", "train.steps=1000", "train.eval_every=1000",
             "train.eval_episodes=2", "train.checkpoint_every=100000"]
AGENTS = ("agent_0", "agent_1", "agent_2")
RUNS: dict[str, tuple[Path, list[str], list[str]]] = {  # preset, overrides, networks measured
    "maddpg": (MADDPG_PRESET, OFF_POLICY + ["maddpg.batched_agents=off"],
               [f"{k}/{a}" for a in AGENTS for k in ("actor", "critic")]),
    "maddpg_stacked": (MADDPG_PRESET, OFF_POLICY + ["maddpg.batched_agents=on"],
                       [f"{k}/{a}" for a in AGENTS for k in ("actor", "critic")]),
    "matd3": (MADDPG_PRESET, OFF_POLICY + ["algo=matd3"],
              [f"{k}/{a}" for a in AGENTS for k in ("actor", "critic", "critic2")]),
    "mappo": (MAPPO_PRESET, ON_POLICY, ["actor/shared", "critic/shared"]),
    "ippo": (IPPO_PRESET, ON_POLICY + ["ppo.parameter_sharing=off"],
             [f"{k}/{a}" for a in AGENTS for k in ("actor", "critic")]),
}


# --------------------------------------------------------------------------- definitions
def _constant_mlp(residual: bool = False) -> MLP:
    """Two ReLU layers whose units output constants (zero weights, chosen biases): the dormant units are known.

    Layer 0 (10 units): 0, 0, 0, 0.05, 0.05, 1 x5 -> layer mean 0.51: tau 0 -> 3 dormant, tau 0.05 (0.0255) -> 3,
    tau 0.1 (0.051) -> 5. Layer 1 (6 units, or 10 when residual): 0, 0.2, 3 x4 -> mean 2.0333: tau 0 -> 1,
    tau 0.05 (0.1017) -> 1, tau 0.1 (0.2033) -> 2."""
    widths = [10, 10] if residual else [10, 6]
    mlp = MLP(4, 1, widths, residual=residual)
    with torch.no_grad():
        for layer in mlp.hidden:
            layer.linear.weight.zero_()
        mlp.hidden[0].linear.bias.copy_(torch.tensor([-1, -1, -1, 0.05, 0.05, 1, 1, 1, 1, 1]))
        second = [-2.0, 0.2, 3, 3, 3, 3] + ([-1.0] * 4 if residual else [])
        mlp.hidden[1].linear.bias.copy_(torch.tensor(second))
    return mlp


def test_dormant_units_of_a_hand_built_network_are_counted_exactly() -> None:
    mlp = _constant_mlp()
    x = torch.rand(300, 4, generator=torch.Generator().manual_seed(0))
    m = measure(feature_probe("net", mlp, mlp, x), [0.0, 0.05, 0.1], 1024)
    assert m["dormant_tau0/hidden0"] == 3 / 10 and m["dormant_tau0/hidden1"] == 1 / 6
    assert m["dormant_tau0.05/hidden0"] == 3 / 10 and m["dormant_tau0.05/hidden1"] == 1 / 6
    assert m["dormant_tau0.1/hidden0"] == 5 / 10 and m["dormant_tau0.1/hidden1"] == 2 / 6
    assert m["dormant_tau0/all"] == 4 / 16 and m["dormant_tau0.1/all"] == 7 / 16
    # every state has the same features: rank one, and the norm of [0, 0.2, 3, 3, 3, 3]
    assert m["eff_rank"] == pytest.approx(1.0) and m["srank"] == 1.0 and m["stable_rank"] == pytest.approx(1.0)
    assert m["feature_norm"] == pytest.approx(math.sqrt(0.04 + 36), rel=1e-6)


def test_units_are_activation_outputs_not_the_residual_sum() -> None:
    """A residual layer's output is x + act(W x): its own units are act(W x), dead here in 4 of 10 places even
    though the layer's output (x + 0) is not."""
    mlp = _constant_mlp(residual=True)
    m = measure(feature_probe("net", mlp, mlp, torch.rand(50, 4)), [0.0], 1024)
    assert m["dormant_tau0/hidden0"] == 3 / 10 and m["dormant_tau0/hidden1"] == 5 / 10
    features = mlp.hidden(torch.rand(3, 4))
    assert bool((features[:, 6:] > 0).all())  # the residual sum carries layer 0's active units on


def test_dormant_fractions_match_the_score_definition_on_random_layers() -> None:
    """Random ReLU layers with some units pushed dead or nearly so, against s_i = E|h_i| / mean_k E|h_k| <= tau in
    numpy (float64)."""
    gen = torch.Generator().manual_seed(3)
    for trial in range(5):
        h = torch.relu(torch.randn(257, 40, generator=gen) + torch.linspace(-4.0, 1.5, 40))  # left units nearly dead
        h[:, trial] = 0.0
        taus = [0.0, 0.025, 0.1, 0.5]
        m = metrics_of([h], torch.randn(257, 8, generator=gen), taus)
        mean_abs = np.abs(h.double().numpy()).mean(axis=0)
        scores = mean_abs / mean_abs.mean()
        for tau in taus:
            assert m[f"dormant_tau{tau_label(tau)}/hidden0"] == pytest.approx(np.mean(scores <= tau), abs=1e-12)
        assert m["dormant_tau0/hidden0"] >= 1 / 40  # the zeroed unit, at least


def test_an_all_zero_layer_is_all_dormant_and_has_rank_zero() -> None:
    m = metrics_of([torch.zeros(16, 5)], torch.zeros(16, 5), [0.0, 0.1])
    assert m["dormant_tau0/hidden0"] == 1.0 and m["dormant_tau0.1/all"] == 1.0
    assert (m["eff_rank"], m["srank"], m["stable_rank"], m["feature_norm"]) == (0.0, 0.0, 0.0, 0.0)


def _with_spectrum(rows: int, spectrum: list[float], seed: int = 0) -> torch.Tensor:
    """U diag(s) V^T with random orthonormal U [rows, k], V [k, k]: a matrix whose singular values are s."""
    rng = np.random.default_rng(seed)
    k = len(spectrum)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return torch.tensor(u @ np.diag(spectrum) @ v.T, dtype=torch.float32)


def _numpy_reference(f: np.ndarray) -> dict[str, float]:
    s = np.linalg.svd(f.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    cumulative = np.cumsum(s) / s.sum()
    return {"eff_rank": float(np.exp(-(p * np.log(p)).sum())),
            "srank": float(np.argmax(cumulative >= 0.99) + 1),
            "stable_rank": float((s ** 2).sum() / s.max() ** 2),
            "feature_norm": float(np.linalg.norm(f.astype(np.float64), axis=1).mean())}


@pytest.mark.parametrize("spectrum", [[5.0, 3.0, 2.0, 1.0, 0, 0, 0, 0], [10.0, 10.0, 10.0, 0.1, 0.1, 0.0],
                                      [1.0] * 8, [7.0] + [0.0] * 9])
def test_ranks_and_norm_on_known_spectra_match_numpy(spectrum: list[float]) -> None:
    f = _with_spectrum(200, spectrum)
    m = metrics_of([torch.relu(f)], f, [0.0])
    ref = _numpy_reference(f.numpy())
    for key in ("eff_rank", "stable_rank", "feature_norm"):
        assert m[key] == pytest.approx(ref[key], rel=1e-6), key
    assert m["srank"] == ref["srank"]
    s = np.array(spectrum)
    s = s[s > 0]
    exact_p = s / s.sum()
    assert m["eff_rank"] == pytest.approx(float(np.exp(-(exact_p * np.log(exact_p)).sum())), rel=1e-5)
    assert m["stable_rank"] == pytest.approx(float((s ** 2).sum() / s.max() ** 2), rel=1e-5)
    assert 1.0 <= m["stable_rank"] <= len(s) + 1e-4 and 1.0 <= m["eff_rank"] <= len(s) + 1e-4  # float32 input


def test_srank_counts_the_directions_that_hold_99_percent() -> None:
    # [10, 10, 10, 0.1, 0.1]: three directions hold 30 / 30.2 = 99.3 %; rank 5, srank 3
    assert metrics_of([torch.ones(2, 2)], _with_spectrum(50, [10, 10, 10, 0.1, 0.1]), [0.0])["srank"] == 3.0
    # equal singular values: every direction is needed (8 of 8)
    assert metrics_of([torch.ones(2, 2)], _with_spectrum(50, [1.0] * 8), [0.0])["srank"] == 8.0


def test_non_finite_features_give_nan_for_every_metric() -> None:
    f = torch.randn(20, 6)
    f[3, 2] = float("inf")
    m = metrics_of([torch.relu(f)], f, [0.0, 0.1])
    assert set(m) == set(metric_names([0.0, 0.1], 1)) and all(math.isnan(v) for v in m.values())


def test_measure_leaves_batchnorm_statistics_modes_and_gradients_alone() -> None:
    mlp = MLP(6, 2, [16, 16], norm="batchnorm")
    mlp.train()
    mlp(torch.randn(64, 6))  # some running statistics
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    mlp.hidden[1].train(False)  # one submodule in eval mode: restored as it was
    measure(feature_probe("net", mlp, mlp, torch.randn(128, 6) * 3 + 1), [0.0, 0.1], 1024)
    after = mlp.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert mlp.training and mlp.hidden[0].training and not mlp.hidden[1].training
    assert all(p.grad is None for p in mlp.parameters())
    assert not any(m._forward_hooks for m in mlp.modules())  # the pass's hooks are gone


def test_at_most_max_batch_rows_evenly_spaced() -> None:
    assert even_rows(1024, 1024) == slice(None, None, 1)
    assert len(range(3200)[even_rows(3200, 1024)]) == 800 and len(range(10)[even_rows(10, 3)]) == 3
    captured: list[int] = []
    mlp = MLP(3, 1, [4])
    probe = FeatureProbe("net", mlp, [mlp.hidden[0].act], lambda x: captured.append(x.shape[0]) or mlp.hidden(x),
                         torch.randn(1000, 3))
    measure(probe, [0.0], 300)
    assert captured == [250]


def test_tag_scheme() -> None:
    assert tag_of("actor/agent_0", "dormant_tau0.1/hidden1") == "plasticity/dormant_tau0.1/actor/agent_0/hidden1"
    assert tag_of("critic2/agent_2", "eff_rank") == "plasticity/eff_rank/critic2/agent_2"
    assert metric_names([0.0, 0.025], 2) == [
        "dormant_tau0/hidden0", "dormant_tau0/hidden1", "dormant_tau0/all", "dormant_tau0.025/hidden0",
        "dormant_tau0.025/hidden1", "dormant_tau0.025/all", "eff_rank", "srank", "stable_rank", "feature_norm"]


# --------------------------------------------------------------------------- every algorithm, in a real run
@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    preset, overrides, networks = RUNS[request.param]
    cfg = load_config(preset, overrides)
    sink = MemorySink()
    run_dir = tmp_path_factory.mktemp("plasticity") / request.param
    trainer = Trainer(cfg, run_dir, quiet=True, extra_sinks=[sink], hooks=[ProbeCheck])
    summary = trainer.run()
    return {"name": request.param, "cfg": cfg, "sink": sink, "dir": run_dir, "summary": summary,
            "algo": trainer.algo, "networks": networks, "probe_check": trainer.bus.find(ProbeCheck)}


def test_every_network_writes_every_metric_in_range(run: dict[str, Any]) -> None:
    cfg, sink, summary = run["cfg"], run["sink"], run["summary"]
    every = cfg.plasticity.resolved_every(algorithm_class(cfg.algo).on_policy)
    assert summary["status"] == "completed" and summary["updates"] >= 5
    names = metric_names(cfg.plasticity.taus, len(cfg.actor.hidden_sizes))
    expected = {tag_of(net, k) for net in run["networks"] for k in names}
    tags = {t for t in sink.scalars if t.startswith("plasticity/")}
    assert tags == expected
    measurements = summary["updates"] // every
    width, rows = cfg.actor.hidden_sizes[-1], (cfg.maddpg.batch_size if cfg.algo in ("maddpg", "matd3") else 1024)
    for tag in tags:
        points = sink.scalars[tag]
        assert len(points) == measurements, tag
        values = np.array([v for _, v in points])
        assert np.isfinite(values).all(), tag
        metric = tag.split("/")[1]
        if metric.startswith("dormant"):
            assert ((values >= 0) & (values <= 1)).all(), tag
        elif metric == "feature_norm":
            assert (values > 0).all(), tag
        else:
            assert ((values >= 1) & (values <= min(width, rows) + 1e-6)).all(), tag
            if metric == "srank":
                assert (values == np.round(values)).all(), tag


def test_summary_holds_the_last_measurement(run: dict[str, Any]) -> None:
    cfg, sink, summary = run["cfg"], run["sink"], run["summary"]
    block = summary["plasticity"]
    every = cfg.plasticity.resolved_every(algorithm_class(cfg.algo).on_policy)
    assert block["update"] == summary["updates"] // every * every
    assert sorted(block["networks"]) == sorted(run["networks"])
    for net, values in block["networks"].items():
        for metric, value in values.items():
            step, logged = sink.scalars[tag_of(net, metric)][-1]
            assert (step, logged) == (block["env_steps"], value)
    on_disk = json.loads((run["dir"] / "summary.json").read_text())
    assert on_disk["plasticity"] == block


class ProbeCheck(Hook):
    """Right after every update (when the plasticity hook measures): are the probes' inputs the states that
    update trained on? Off-policy: the replay batch, normalized with the statistics of that update; on-policy:
    the rollout (normalized when it was collected)."""

    name = "probe_check"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.checked: list[bool] = []

    def on_update(self, ev: Any) -> None:
        algo = self.ctx.algorithm
        probes = {p.name: p for p in algo.feature_probes(10 ** 6)}
        b = algo.stepper.batch
        if "rew" in b:  # a replay batch
            obs = algo.fixes.obs(b["obs"])
            joint = torch.cat([obs.reshape(obs.shape[0], -1), b["act"].reshape(obs.shape[0], -1)], dim=-1)
            ok = all(torch.equal(probes[f"actor/{a}"].inputs, obs[:, i]) and torch.equal(probes[f"critic/{a}"].inputs, joint)
                     for i, a in enumerate(AGENTS))
            ok = ok and all(p.inputs.shape[0] <= 50 for p in algo.feature_probes(50))
        else:
            obs = b["obs"]
            group = "shared" if "actor/shared" in probes else "agent_0"
            g = next(g for g in algo.groups if g.name == group)
            ok = torch.equal(probes[f"actor/{group}"].inputs, algo.actor_input(g, obs))
            ok = ok and torch.equal(probes[f"critic/{group}"].inputs, algo.critic_input(g, obs))
            small = algo.feature_probes(300)
            ok = ok and all(p.inputs.shape[0] <= 300 for p in small)
            if group == "shared":  # a shared network sees the same states for each of its agents
                ids = next(p for p in small if p.name == "actor/shared").inputs[:, -3:]
                ok = ok and torch.equal(ids.sum(0), torch.full((3,), ids.shape[0] / 3))
        self.checked.append(ok)


def test_probes_are_the_inputs_each_update_trained_on(run: dict[str, Any]) -> None:
    checked = run["probe_check"].checked
    assert len(checked) == run["summary"]["updates"] and all(checked)
    assert sorted(p.name for p in run["algo"].feature_probes(10 ** 6)) == sorted(run["networks"])


def test_tags_are_readable_from_the_event_files(run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["dir"]), size_guidance={"scalars": 0})
    acc.Reload()
    sink = run["sink"]
    tags = {t for t in acc.Tags()["scalars"] if t.startswith("plasticity/")}
    assert tags == {t for t in sink.scalars if t.startswith("plasticity/")}
    for tag in tags:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in sink.scalars[tag]]
        assert [e.value for e in events] == pytest.approx([v for _, v in sink.scalars[tag]], rel=1e-6)


def test_the_plasticity_dashboard_charts_logged_tags(run: dict[str, Any]) -> None:
    import re

    from marl_stability.hooks.control import dashboard

    tags = [t for t in run["sink"].scalars if t.startswith("plasticity/")]
    layout = dashboard(run["algo"].stat_prefixes, run["cfg"].plasticity.taus)
    assert len(layout["Plasticity"]) == len(run["cfg"].plasticity.taus) + 4
    for chart, (_, patterns) in layout["Plasticity"].items():
        matched = {t for t in tags for p in patterns if re.fullmatch(p, t)}
        assert len(matched) == len(run["networks"]), chart  # one line per network
    assert "Plasticity" not in dashboard(run["algo"].stat_prefixes)


# --------------------------------------------------------------------------- on vs off: no training number changes
def _params_and_buffers(algo: Any) -> dict[str, torch.Tensor]:
    return {f"{name}/{k}": v for name, m in algo.modules().items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("preset,overrides", [
    (MADDPG_PRESET, OFF_POLICY + ["plasticity.every=1", "actor.norm=batchnorm", "critic.norm=batchnorm"]),
    (MADDPG_PRESET, OFF_POLICY + ["plasticity.every=1", "algo=matd3"]),
    (MAPPO_PRESET, ON_POLICY + ["plasticity.every=1"]),
], ids=["maddpg_batchnorm", "matd3_stacked", "mappo"])
def test_measuring_changes_no_training_number(preset: Path, overrides: list[str], tmp_path: Path) -> None:
    results = []
    for enabled in (True, False):
        cfg = load_config(preset, overrides + [f"plasticity.enabled={str(enabled).lower()}"])
        sink = MemorySink()
        trainer = Trainer(cfg, tmp_path / str(enabled), quiet=True, extra_sinks=[sink])
        summary = trainer.run()
        results.append((summary, sink, _params_and_buffers(trainer.algo)))
    (on, on_sink, on_params), (off, off_sink, off_params) = results
    assert any(t.startswith("plasticity/") for t in on_sink.scalars)
    assert not any(t.startswith("plasticity/") for t in off_sink.scalars) and "plasticity" not in off
    assert on.pop("plasticity")["networks"]
    skip = set(TIMING_KEYS)
    assert {k: v for k, v in on.items() if k not in skip} == {k: v for k, v in off.items() if k not in skip}
    assert on_params.keys() == off_params.keys()
    assert all(torch.equal(on_params[k], off_params[k]) for k in on_params)
    shared = {t for t in on_sink.scalars if not t.startswith(("plasticity/", "perf/"))}
    assert shared == {t for t in off_sink.scalars if not t.startswith("perf/")}
    assert all(on_sink.scalars[t] == off_sink.scalars[t] for t in shared)


# --------------------------------------------------------------------------- config
def test_defaults_and_the_automatic_rate() -> None:
    cfg = RunConfig()
    assert cfg.plasticity.enabled and cfg.plasticity.taus == [0.0, 0.1] and cfg.plasticity.max_batch == 1024
    every = {name: cfg.plasticity.resolved_every(algorithm_class(name).on_policy) for name in ("maddpg", "matd3", "mappo", "ippo")}
    assert every == {"maddpg": 50, "matd3": 50, "mappo": 1, "ippo": 1}
    assert load_config(None, ["plasticity.every=7"]).plasticity.resolved_every(True) == 7
    schema = describe_schema()
    assert "plasticity:" in schema and "taus: [0.0, 0.1]" in schema and "max_batch: 1024" in schema


@pytest.mark.parametrize("override,message", [
    ("plasticity.taus=[0.0, 1.5]", "plasticity.taus"),
    ("plasticity.taus=[-0.1]", "plasticity.taus"),
    ("plasticity.taus=[]", "plasticity.taus"),
    ("plasticity.taus=[0.1, 0.1]", "distinct"),
    ("plasticity.taus=abc", "plasticity.taus"),
    ("plasticity.every=0", "plasticity.every"),
    ("plasticity.max_batch=1", "plasticity.max_batch"),
    ("plasticity.enabled=maybe", "plasticity.enabled"),
    ("plasticity.tau=0.1", "plasticity.tau"),
])
def test_bad_values_are_one_line_errors(override: str, message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(MADDPG_PRESET), "--logdir", str(tmp_path), "--set", override, "--quiet"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and "Traceback" not in err + out
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_malformed_section_in_a_yaml_file_is_a_one_line_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("plasticity: [1, 2]\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["config", "--config", str(preset)])
    _, err = capsys.readouterr()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "plasticity" in err, err


# --------------------------------------------------------------------------- the cost benchmark
def test_cost_benchmark_compares_on_and_off_and_times_one_measurement(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from marl_stability.bench import instrumentation as bench_instrumentation

    # 2600 env steps, warm-up 2000, one update per 25 env steps: 24 updates, measured every 8th -> 3 measurements
    monkeypatch.setattr(sys, "argv", ["bench", "--compare", "plasticity", "--steps", "2600", "--repeats", "1"])
    monkeypatch.setattr(bench_instrumentation, "ARMS", {"plasticity": {
        "plasticity on": ["plasticity.enabled=true", "plasticity.every=8", "maddpg.batch_size=256"],
        "plasticity off": ["plasticity.enabled=false", "maddpg.batch_size=256"]}})
    bench_instrumentation.main()
    out = capsys.readouterr().out
    assert "plasticity on " in out and "plasticity off " in out
    assert "overhead of plasticity on (wall time):" in out and "overhead of plasticity on (cpu time):" in out
    line = next(x for x in out.splitlines() if x.startswith("one measurement"))
    assert "of 6 modules" in line and "3 measurements (24 updates, every 8)" in line
    assert 0 < float(line.split(": ")[1].split(" ms")[0]) < 1000
