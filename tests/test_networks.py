"""Networks (heads, hidden layers, init), Gumbel-softmax, the replay buffer and MADDPG's update mechanics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GradRecorder
from marl_stability.agents.buffer import ReplayBuffer
from marl_stability.agents.maddpg import AgentSpec
from marl_stability.agents.networks import (
    ACTIVATIONS,
    MLP,
    Actor,
    HiddenLayer,
    OutputHead,
    gumbel_softmax_hard,
)
from torch import nn

from marl_stability import agents
from marl_stability.config import ClipConfig, RunConfig
from marl_stability.fixes.objects import build_fixes, make_clipper

# float(parameter) in assertions is intended
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")

LOW = torch.tensor([0.0, -2.0])
HIGH = torch.tensor([1.0, 3.0])


def _preacts() -> torch.Tensor:
    torch.manual_seed(0)
    pre = torch.randn(200, 2) * 20
    huge = torch.tensor([[1e6, -1e6], [-1e6, 1e6], [1e6, 1e6], [-1e6, -1e6], [0.0, 0.0], [30.0, -30.0]])
    return torch.cat([pre, huge])


# --------------------------------------------------------------------------- output heads
@pytest.mark.parametrize("kind", ["tanh_scaled", "softsign_scaled"])
def test_scaled_heads_stay_inside_asymmetric_bounds(kind: str) -> None:
    head = OutputHead(kind, LOW, HIGH)
    assert head.bounded
    pre = _preacts()
    out = head(pre)
    assert torch.isfinite(out).all()
    assert torch.all(out >= LOW) and torch.all(out <= HIGH)
    squash = torch.tanh(pre) if kind == "tanh_scaled" else pre / (1 + pre.abs())
    expected = LOW + (squash + 1) / 2 * (HIGH - LOW)
    assert torch.allclose(out, expected, atol=1e-6)
    # zero pre-activation maps to the middle of the box; +-1e6 to (at most) the edges
    assert torch.allclose(head(torch.zeros(1, 2)), (LOW + HIGH) / 2)
    assert torch.allclose(head(torch.full((1, 2), 1e6)), HIGH, atol=1e-5)
    assert torch.allclose(head(torch.full((1, 2), -1e6)), LOW, atol=1e-5)


def test_softsign_head_is_inside_open_unit_interval() -> None:
    head = OutputHead("softsign", LOW, HIGH)
    out = head(_preacts())
    assert torch.all(out > -1.0) and torch.all(out < 1.0)
    assert torch.allclose(out, F.softsign(_preacts()))


def test_linear_clip_head_returns_preactivation_unchanged() -> None:
    head = OutputHead("linear_clip", LOW, HIGH)
    assert not head.bounded
    pre = _preacts()
    assert torch.equal(head(pre), pre)


def test_unknown_head_is_rejected() -> None:
    with pytest.raises(ValueError, match="output head"):
        OutputHead("sigmoid", LOW, HIGH)


def _actor(output: str = "tanh_scaled", discrete: bool = False, **kw) -> Actor:  # type: ignore[no-untyped-def]
    args = dict(hidden_sizes=[16], activation="relu", norm="none", residual=False, init="default", last_layer_init=None)
    args.update(kw)
    return Actor(3, 2, discrete, output=output, low=LOW, high=HIGH, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("output", ["tanh_scaled", "softsign_scaled", "linear_clip", "auto"])
def test_actor_returns_action_and_mlp_preactivation(output: str) -> None:
    torch.manual_seed(1)
    actor = _actor(output, last_layer_init=None)
    with torch.no_grad():
        actor.mlp.out.weight.mul_(1e5)  # push the pre-activation far into saturation
    obs = torch.randn(64, 3)
    with torch.no_grad():
        action, pre = actor(obs)
    assert torch.equal(pre, actor.mlp(obs))
    assert torch.equal(action, actor.head(pre))
    assert actor.head.kind == ("tanh_scaled" if output == "auto" else output)
    if output != "linear_clip":
        assert torch.all(action >= LOW) and torch.all(action <= HIGH)
    else:
        assert float(pre.abs().max()) > 10 and torch.equal(action, pre)


def test_discrete_actor_has_no_head_and_outputs_logits() -> None:
    actor = _actor("auto", discrete=True)
    assert actor.head is None
    obs = torch.randn(10, 3)
    logits, pre = actor(obs)
    assert torch.equal(logits, actor.mlp(obs)) and torch.equal(pre, logits)
    assert logits.shape == (10, 2)


# --------------------------------------------------------------------------- hidden layers
_REFERENCE_ACT = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_hidden_layer_applies_the_configured_activation(activation: str) -> None:
    torch.manual_seed(0)
    layer = HiddenLayer(5, 7, activation, "none", residual=False)
    x = torch.randn(20, 5) * 3
    expected = _REFERENCE_ACT[activation](x @ layer.linear.weight.T + layer.linear.bias)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_residual_layer_computes_x_plus_activation() -> None:
    torch.manual_seed(0)
    layer = HiddenLayer(8, 8, "tanh", "none", residual=True)
    assert layer.residual
    x = torch.randn(6, 8)
    expected = x + torch.tanh(x @ layer.linear.weight.T + layer.linear.bias)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_residual_is_off_when_widths_differ() -> None:
    torch.manual_seed(0)
    layer = HiddenLayer(8, 6, "tanh", "none", residual=True)
    assert not layer.residual
    x = torch.randn(6, 8)
    assert torch.allclose(layer(x), torch.tanh(x @ layer.linear.weight.T + layer.linear.bias), atol=1e-6)
    mlp = MLP(5, 2, [16, 16, 8], residual=True)
    assert [h.residual for h in mlp.hidden] == [False, True, False]


def test_layernorm_is_present_and_normalizes_rows() -> None:
    torch.manual_seed(0)
    mlp = MLP(5, 2, [16, 16], norm="layernorm")
    for h in mlp.hidden:
        assert isinstance(h.norm, nn.LayerNorm) and tuple(h.norm.normalized_shape) == (16,)
    x = torch.randn(10, 5) * 100 + 50
    z = mlp.hidden[0].norm(mlp.hidden[0].linear(x))
    assert torch.allclose(z.mean(dim=-1), torch.zeros(10), atol=1e-5)
    assert torch.allclose(z.std(dim=-1, unbiased=False), torch.ones(10), atol=1e-3)
    assert all(isinstance(h.norm, nn.Identity) for h in MLP(5, 2, [16], norm="none").hidden)


def test_batchnorm_works_in_train_and_eval() -> None:
    torch.manual_seed(0)
    mlp = MLP(5, 2, [16, 16], norm="batchnorm")
    bn = mlp.hidden[0].norm
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 16
    x = torch.randn(32, 5) * 4 + 3
    mlp.train()
    out = mlp(x)
    assert out.shape == (32, 2) and torch.isfinite(out).all()
    assert not torch.equal(bn.running_mean, torch.zeros(16))  # running statistics were updated
    assert int(bn.num_batches_tracked) == 1
    mlp.eval()
    before = bn.running_mean.clone()
    single = mlp(x[:1])  # a batch of one works in eval mode
    assert torch.isfinite(single).all()
    # eval uses running statistics: a row's output does not depend on the rest of the batch
    assert torch.allclose(mlp(x)[:1], single, atol=1e-6)
    assert torch.equal(bn.running_mean, before)


# --------------------------------------------------------------------------- init schemes
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_orthogonal_init(activation: str) -> None:
    torch.manual_seed(0)
    mlp = MLP(12, 3, [16, 8], activation=activation, init="orthogonal")
    gain = math.sqrt(2.0) if activation == "relu" else 5.0 / 3.0
    for h in mlp.hidden:
        w = h.linear.weight.double()
        rows, cols = w.shape
        gram = w @ w.T if rows <= cols else w.T @ w
        assert torch.allclose(gram, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-5)
        assert torch.equal(h.linear.bias, torch.zeros_like(h.linear.bias))
    w = mlp.out.weight.double()  # without last_layer_init the output layer is orthogonal with gain 1
    assert torch.allclose(w @ w.T, torch.eye(3, dtype=torch.float64), atol=1e-5)


def test_orthogonal_init_with_last_layer_init_keeps_the_small_out_layer() -> None:
    mlp = MLP(12, 3, [16], init="orthogonal", last_layer_init=3e-3)
    assert float(mlp.out.weight.abs().max()) <= 3e-3 and float(mlp.out.bias.abs().max()) <= 3e-3


@pytest.mark.parametrize(
    "init, activation, bound",
    [
        ("xavier", "relu", lambda fi, fo: math.sqrt(2.0) * math.sqrt(6.0 / (fi + fo))),
        ("xavier", "tanh", lambda fi, fo: 5.0 / 3.0 * math.sqrt(6.0 / (fi + fo))),
        ("kaiming", "relu", lambda fi, fo: math.sqrt(6.0 / fi)),
        ("kaiming", "leaky_relu", lambda fi, fo: math.sqrt(2.0 / (1 + 0.01**2)) * math.sqrt(3.0 / fi)),
        ("default", "relu", lambda fi, fo: 1.0 / math.sqrt(fi)),
    ],
)
def test_uniform_init_bounds(init: str, activation: str, bound) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    mlp = MLP(24, 3, [32, 32], activation=activation, init=init)
    for h in mlp.hidden:
        fo, fi = h.linear.weight.shape
        b = bound(fi, fo)
        m = float(h.linear.weight.abs().max())
        assert m <= b + 1e-6
        assert m > 0.8 * b  # the whole range is used: this is the scheme's scale, not a smaller one
        if init != "default":
            assert torch.equal(h.linear.bias, torch.zeros_like(h.linear.bias))


# --------------------------------------------------------------------------- Gumbel-softmax
def test_gumbel_softmax_hard_one_hot_forward_gradient_backward() -> None:
    logits = torch.randn(64, 5, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    out = gumbel_softmax_hard(logits, 1.0, g)
    assert out.shape == (64, 5)
    hard = F.one_hot(out.detach().argmax(-1), 5).float()
    assert torch.allclose(out.detach(), hard, atol=1e-6)
    assert torch.allclose(out.detach().sum(-1), torch.ones(64), atol=1e-6)
    w = torch.randn(64, 5)
    (out * w).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0


def test_gumbel_softmax_hard_reproducible_with_generator_seed() -> None:
    logits = torch.randn(100, 4)
    a = gumbel_softmax_hard(logits, 1.0, torch.Generator().manual_seed(7))
    b = gumbel_softmax_hard(logits, 1.0, torch.Generator().manual_seed(7))
    c = gumbel_softmax_hard(logits, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gumbel_softmax_hard_samples_follow_softmax() -> None:
    base = torch.tensor([1.0, 0.0, -1.0, 2.0])
    n = 40_000
    out = gumbel_softmax_hard(base.expand(n, 4), 1.0, torch.Generator().manual_seed(3))
    freq = out.detach().argmax(-1).bincount(minlength=4).double() / n
    expected = torch.softmax(base.double(), 0)
    # binomial standard error <= 0.0025 at n=40000: 0.012 is about 5 sigma
    assert torch.allclose(freq, expected, atol=0.012)


# --------------------------------------------------------------------------- replay buffer
def _transition(k: int, num_agents: int = 2, obs_dim: int = 3, act_dim: int = 2) -> tuple[np.ndarray, ...]:
    """One env-batch row whose every entry encodes k."""
    obs = np.full((1, num_agents, obs_dim), k, np.float32)
    act = np.full((1, num_agents, act_dim), -k, np.float32)
    rew = np.full((1, num_agents), 10 * k, np.float32)
    nxt = np.full((1, num_agents, obs_dim), k + 0.5, np.float32)
    term = np.full((1, num_agents), k % 2, np.float32)
    return obs, act, rew, nxt, term


def test_replay_buffer_wraparound_drops_oldest() -> None:
    buf = ReplayBuffer(5, 2, 3, 2)
    for k in range(7):
        buf.add(*_transition(k))
    assert len(buf) == 5 and buf.size == 5 and buf.ptr == 2
    stored = sorted(set(buf.obs[:, 0, 0].tolist()))
    assert stored == [2.0, 3.0, 4.0, 5.0, 6.0]  # 0 and 1 are gone
    # every field of a slot belongs to the same transition
    k = buf.obs[:, 0, 0]
    np.testing.assert_array_equal(buf.act[:, 1, 1], -k)
    np.testing.assert_array_equal(buf.rew[:, 0], 10 * k)
    np.testing.assert_array_equal(buf.next_obs[:, 1, 2], k + 0.5)
    np.testing.assert_array_equal(buf.term[:, 0], k % 2)


def test_replay_buffer_batch_add_across_the_end() -> None:
    buf = ReplayBuffer(5, 2, 3, 2)
    rows = [_transition(k) for k in range(3)]
    buf.add(*(np.concatenate(f) for f in zip(*rows)))
    rows = [_transition(k) for k in range(3, 7)]
    buf.add(*(np.concatenate(f) for f in zip(*rows)))
    assert buf.ptr == 2 and buf.size == 5
    assert buf.obs[:, 0, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    big = ReplayBuffer(5, 2, 3, 2)  # a batch larger than capacity keeps its newest rows
    rows = [_transition(k) for k in range(8)]
    big.add(*(np.concatenate(f) for f in zip(*rows)))
    assert big.size == 5 and sorted(big.obs[:, 0, 0].tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_replay_buffer_sample_shapes_and_dtypes() -> None:
    buf = ReplayBuffer(50, 2, 3, 2)
    for k in range(20):
        buf.add(*_transition(k))
    b = buf.sample(16, np.random.default_rng(0))
    assert b["obs"].shape == (16, 2, 3) and b["next_obs"].shape == (16, 2, 3)
    assert b["act"].shape == (16, 2, 2) and b["rew"].shape == (16, 2) and b["term"].shape == (16, 2)
    assert all(t.dtype == torch.float32 for t in b.values())
    assert float(b["obs"].max()) <= 19  # only filled slots are sampled (zeros would be k=0 only)
    assert torch.equal(b["rew"][:, 0], 10 * b["obs"][:, 0, 0])
    with pytest.raises(RuntimeError):
        ReplayBuffer(5, 2, 3, 2).sample(1, np.random.default_rng(0))


@pytest.mark.parametrize("n_added", [3, 9])
def test_replay_buffer_state_round_trip(n_added: int) -> None:
    buf = ReplayBuffer(6, 2, 3, 2)
    for k in range(n_added):
        buf.add(*_transition(k))
    rng = np.random.default_rng(42)
    state = buf.state_dict()
    rng_state = rng.bit_generator.state
    fresh = ReplayBuffer(6, 2, 3, 2)
    fresh.load_state_dict(state)
    assert (fresh.ptr, fresh.size) == (buf.ptr, buf.size)
    a = buf.sample(32, rng)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = rng_state
    b = fresh.sample(32, rng2)
    for name in a:
        assert torch.equal(a[name], b[name])
    # further adds land in the same slots
    buf.add(*_transition(100))
    fresh.add(*_transition(100))
    np.testing.assert_array_equal(buf.obs, fresh.obs)


def test_replay_buffer_capacity_mismatch_raises() -> None:
    buf = ReplayBuffer(6, 2, 3, 2)
    buf.add(*_transition(1))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(7, 2, 3, 2).load_state_dict(buf.state_dict())


# --------------------------------------------------------------------------- MADDPG
SPEC = AgentSpec(
    agents=("alice", "bob"), obs_dims=(3, 4), act_dims=(2, 2), discrete=(False, False),
    act_low=np.zeros((2, 2), np.float32), act_high=np.ones((2, 2), np.float32),
)
NUM_ENVS = 4


def _maddpg(**overrides):  # type: ignore[no-untyped-def]
    data = {
        "actor": {"hidden_sizes": [16]},
        "critic": {"hidden_sizes": [16]},
        "maddpg": {"batch_size": 32, "warmup_steps": 0, "update_every": 1, "buffer_size": 1000},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    cfg = RunConfig.model_validate(data)
    fixes = build_fixes(cfg.fixes, NUM_ENVS, SPEC.num_agents, SPEC.max_obs_dim, cfg.maddpg.gamma)
    return agents.make(cfg, SPEC, fixes, GradRecorder())


def _obs(rng: np.random.Generator) -> np.ndarray:
    o = rng.normal(size=(NUM_ENVS, 2, 4)).astype(np.float32)
    o[:, 0, 3] = 0.0  # alice's padding column
    return o


def _fill(algo, steps: int = 10, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    obs = _obs(rng)
    for _ in range(steps):
        act = algo.act(obs, explore=True)
        nxt = _obs(rng)
        rew = rng.normal(size=(NUM_ENVS, 2)).astype(np.float32)
        algo.observe(obs, act, rew, nxt, np.zeros((NUM_ENVS, 2), bool), np.zeros(NUM_ENVS, bool))
        obs = nxt


def test_maddpg_act_shapes_and_determinism() -> None:
    algo = _maddpg()
    obs = _obs(np.random.default_rng(0))
    a1 = algo.act(obs, explore=False)
    a2 = algo.act(obs, explore=False)
    assert a1.shape == (NUM_ENVS, 2, 2) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    assert np.all(a1 >= 0) and np.all(a1 <= 1)
    noisy = algo.act(obs, explore=True)
    assert noisy.shape == a1.shape and not np.array_equal(noisy, a1)


def test_maddpg_bounded_head_keeps_noisy_actions_in_bounds() -> None:
    algo = _maddpg(maddpg__exploration_std=5.0, actor__output="tanh_scaled")
    obs = np.repeat(_obs(np.random.default_rng(0)), 50, axis=0)
    acts = algo.act(obs, explore=True)
    assert np.all(acts >= 0.0) and np.all(acts <= 1.0)
    assert np.mean((acts == 0.0) | (acts == 1.0)) > 0.5  # the noise really pushed most of them to the bounds
    # linear_clip leaves clipping to the env: the same noise leaves the box
    lin = _maddpg(maddpg__exploration_std=5.0, actor__output="linear_clip")
    assert np.any(lin.act(obs, explore=True) > 1.0) and np.any(lin.act(obs, explore=True) < 0.0)


def test_maddpg_warmup_actions_are_uniform_in_bounds() -> None:
    algo = _maddpg(maddpg__warmup_steps=1000)
    acts = algo.act(np.zeros((2000, 2, 4), np.float32), explore=True)
    assert np.all(acts >= 0) and np.all(acts <= 1)
    assert abs(float(acts.mean()) - 0.5) < 0.02 and abs(float(acts.var()) - 1 / 12) < 0.01


def test_maddpg_pending_updates_follow_update_every() -> None:
    algo = _maddpg(maddpg__update_every=2)
    _fill(algo, steps=7)  # 28 transitions: still below batch_size=32
    assert algo.pending_updates() == 0
    _fill(algo, steps=1)  # 32 stored, 4 env steps at one round per 2 steps
    assert algo.pending_updates() == 2
    assert algo.pending_updates() == 0


def test_maddpg_update_stats_and_soft_target_update() -> None:
    algo = _maddpg()
    _fill(algo)
    tau = algo.hp.tau
    online_before = algo.critics[0].mlp.out.weight.detach().clone()
    old_target = algo.target_critics[0].mlp.out.weight.detach().clone()
    old_target_actor = algo.target_actors[1].mlp.hidden[0].linear.weight.detach().clone()
    stats = algo.update().scalars
    names = SPEC.agents
    assert {f"{k}/{n}" for n in names for k in ("loss/critic", "loss/actor", "q/mean")} <= set(stats)
    assert all(math.isfinite(v) for v in stats.values())
    # Gradient norms leave through the events, each network once: backward -> clip -> step, critic first.
    ev = algo.events
    assert set(ev.pre) == set(ev.post) == {f"{k}/{n}" for n in names for k in ("critic", "actor")}
    assert ev.order[:3] == [("after_backward", "critic/alice"), ("after_clip", "critic/alice"),
                            ("after_step", "critic/alice")]
    assert all(math.isfinite(v) and v > 0 for v in ev.pre.values())
    assert stats["health/nonfinite_updates"] == 0.0
    assert algo.updates == 1
    online = algo.critics[0].mlp.out.weight.detach()
    assert not torch.equal(online, online_before)  # the critic did step
    new_target = algo.target_critics[0].mlp.out.weight.detach()
    assert torch.allclose(new_target, old_target + tau * (online - old_target), atol=1e-7)
    online_a = algo.actors[1].mlp.hidden[0].linear.weight.detach()
    new_ta = algo.target_actors[1].mlp.hidden[0].linear.weight.detach()
    assert torch.allclose(new_ta, old_target_actor + tau * (online_a - old_target_actor), atol=1e-7)


def test_maddpg_update_reports_preclip_norm_and_clips() -> None:
    algo = _maddpg()
    algo.fixes.critic_clip = make_clipper(ClipConfig(mode="global_norm", max=1e-3))
    _fill(algo)
    algo.update()
    for n in SPEC.agents:
        assert algo.events.pre[f"critic/{n}"] > 1e-3
        assert algo.events.post[f"critic/{n}"] <= 1e-3 + 1e-6


def test_maddpg_nonfinite_critic_loss_skips_the_critic_step() -> None:
    algo = _maddpg(debug__inject_nonfinite_at_update=1)
    _fill(algo)
    critic_before = [[p.detach().clone() for p in c.parameters()] for c in algo.critics]
    stats = algo.update().scalars
    assert stats["health/nonfinite_updates"] >= 1
    for c, before in zip(algo.critics, critic_before):
        for p, b in zip(c.parameters(), before):
            assert torch.equal(p.detach(), b)
    for opt in algo.critic_opts:
        assert len(opt.state) == 0  # Adam never stepped
    assert all(math.isnan(stats[f"loss/critic/{n}"]) for n in SPEC.agents)
    assert all(torch.isfinite(p).all() for c in algo.critics + algo.actors for p in c.parameters())
