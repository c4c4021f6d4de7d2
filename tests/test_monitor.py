"""``marl_stability.hooks.monitor`` on plain torch models and loops: every logged statistic equals an independent
computation, logging cadence is respected, and all three writer kinds (Logger, logdir, SummaryWriter) work."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from marl_stability.hooks import monitor
from marl_stability.core.sinks import Logger, MemorySink


# --------------------------------------------------------------------------- helpers
def _mlp(seed: int = 0, inp: int = 4, hidden: int = 16, out: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


def _backward(model: nn.Module, scale: float = 1.0, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    model.zero_grad(set_to_none=True)
    (scale * model(x).pow(2).mean()).backward()


def _memory_logger() -> tuple[Logger, MemorySink]:
    sink = MemorySink()
    return Logger([sink]), sink


def _read_tb(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def _tb_histogram_tags(logdir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"histograms": 0})
    ea.Reload()
    return ea.Tags()["histograms"]


# --------------------------------------------------------------------------- gradient norms
def test_grad_norms_match_independent_computation(tmp_path: Path) -> None:
    model = _mlp()
    _backward(model, scale=7.0)
    sink = MemorySink()
    from marl_stability.core.sinks import TensorBoardSink

    tb = TensorBoardSink(tmp_path)
    mon = monitor.attach({"critic/agent_0": model}, writer=Logger([sink, tb]))
    stats = mon.after_backward(step=5)
    tb.close()

    expected_global = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert stats["grad_norm/critic/agent_0"] == pytest.approx(expected_global, rel=1e-6)
    assert monitor.global_grad_norm(model) == pytest.approx(expected_global, rel=1e-6)
    assert stats["health/nonfinite_grads/critic/agent_0"] == 0.0
    logged_tb = _read_tb(tmp_path)
    for name, p in model.named_parameters():
        g_tag, w_tag = f"layers/grad_norm/critic/agent_0/{name}", f"layers/weight_norm/critic/agent_0/{name}"
        assert stats[g_tag] == pytest.approx(float(torch.linalg.norm(p.grad)), rel=1e-6)
        assert stats[w_tag] == pytest.approx(float(torch.linalg.norm(p.detach())), rel=1e-6)
        assert sink.scalars[g_tag] == [(5, stats[g_tag])]
        assert logged_tb[g_tag][0][0] == 5
        assert logged_tb[g_tag][0][1] == pytest.approx(stats[g_tag], rel=1e-6)  # TB stores float32
    assert sink.last("grad_norm/critic/agent_0") == stats["grad_norm/critic/agent_0"]
    assert logged_tb["grad_norm/critic/agent_0"][0][1] == pytest.approx(expected_global, rel=1e-6)


def test_layer_stats_off_and_params_without_grad() -> None:
    model = _mlp()
    _backward(model)
    model[0].bias.grad = None  # a parameter without a gradient is skipped, not counted as zero
    stats = monitor.attach({"m": model}, layer_stats=False).after_backward(0)
    assert not any(k.startswith(("layers/grad_norm/", "layers/weight_norm/")) for k in stats)
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    assert stats["grad_norm/m"] == pytest.approx(expected, rel=1e-6)

    stats = monitor.attach({"m": model}).after_backward(0)
    assert "layers/grad_norm/m/0.bias" not in stats and "layers/grad_norm/m/0.weight" in stats


# --------------------------------------------------------------------------- clipping
def test_postclip_norm_and_clip_fraction() -> None:
    model = _mlp()
    logger, sink = _memory_logger()
    mon = monitor.attach({"actor/agent_0": model}, writer=logger)
    max_norm = 1.0
    scales = [1e3, 1e-4, 1e3, 1e3, 1e-4, 1e-4, 1e3, 1e-4]  # clipping active on exactly the 1e3 calls
    active_so_far = 0
    for i, s in enumerate(scales):
        _backward(model, scale=s, seed=i)
        pre = mon.after_backward(i)["grad_norm/actor/agent_0"]
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        stats = mon.after_clip(i)
        active_so_far += s > 1.0
        assert (pre > max_norm) == (s > 1.0)  # the loop really does what the test claims
        assert stats["optim/grad_norm_postclip/actor/agent_0"] <= max_norm * (1 + 1e-5)
        assert stats["optim/grad_norm_postclip/actor/agent_0"] == pytest.approx(monitor.global_grad_norm(model))
        assert stats["optim/clip_active/actor/agent_0"] == float(s > 1.0)
        assert stats["optim/clip_fraction/actor/agent_0"] == pytest.approx(active_so_far / (i + 1))
    assert sink.last("optim/clip_fraction/actor/agent_0") == pytest.approx(4 / 8)
    assert len(sink.scalars["optim/clip_active/actor/agent_0"]) == len(scales)


def test_keys_renamed_in_0_2_0_still_answer_with_a_warning() -> None:
    """A user's loop written against 0.1.0 reads ``grad_norm_postclip/<m>``, ``grad_norm_layer/...`` and
    ``update_ratio/<m>``: each gives the renamed key's value with a FutureWarning (not a silent None);
    current keys give no warning; a key that never existed stays missing."""
    model = _mlp()
    mon = monitor.attach({"q": model}, writer=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _backward(model, scale=1e3, seed=0)
    pre = mon.after_backward(0)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    post = mon.after_clip(0)
    opt.step()
    ratio = mon.after_step(0)
    layer = next(k for k in pre if k.startswith("layers/grad_norm/q/"))
    cases = [(post, "grad_norm_postclip/q", "optim/grad_norm_postclip/q"),
             (pre, "grad_norm_layer/q/" + layer.split("/", 3)[3], layer),
             (ratio, "update_ratio/q", "optim/update_ratio/q")]
    for stats, old, new in cases:
        assert isinstance(stats, monitor.MonitorStats) and old not in dict.keys(stats)
        with pytest.warns(FutureWarning, match="renamed in marl-stability 0.2.0"):
            assert stats.get(old) == stats[new]
        with pytest.warns(FutureWarning):
            assert stats[old] == stats[new] and old in stats
    acts = mon.actions(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), 0, agent="agent_0", low=0.0, high=1.0,
                       preact=torch.tensor([[-3.0, 3.0], [-3.0, 3.0]]))
    for old in ("actor/saturation/agent_0", "actor/batch_same_action/agent_0", "actor/preact_max_abs/agent_0",
                "actor/preact_mean_abs/agent_0"):  # actions(): the actor/ -> policy/ renames
        with pytest.warns(FutureWarning):
            assert acts.get(old) == acts["policy/" + old.split("/", 1)[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert post.get("optim/grad_norm_postclip/q") == post["optim/grad_norm_postclip/q"]
        assert post.get("no_such_tag/q") is None and "no_such_tag/q" not in post
        with pytest.raises(KeyError):
            post["grad_norm_postclip/critic"]  # an old name, but no such model


# --------------------------------------------------------------------------- update ratios
@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_update_ratio_matches_independent_computation(opt_cls: type) -> None:
    model = _mlp()
    opt = opt_cls(model.parameters(), lr=0.05)
    mon = monitor.attach({"m": model})
    for i in range(3):
        _backward(model, seed=i)
        mon.after_backward(i)
        old = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        stats = mon.after_step(i)
        num_sq = den_sq = 0.0
        for n, p in model.named_parameters():
            d, w = float(torch.linalg.norm(p.detach() - old[n])), float(torch.linalg.norm(old[n]))
            num_sq, den_sq = num_sq + d * d, den_sq + w * w
            assert stats[f"layers/update_ratio/m/{n}"] == pytest.approx(d / w, rel=1e-5)
        assert stats["optim/update_ratio/m"] == pytest.approx(math.sqrt(num_sq) / math.sqrt(den_sq), rel=1e-5)
        assert stats["health/nonfinite_params/m"] == 0.0
    # without a fresh after_backward there is no snapshot, so no (stale) ratio
    assert "optim/update_ratio/m" not in mon.after_step(99)


# --------------------------------------------------------------------------- non-finite values
def test_nonfinite_grads_and_params_are_counted() -> None:
    model = _mlp()
    logger, sink = _memory_logger()
    mon = monitor.attach({"m": model}, writer=logger)
    _backward(model)
    model[0].weight.grad[0, 0] = float("nan")
    model[2].bias.grad[1] = float("inf")
    stats = mon.after_backward(0)
    assert stats["health/nonfinite_grads/m"] == 2.0
    assert math.isnan(stats["grad_norm/m"]) and math.isnan(sink.last("grad_norm/m"))  # logged as is

    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    stats = mon.after_step(0)
    assert stats["health/nonfinite_params/m"] == 1.0
    assert sink.last("health/nonfinite_params/m") == 1.0


def test_huge_but_finite_grads_are_not_counted_nonfinite() -> None:
    model = _mlp()
    _backward(model)
    model[0].weight.grad.fill_(1e30)  # the float32 norm overflows; no element is non-finite
    stats = monitor.attach({"m": model}).after_backward(0)
    assert stats["health/nonfinite_grads/m"] == 0.0


# --------------------------------------------------------------------------- action statistics
def test_saturation_fraction_known_values() -> None:
    a = np.array([[0.0, 0.5], [0.995, 0.3], [1.0, 0.009], [0.5, 0.5]])
    assert monitor.saturation_fraction(a, 0.0, 1.0) == pytest.approx(4 / 8)
    # per-dimension bounds: dim 0 in [-1, 1] (margin 0.02), dim 1 in [0, 10] (margin 0.1)
    b = torch.tensor([[-0.99, 5.0], [0.97, 9.95], [0.0, 0.05], [0.5, 3.0]])
    assert monitor.saturation_fraction(b, [-1.0, 0.0], [1.0, 10.0]) == pytest.approx(3 / 8)
    assert monitor.squashed_saturation(torch.tensor([0.995, -0.999, 0.5, 0.0])) == pytest.approx(0.5)

    mon = monitor.attach({"m": _mlp()})
    assert mon.actions(a, 0, agent="agent_0", low=0.0, high=1.0)["policy/saturation/agent_0"] == pytest.approx(0.5)
    y = torch.tensor([[0.995, 0.1], [-0.999, 0.2]])
    assert mon.actions(y, 0, agent="agent_1", squashed=y)["policy/saturation/agent_1"] == pytest.approx(0.5)


def test_repeat_rate_known_fraction() -> None:
    g = torch.Generator().manual_seed(0)
    prev = torch.rand(10, 3, generator=g)
    cur = prev.clone()
    cur[[1, 4, 7], 2] += 0.5  # 3 of 10 rows change
    cur[0, 0] += 5e-4  # below atol: still "the same action"
    assert monitor.repeated_action_rate(prev, cur) == pytest.approx(0.7)

    mon = monitor.attach({"m": _mlp()})
    first = mon.actions(prev, 0, agent="agent_0")
    assert "policy/repeat_rate/agent_0" not in first  # nothing to compare with yet
    assert mon.actions(cur, 1, agent="agent_0")["policy/repeat_rate/agent_0"] == pytest.approx(0.7)
    assert mon.actions(cur, 2, agent="agent_0")["policy/repeat_rate/agent_0"] == pytest.approx(1.0)
    # agents are tracked separately
    assert "policy/repeat_rate/agent_1" not in mon.actions(cur, 2, agent="agent_1")


def test_batch_same_action() -> None:
    obs = torch.randn(64, 4)
    constant = torch.full((64, 2), 0.3) + 0 * obs[:, :2]
    assert monitor.batch_same_action_rate(constant) == pytest.approx(1.0)
    distinct = torch.arange(128, dtype=torch.float32).reshape(64, 2) * 0.01
    assert monitor.batch_same_action_rate(distinct) == pytest.approx(0.0)
    mixed = torch.tensor([[0.0, 0.0], [0.0, 0.0005], [1.0, 0.0], [0.0, 1.0]])
    assert monitor.batch_same_action_rate(mixed) == pytest.approx(1 / 6)
    # only the first 256 rows count: rows after them all collapse onto row 0
    many = torch.cat([torch.arange(256.0).unsqueeze(1), torch.zeros(100, 1)])
    assert monitor.batch_same_action_rate(many) == pytest.approx(0.0)
    stats = monitor.attach({"m": _mlp()}).actions(constant, 0, agent="a")
    assert stats["policy/batch_same_action/a"] == pytest.approx(1.0)


def test_preact_stats_and_histograms() -> None:
    logger, sink = _memory_logger()
    mon = monitor.attach({"m": _mlp()}, writer=logger, histogram_every=4)
    pre = torch.tensor([[-3.0, 1.0], [0.5, -0.5]])
    for i in range(10):
        stats = mon.actions(torch.tanh(pre), i, agent="agent_0", preact=pre)
    assert stats["policy/preact_max_abs/agent_0"] == pytest.approx(3.0)
    assert stats["policy/preact_mean_abs/agent_0"] == pytest.approx(1.25)
    assert [s for s, _ in sink.histograms["hist/actions/agent_0/dim0"]] == [0, 4, 8]
    assert [s for s, _ in sink.histograms["hist/actions/agent_0/dim1"]] == [0, 4, 8]
    np.testing.assert_allclose(sink.histograms["hist/actions/agent_0/dim1"][0][1], np.tanh([1.0, -0.5]), rtol=1e-6)
    assert len(sink.histograms["hist/preact/agent_0"]) == 3


# --------------------------------------------------------------------------- sensitivity
def test_sensitivity() -> None:
    torch.manual_seed(0)
    obs = torch.randn(20, 5)
    assert monitor.action_sensitivity(lambda o: torch.zeros(o.shape[0], 2), obs) == 0.0
    bias_only = nn.Parameter(torch.randn(2))  # depends on parameters but not on obs
    assert monitor.action_sensitivity(lambda o: bias_only.expand(o.shape[0], 2), obs) == 0.0

    lin = nn.Linear(5, 3)
    expected = float(torch.linalg.norm(lin.weight.detach()))
    assert monitor.action_sensitivity(lin, obs) == pytest.approx(expected, rel=1e-5)
    assert lin.weight.grad is None  # parameters' grads untouched

    saturated = nn.Linear(5, 3)
    with torch.no_grad():
        saturated.bias.fill_(50.0)  # tanh(50 + small) is flat
    assert monitor.action_sensitivity(lambda o: torch.tanh(saturated(o)), obs) == pytest.approx(0.0, abs=1e-6)

    logger, sink = _memory_logger()
    mon = monitor.attach({"m": lin}, writer=logger)
    with torch.no_grad():  # works even when the caller is in no_grad
        value = mon.sensitivity(lin, obs, step=3, agent="agent_0")
    assert value == pytest.approx(expected, rel=1e-5)
    assert sink.scalars["policy/sensitivity/agent_0"] == [(3, value)]


# --------------------------------------------------------------------------- logging cadence and writers
def test_log_every_respected() -> None:
    model = _mlp()
    logger, sink = _memory_logger()
    mon = monitor.attach({"m": model}, writer=logger, log_every=3)
    returned = 0
    for i in range(10):
        _backward(model, seed=i)
        returned += "grad_norm/m" in mon.after_backward(i)  # always returned
        mon.after_clip(i)
        mon.after_step(i)
        mon.actions(torch.rand(4, 2), i, agent="a")
        mon.actions(torch.rand(4, 2), i, agent="b")
    assert returned == 10
    for tag in ("grad_norm/m", "optim/clip_fraction/m", "optim/update_ratio/m", "policy/batch_same_action/a",
                "policy/batch_same_action/b"):
        assert [s for s, _ in sink.scalars[tag]] == [0, 3, 6, 9], tag


def test_none_writer_returns_stats() -> None:
    model = _mlp()
    mon = monitor.attach({"m": model}, writer=None)
    _backward(model)
    assert mon.after_backward(0)["grad_norm/m"] > 0
    mon.close()


def test_summary_writer_and_logdir(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    model = _mlp()
    writer = SummaryWriter(log_dir=str(tmp_path / "sw"))
    mon = monitor.attach({"critic/agent_0": model}, writer=writer, histogram_every=1)
    own = monitor.attach({"critic/agent_0": model}, writer=str(tmp_path / "own"))
    for i in range(3):
        _backward(model, seed=i)
        stats = mon.after_backward(i)
        own.after_backward(i)
        mon.actions(torch.rand(8, 2), i, agent="agent_0", preact=torch.randn(8, 2))
    mon.close()
    writer.add_scalar("user/still_open", 1.0, 0)  # the monitor must not have closed the user's writer
    writer.close()
    own.close()

    for sub in ("sw", "own"):
        logged = _read_tb(tmp_path / sub)
        assert [s for s, _ in logged["grad_norm/critic/agent_0"]] == [0, 1, 2]
        assert logged["grad_norm/critic/agent_0"][-1][1] == pytest.approx(stats["grad_norm/critic/agent_0"], rel=1e-6)
    assert "user/still_open" in _read_tb(tmp_path / "sw")
    assert {"hist/actions/agent_0/dim0", "hist/actions/agent_0/dim1", "hist/preact/agent_0"} <= set(
        _tb_histogram_tags(tmp_path / "sw"))


def test_bad_writer_rejected() -> None:
    with pytest.raises(TypeError):
        monitor.attach({"m": _mlp()}, writer=42)


# --------------------------------------------------------------------------- a user's own loop
def test_example_loop_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    n_agents, obs_dim, act_dim, num_envs = 2, 6, 2, 8
    actors = [nn.Sequential(nn.Linear(obs_dim, 32), nn.ReLU(), nn.Linear(32, act_dim)) for _ in range(n_agents)]
    critics = [nn.Sequential(nn.Linear(n_agents * (obs_dim + act_dim), 32), nn.ReLU(), nn.Linear(32, 1))
               for _ in range(n_agents)]
    models = {f"actor/agent_{i}": a for i, a in enumerate(actors)} | {f"critic/agent_{i}": c for i, c in enumerate(critics)}
    opt = torch.optim.Adam([p for m in models.values() for p in m.parameters()], lr=1e-3)
    mon = monitor.attach(models=models, writer=tmp_path, histogram_every=5)
    for step in range(12):
        obs = torch.randn(num_envs, n_agents, obs_dim)
        pre = [actors[i](obs[:, i]) for i in range(n_agents)]
        acts = [torch.sigmoid(p) for p in pre]  # actions in [0, 1]
        for i in range(n_agents):
            mon.actions(acts[i], step, agent=f"agent_{i}", low=0.0, high=1.0, preact=pre[i])
        joint = torch.cat([obs.flatten(1), torch.cat(acts, 1)], 1)
        loss = sum(-c(joint).mean() for c in critics) + sum(c(joint.detach()).pow(2).mean() for c in critics)
        opt.zero_grad()
        loss.backward()
        stats = mon.after_backward(step)
        torch.nn.utils.clip_grad_norm_([p for m in models.values() for p in m.parameters()], 0.5)
        mon.after_clip(step)
        opt.step()
        mon.after_step(step)
        mon.sensitivity(lambda o: torch.sigmoid(actors[0](o)), obs[:, 0], step, agent="agent_0")
    mon.close()
    assert all(math.isfinite(v) for v in stats.values())
    logged = _read_tb(tmp_path)
    for tag in ("grad_norm/critic/agent_1", "optim/clip_fraction/actor/agent_0", "optim/update_ratio/critic/agent_0",
                "policy/saturation/agent_1", "policy/repeat_rate/agent_0", "policy/sensitivity/agent_0",
                "layers/grad_norm/actor/agent_0/0.weight"):
        assert tag in logged, tag
    assert len(logged["grad_norm/critic/agent_1"]) == 12
    assert len(logged["policy/repeat_rate/agent_0"]) == 11  # absent on the first call
