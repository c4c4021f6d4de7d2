"""Batched agents (maddpg.batched_agents): stacked forwards equal per-agent forwards, and one update with the
agents batched equals one update of the per-agent loop from the same state."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from marl_stability.agents.maddpg import AgentSpec
from marl_stability.agents.networks import (
    Actor,
    ActorStack,
    Critic,
    CriticStack,
    MLPStack,
)

from marl_stability import agents
from marl_stability.config import RunConfig, load_config
from marl_stability.errors import UserError
from marl_stability.fixes.objects import build_fixes

N, OBS, ACT, B = 3, 4, 2, 32
LOW = torch.tensor([-1.0, 0.0])
HIGH = torch.tensor([1.0, 2.0])


def _actors(norm: str, residual: bool, activation: str, output: str, discrete: bool) -> list[Actor]:
    # Per-agent bounds differ, so the stacked head must use each agent's own.
    return [Actor(OBS, ACT, discrete, [8, 8], activation, norm, residual, "default", None, output,
                  LOW * (i + 1), HIGH * (i + 1)) for i in range(N)]


@pytest.mark.parametrize("norm,residual,activation", list(itertools.product(
    ["none", "layernorm"], [False, True], ["relu", "leaky_relu", "elu", "gelu", "tanh"])))
def test_stacked_actors_equal_per_agent_actors(norm: str, residual: bool, activation: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(N, B, OBS) * 3
    for output, discrete in [("linear_clip", False), ("softsign", False), ("softsign_scaled", False), ("tanh", False),
                             ("tanh_scaled", False), ("auto", True)]:
        actors = _actors(norm, residual, activation, output, discrete)
        for a in actors:  # non-trivial LayerNorm affine parameters
            for p in a.parameters():
                p.data.add_(0.1 * torch.randn_like(p))
        action, pre = ActorStack(actors)(x)
        for i, a in enumerate(actors):
            ai, pi = a(x[i])
            assert torch.allclose(action[i], ai, atol=1e-6), (output, i)
            assert torch.allclose(pre[i], pi, atol=1e-6), (output, i)


@pytest.mark.parametrize("norm,residual", list(itertools.product(["none", "layernorm"], [False, True])))
def test_stacked_critics_equal_per_agent_critics_and_gradients_stay_with_their_agent(norm: str, residual: bool) -> None:
    torch.manual_seed(1)
    in_dim = 8  # == hidden width: the first layer is residual too when residual=True
    critics = [Critic(in_dim, [8, 8], "relu", norm, residual, "default", None) for _ in range(N)]
    stack = CriticStack(critics)
    obs, act = torch.randn(B, 5), torch.randn(B, 3)
    shared = stack(torch.cat([obs, act], dim=-1))  # [B, in] is shared by every agent
    per_agent = torch.randn(N, B, in_dim)
    q = stack(per_agent)
    for i, c in enumerate(critics):
        assert torch.allclose(shared[i], c(obs, act), atol=1e-6)
        assert torch.allclose(q[i], c(per_agent[i, :, :5], per_agent[i, :, 5:]), atol=1e-6)
    # The sum of the agents' losses gives each agent the gradient of its own loss alone.
    losses = (q ** 2).mean(dim=1) * torch.arange(1, N + 1)
    losses.sum().backward()
    stacked_grads = [[p.grad.clone() for p in c.parameters()] for c in critics]
    for i, c in enumerate(critics):
        c.zero_grad(set_to_none=True)
        ((c(per_agent[i, :, :5], per_agent[i, :, 5:]) ** 2).mean() * (i + 1)).backward()
        for p, g in zip(c.parameters(), stacked_grads[i]):
            assert torch.allclose(p.grad, g, atol=1e-6)
    # One agent's loss reaches only that agent's parameters.
    for c in critics:
        c.zero_grad(set_to_none=True)
    stack(per_agent)[1].sum().backward()
    for i, c in enumerate(critics):
        nonzero = sum(int(torch.count_nonzero(p.grad)) for p in c.parameters())
        assert (nonzero > 0) == (i == 1)


def test_batchnorm_networks_cannot_be_stacked() -> None:
    critics = [Critic(6, [8], "relu", "batchnorm", False, "default", None) for _ in range(2)]
    with pytest.raises(ValueError, match="BatchNorm"):
        MLPStack([c.mlp for c in critics])


# --------------------------------------------------------------------------- one update, batched vs loop
SPEC = AgentSpec(agents=("a", "b", "c"), obs_dims=(OBS,) * N, act_dims=(ACT,) * N, discrete=(False,) * N,
                 act_low=np.zeros((N, ACT), np.float32), act_high=np.ones((N, ACT), np.float32))
DISCRETE_SPEC = AgentSpec(agents=("a", "b", "c"), obs_dims=(OBS,) * N, act_dims=(3,) * N, discrete=(True,) * N,
                          act_low=np.zeros((N, 3), np.float32), act_high=np.ones((N, 3), np.float32))
NUM_ENVS = 4


def _algo(spec: AgentSpec, batched: str, data: dict | None = None):  # type: ignore[no-untyped-def]
    base = {"actor": {"hidden_sizes": [16, 16]}, "critic": {"hidden_sizes": [16, 16]},
            "maddpg": {"batch_size": 64, "warmup_steps": 0, "update_every": 1, "buffer_size": 1000}}
    for section, values in (data or {}).items():
        base.setdefault(section, {}).update(values)
    base["maddpg"]["batched_agents"] = batched
    cfg = RunConfig.model_validate(base)
    fixes = build_fixes(cfg.fixes, NUM_ENVS, spec.num_agents, spec.max_obs_dim, cfg.maddpg.gamma)
    return agents.make(cfg, spec, fixes)


def _fill(algo, steps: int = 20) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    n, d = algo.spec.num_agents, algo.spec.max_obs_dim
    obs = rng.normal(size=(NUM_ENVS, n, d)).astype(np.float32)
    for _ in range(steps):
        act = algo.act(obs, explore=True)
        nxt = rng.normal(size=(NUM_ENVS, n, d)).astype(np.float32)
        algo.observe(obs, act, rng.normal(size=(NUM_ENVS, n)).astype(np.float32), nxt,
                     rng.random((NUM_ENVS, n)) < 0.1, np.zeros(NUM_ENVS, bool))
        obs = nxt


def _pair(spec: AgentSpec, data: dict | None = None):  # type: ignore[no-untyped-def]
    on, off = _algo(spec, "on", data), _algo(spec, "off", data)
    assert on.batched and not off.batched
    _fill(on)
    off.load_state_dict(on.state_dict())  # identical networks, optimizers, buffer and RNG states
    return on, off


def _assert_same_networks(on, off, atol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    for group in ("actors", "critics", "target_actors", "target_critics"):
        for m_on, m_off in zip(getattr(on, group), getattr(off, group)):
            for (name, p), q in zip(m_on.named_parameters(), m_off.parameters()):
                assert torch.allclose(p, q, atol=atol, equal_nan=True), (group, name, (p - q).abs().max())


def _assert_same_stats(s_on: dict, s_off: dict) -> None:
    assert list(s_on) == list(s_off)
    for k in s_on:
        a, b = s_on[k], s_off[k]
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (k, a, b)


CASES = {
    "default": (SPEC, None),
    "layernorm_residual_huber_penalty": (SPEC, {
        "actor": {"norm": "layernorm", "residual": True, "activation": "tanh", "output": "softsign_scaled"},
        # critic input 3*4 + 3*2 = 18 == width: the critic's first layer is residual as well
        "critic": {"hidden_sizes": [18, 18], "norm": "layernorm", "residual": True, "activation": "elu"},
        "maddpg": {"critic_loss": "huber"},
        "fixes": {"actor_preact_l2": 1e-2, "grad_clip": {"actor": {"mode": "per_tensor", "max": 0.5},
                                                         "critic": {"mode": "global_norm", "max": 0.5}}},
        "actor_optim": {"name": "rmsprop"}, "critic_optim": {"name": "sgd", "momentum": 0.9},
    }),
    "linear_clip": (SPEC, {"actor": {"output": "linear_clip"}}),
    "discrete": (DISCRETE_SPEC, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_update_equals_per_agent_update(case: str) -> None:
    spec, data = CASES[case]
    on, off = _pair(spec, data)
    for _ in range(3):
        _assert_same_stats(on.update().scalars, off.update().scalars)
        _assert_same_networks(on, off)
    obs = np.random.default_rng(5).normal(size=(NUM_ENVS, N, OBS)).astype(np.float32)
    for explore in (False, True):  # acting draws the same random numbers in the same order
        np.testing.assert_allclose(on.act(obs, explore), off.act(obs, explore), atol=1e-5)
    q_on, q_off = on.q_values(obs), off.q_values(obs)  # the evaluation's Q(s0, mu(s0)), stacked vs per agent
    assert q_on.shape == (NUM_ENVS, N)
    np.testing.assert_allclose(q_on, q_off, rtol=1e-5, atol=1e-5)
    # Same checkpoint layout either way.
    assert on.state_dict().keys() == off.state_dict().keys()
    assert on.state_dict()["actors"][0].keys() == off.state_dict()["actors"][0].keys()


def test_a_nonfinite_agent_is_skipped_alone_in_the_batched_update() -> None:
    on, off = _pair(SPEC)
    for algo in (on, off):  # agent b's targets are NaN: its critic loss is NaN, the others' are not
        with torch.no_grad():
            algo.target_critics[1].mlp.out.bias.fill_(float("nan"))
    before = [p.detach().clone() for p in on.critics[1].parameters()]
    u_on, u_off = on.update(), off.update()
    s_on, s_off = u_on.scalars, u_off.scalars
    _assert_same_stats(s_on, s_off)
    assert s_on["health/nonfinite_updates"] == 1.0 and math.isnan(s_on["loss/critic/b"])
    assert math.isfinite(s_on["loss/critic/a"]) and math.isfinite(s_on["loss/actor/b"])
    for p, b in zip(on.critics[1].parameters(), before):
        assert torch.equal(p.detach(), b)
    assert u_on.nonfinite == u_off.nonfinite == 1
    assert u_on.evidence["model"] == u_off.evidence["model"] == "critic/b"
    for group in ("actors", "critics"):
        for m_on, m_off in zip(getattr(on, group), getattr(off, group)):
            for p, q in zip(m_on.parameters(), m_off.parameters()):
                assert torch.allclose(p, q, atol=1e-5)


def test_injected_nonfinite_skips_every_critic_in_the_batched_update() -> None:
    algo = _algo(SPEC, "on", {"debug": {"inject_nonfinite_at_update": 1}})
    _fill(algo)
    before = [[p.detach().clone() for p in c.parameters()] for c in algo.critics]
    update = algo.update()
    stats = update.scalars
    assert stats["health/nonfinite_updates"] == N == update.nonfinite
    for c, ps in zip(algo.critics, before):
        assert all(torch.equal(p.detach(), b) for p, b in zip(c.parameters(), ps))
    assert all(len(opt.state) == 0 for opt in algo.critic_opts)
    assert all(len(opt.state) > 0 for opt in algo.actor_opts)
    assert update.evidence["model"] == "critic/a" and update.evidence["what"] == "loss"


# --------------------------------------------------------------------------- when batching is (im)possible
HETERO = AgentSpec(agents=("x", "y"), obs_dims=(3, 4), act_dims=(2, 2), discrete=(False, False),
                   act_low=np.zeros((2, 2), np.float32), act_high=np.ones((2, 2), np.float32))


@pytest.mark.parametrize("spec,data,reason", [
    (HETERO, None, "observation sizes"),
    (SPEC, {"critic": {"norm": "batchnorm"}}, "BatchNorm"),
    (SPEC, {"actor": {"norm": "batchnorm"}}, "BatchNorm"),
])
def test_auto_falls_back_and_on_is_a_user_error(spec: AgentSpec, data: dict | None, reason: str) -> None:
    algo = _algo(spec, "auto", data)
    assert not algo.batched and reason in algo.batching_obstacle()
    _fill(algo)
    assert math.isfinite(algo.update().scalars["loss/critic/" + spec.agents[0]])  # the per-agent loop still works
    with pytest.raises(UserError, match="batched_agents=on.*" + reason):
        _algo(spec, "on", data)


def test_speaker_listener_falls_back_to_the_per_agent_loop() -> None:
    from marl_stability.envs.factory import make_vector_env

    venv = make_vector_env("simple_speaker_listener_v4", {"continuous_actions": False}, 1, 0)
    try:
        spec = venv.layout
    finally:
        venv.close()
    cfg = RunConfig.model_validate({"env": {"id": "simple_speaker_listener_v4"}})
    fixes = build_fixes(cfg.fixes, 1, spec.num_agents, spec.max_obs_dim, cfg.maddpg.gamma)
    assert not agents.make(cfg, spec, fixes).batched
    on = RunConfig.model_validate({"env": {"id": "simple_speaker_listener_v4"}, "maddpg": {"batched_agents": "on"}})
    with pytest.raises(UserError, match="batched_agents=on"):
        agents.make(on, spec, fixes)


def test_batched_agents_config_accepts_yaml_on_off() -> None:
    assert load_config(None, ["maddpg.batched_agents=on"]).maddpg.batched_agents == "on"
    assert load_config(None, ["maddpg.batched_agents=off"]).maddpg.batched_agents == "off"
    assert RunConfig().maddpg.batched_agents == "auto"  # the published results were measured with it
    with pytest.raises(UserError, match="batched_agents"):
        load_config(None, ["maddpg.batched_agents=sometimes"])
