"""The defining property of each stability fix in ``marl_stability.fixes`` (plus the small last-layer init)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from marl_stability.agents.networks import MLP
from torch import nn

from marl_stability.config import ClipConfig, FixesConfig, ObsNormConfig
from marl_stability.fixes.objects import (
    ClipStats,
    GlobalNormClip,
    GradClipper,
    IdentityObs,
    ObsNormalizer,
    PerTensorClip,
    PreactivationPenalty,
    ReturnNormalizer,
    RewardScale,
    RewardTransform,
    ValueClip,
    build_fixes,
    make_clipper,
)

# float(parameter) in assertions is intended
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")

# --------------------------------------------------------------------------- helpers
def _model_with_large_grads(seed: int = 0) -> tuple[nn.Module, list[nn.Parameter]]:
    """A small MLP after one backward pass of a loss scaled so that every gradient is large."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    loss = (1e3 * model(x) - 1e4).pow(2).mean()
    loss.backward()
    return model, list(model.parameters())


def _global_norm(grads: list[torch.Tensor]) -> float:
    """Independent global L2 norm: sqrt of the sum of all squared components (float64)."""
    return float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))


def _grads(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in params]


# --------------------------------------------------------------------------- gradient clipping
def test_global_norm_clip_bounds_norm_and_preserves_direction() -> None:
    _, params = _model_with_large_grads()
    before = _grads(params)
    pre = _global_norm(before)
    assert pre > 100.0  # the test really has large gradients
    clipper = make_clipper(ClipConfig(mode="global_norm", max=0.5))
    assert isinstance(clipper, GlobalNormClip)
    stats = clipper(params)
    after = _grads(params)
    post = _global_norm(after)
    assert post <= 0.5 + 1e-6
    assert post == pytest.approx(0.5, rel=1e-4)  # rescaled to the bound, not below it
    flat_b, flat_a = torch.cat([g.flatten() for g in before]), torch.cat([g.flatten() for g in after])
    cos = float(torch.nn.functional.cosine_similarity(flat_b.double(), flat_a.double(), dim=0))
    assert cos == pytest.approx(1.0, abs=1e-6)
    # every tensor was scaled by the same factor
    ratios = [float(a.norm() / b.norm()) for a, b in zip(after, before)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-4)
    assert isinstance(stats, ClipStats)
    assert stats.pre_norm == pytest.approx(pre, rel=1e-5)
    assert stats.post_norm == pytest.approx(post, rel=1e-5)
    assert stats.clipped is True


def test_global_norm_clip_below_max_is_a_no_op() -> None:
    _, params = _model_with_large_grads()
    factor = 0.5 / _global_norm(_grads(params))
    for p in params:
        p.grad.mul_(factor)
    before = _grads(params)
    pre = _global_norm(before)
    assert pre < 1.0
    stats = make_clipper(ClipConfig(mode="global_norm", max=1.0))(params)
    assert stats.clipped is False
    assert stats.pre_norm == pytest.approx(pre, rel=1e-5)
    assert stats.post_norm == stats.pre_norm
    for a, b in zip(_grads(params), before):
        assert torch.equal(a, b)


def test_per_tensor_clip_bounds_each_tensor_and_keeps_small_ones() -> None:
    _, params = _model_with_large_grads()
    params[-1].grad = torch.full_like(params[-1], 0.01)  # one tensor already below the bound
    before = _grads(params)
    clipper = make_clipper(ClipConfig(mode="per_tensor", max=0.5))
    assert isinstance(clipper, PerTensorClip)
    stats = clipper(params)
    after = _grads(params)
    for a, b in zip(after, before):
        assert float(a.norm()) <= 0.5 + 1e-6
        if float(b.norm()) > 0.5:
            assert float(a.norm()) == pytest.approx(0.5, rel=1e-4)
            cos = float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
            assert cos == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(after[-1], before[-1])
    # unlike global-norm clipping the global norm may exceed max: up to sqrt(#tensors) * max
    assert _global_norm(after) <= 0.5 * math.sqrt(len(params)) + 1e-6
    assert stats.clipped is True
    assert stats.pre_norm == pytest.approx(_global_norm(before), rel=1e-5)
    assert stats.post_norm == pytest.approx(_global_norm(after), rel=1e-5)


def test_value_clip_bounds_every_component() -> None:
    _, params = _model_with_large_grads()
    before = _grads(params)
    clipper = make_clipper(ClipConfig(mode="value", max=0.25))
    assert isinstance(clipper, ValueClip)
    stats = clipper(params)
    after = _grads(params)
    for a, b in zip(after, before):
        assert float(a.abs().max()) <= 0.25
        assert torch.equal(a, b.clamp(-0.25, 0.25))  # independent computation of the clipped values
    assert stats.clipped is True
    assert stats.pre_norm == pytest.approx(_global_norm(before), rel=1e-5)
    assert stats.post_norm == pytest.approx(_global_norm(after), rel=1e-5)


def test_value_clip_not_clipped_when_all_components_small() -> None:
    _, params = _model_with_large_grads()
    for p in params:
        p.grad = torch.full_like(p, 0.1)
    stats = make_clipper(ClipConfig(mode="value", max=0.25))(params)
    assert stats.clipped is False
    assert all(torch.equal(p.grad, torch.full_like(p, 0.1)) for p in params)


def test_none_clipper_leaves_grads_untouched_and_measures() -> None:
    _, params = _model_with_large_grads()
    before = _grads(params)
    clipper = make_clipper(ClipConfig(mode="none", max=0.5))  # max is ignored for mode=none
    assert type(clipper) is GradClipper
    stats = clipper(params)
    for a, b in zip(_grads(params), before):
        assert torch.equal(a, b)
    assert stats.clipped is False
    indep = float(torch.sqrt(sum(g.pow(2).sum() for g in before)))
    assert stats.pre_norm == pytest.approx(indep, rel=1e-5)
    assert stats.post_norm == stats.pre_norm


def test_clipper_with_no_gradients_reports_zero() -> None:
    model = nn.Linear(3, 2)
    stats = make_clipper(ClipConfig(mode="global_norm", max=1.0))(list(model.parameters()))
    assert stats.pre_norm == 0.0 and stats.post_norm == 0.0 and stats.clipped is False


@pytest.mark.filterwarnings("ignore:`parameters` is an empty generator")
def test_clipper_accepts_a_parameter_generator() -> None:
    model, params = _model_with_large_grads()
    stats = make_clipper(ClipConfig(mode="global_norm", max=0.5))(model.parameters())
    assert _global_norm(_grads(params)) <= 0.5 + 1e-6
    assert stats.post_norm == pytest.approx(_global_norm(_grads(params)), rel=1e-5)


# --------------------------------------------------------------------------- observation normalization
def _obs_batch(n: int = 3000, seed: int = 0) -> np.ndarray:
    """[n, 2 agents, 4] ~ N(5, 3) per feature; agent 1 has 3 real features and one zero padding column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 3.0, size=(n, 2, 4))
    x[:, 1, 3] = 0.0
    return x.astype(np.float32)


def _fed_normalizer(x: np.ndarray, clip: float = 10.0) -> ObsNormalizer:
    norm = ObsNormalizer(2, 4, ObsNormConfig(enabled=True, clip=clip))
    for chunk in np.split(x, [1, 1000, 1500]):  # uneven chunks, one of a single sample (zero variance)
        norm.update(chunk)
    return norm


def test_obs_normalizer_running_stats_match_numpy_over_all_chunks() -> None:
    x = _obs_batch()
    norm = _fed_normalizer(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(norm.rms.mean, x64.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.rms.var, x64.var(axis=0), rtol=1e-5, atol=1e-6)
    assert norm.rms.count == pytest.approx(len(x), abs=1e-3)


def test_obs_normalizer_output_is_standardized_per_agent_and_feature() -> None:
    x = _obs_batch()
    norm = _fed_normalizer(x)
    out = norm(torch.from_numpy(x)).double()
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    real = torch.ones(2, 4, dtype=torch.bool)
    real[1, 3] = False
    mean, std = out.mean(dim=0), out.std(dim=0, unbiased=False)
    # stats equal the batch's own mean/var, so only float32 rounding separates them from 0 and 1
    assert float(mean[real].abs().max()) < 1e-4
    assert float((std[real] - 1.0).abs().max()) < 1e-4
    # padding column: zero variance, stays exactly zero and finite
    assert torch.equal(out[:, 1, 3], torch.zeros(len(x), dtype=torch.float64))


def test_obs_normalizer_clips() -> None:
    x = _obs_batch()
    norm = _fed_normalizer(x, clip=2.0)
    far = torch.from_numpy(x[:10].copy())
    far[:, 0, 0] = 1e6
    far[:, 0, 1] = -1e6
    out = norm(far)
    assert float(out.abs().max()) <= 2.0
    assert torch.all(out[:, 0, 0] == 2.0) and torch.all(out[:, 0, 1] == -2.0)


def test_obs_normalizer_state_round_trip_is_exact_and_weights_only_loadable() -> None:
    x = _obs_batch()
    norm = _fed_normalizer(x)
    buf = io.BytesIO()
    torch.save(norm.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = ObsNormalizer(2, 4, ObsNormConfig(enabled=True))
    probe = torch.from_numpy(_obs_batch(50, seed=1))
    assert not torch.equal(fresh(probe), norm(probe))
    fresh.load_state_dict(state)
    assert torch.equal(fresh(probe), norm(probe))
    # and both keep evolving identically
    more = _obs_batch(77, seed=2)
    fresh.update(more)
    norm.update(more)
    assert torch.equal(fresh(probe), norm(probe))


def test_identity_obs_is_identity() -> None:
    t = torch.randn(5, 2, 4) * 1e3
    ident = IdentityObs()
    ident.update(t.numpy())
    assert ident(t) is t
    assert ident.state_dict() == {}


# --------------------------------------------------------------------------- reward transforms
def test_reward_scale_multiplies() -> None:
    r = torch.randn(32, 3)
    tf = RewardScale(0.1)
    assert torch.allclose(tf(r), r * 0.1)
    assert tf.scale() == 0.1


def _return_stream(seed: int = 0, steps: int = 1500, num_envs: int = 3, num_agents: int = 2):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(1.0, 2.0, size=(steps, num_envs, num_agents))
    dones = rng.random((steps, num_envs)) < 0.05
    return rewards, dones


def test_return_normalizer_std_equals_independent_discounted_return_std() -> None:
    gamma = 0.9
    rewards, dones = _return_stream()
    rn = ReturnNormalizer(num_envs=3, num_agents=2, gamma=gamma, clip=5.0)
    for r, d in zip(rewards, dones):
        rn.update(r, d)
    # independent: the discounted return of every (env, agent), reset after an episode's last reward
    g = np.zeros((3, 2))
    seen = []
    for r, d in zip(rewards, dones):
        g = gamma * g + r
        seen.append(g.copy())
        g[d] = 0.0
    seen_arr = np.concatenate(seen, axis=0)  # [steps*envs, agents]
    expected_std = seen_arr.std(axis=0)
    np.testing.assert_allclose(np.sqrt(rn.rms.var), expected_std, rtol=1e-5)
    np.testing.assert_allclose(rn.returns, g, rtol=1e-12, atol=1e-12)
    assert rn.scale() == pytest.approx(1.0 / expected_std.mean(), rel=1e-5)
    # normalized output: r / std, clipped to +-clip
    r = torch.tensor([[0.5, -1.0], [1e4, -1e4], [0.0, 3.0]], dtype=torch.float32)
    out = rn(r)
    expected = np.clip(r.numpy() / expected_std[None, :], -5.0, 5.0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(out.abs().max()) <= 5.0


def test_return_normalizer_state_round_trip() -> None:
    rewards, dones = _return_stream(seed=3, steps=400)
    a = ReturnNormalizer(3, 2, 0.95, 10.0)
    for r, d in zip(rewards[:200], dones[:200]):
        a.update(r, d)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ReturnNormalizer(3, 2, 0.95, 10.0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    probe = torch.randn(8, 2)
    assert torch.equal(a(probe), b(probe))
    for r, d in zip(rewards[200:], dones[200:]):  # the in-flight returns were restored too
        a.update(r, d)
        b.update(r, d)
    assert torch.equal(a(probe), b(probe))
    np.testing.assert_array_equal(a.returns, b.returns)


def test_identity_reward_transform() -> None:
    r = torch.randn(4, 3)
    tf = RewardTransform()
    assert torch.equal(tf(r), r) and tf.scale() == 1.0


# --------------------------------------------------------------------------- pre-activation penalty
def test_preactivation_penalty_equals_coef_mean_square() -> None:
    x = torch.randn(64, 5, dtype=torch.float64, requires_grad=True) * 3
    x.retain_grad()
    pen = PreactivationPenalty(1e-3)(x)
    assert float(pen.detach()) == pytest.approx(1e-3 * float(np.mean(x.detach().numpy() ** 2)), rel=1e-12)
    pen.backward()
    assert torch.allclose(x.grad, 2e-3 * x.detach() / x.numel())


def test_preactivation_penalty_zero_coef_is_exactly_zero() -> None:
    x = torch.full((8, 2), 1e30)
    pen = PreactivationPenalty(0.0)(x)
    assert pen.shape == () and float(pen) == 0.0


# --------------------------------------------------------------------------- small last-layer init
@pytest.mark.parametrize("s", [0.01, 3e-3])
def test_small_last_layer_init_bounds_out_layer_only(s: float) -> None:
    torch.manual_seed(123)
    small = MLP(10, 3, [32, 32], last_layer_init=s)
    torch.manual_seed(123)
    default = MLP(10, 3, [32, 32])
    for p in (small.out.weight, small.out.bias):
        assert float(p.abs().max()) <= s
        assert float(p.abs().max()) > s / 4  # U(-s, s) fills the range, not zeros
    assert float(default.out.weight.abs().max()) > 10 * s  # the default would be far larger
    # hidden layers are untouched: identical to the same-seed default MLP, with PyTorch's default scale
    for hs, hd in zip(small.hidden, default.hidden):
        assert torch.equal(hs.linear.weight, hd.linear.weight)
        assert torch.equal(hs.linear.bias, hd.linear.bias)
        bound = 1.0 / math.sqrt(hs.linear.in_features)
        assert float(hs.linear.weight.abs().max()) <= bound
        assert float(hs.linear.weight.abs().max()) > bound / 2


# --------------------------------------------------------------------------- build_fixes
def test_build_fixes_defaults_are_all_off() -> None:
    f = build_fixes(FixesConfig(), num_envs=2, num_agents=3, obs_dim=18, gamma=0.95)
    assert type(f.actor_clip) is GradClipper and type(f.critic_clip) is GradClipper
    assert f.actor_clip.max_value == math.inf
    assert isinstance(f.obs, IdentityObs)
    assert type(f.reward) is RewardTransform
    assert isinstance(f.preact_penalty, PreactivationPenalty) and f.preact_penalty.coef == 0.0


def test_build_fixes_wires_every_setting() -> None:
    cfg = FixesConfig.model_validate({
        "grad_clip": {"actor": {"mode": "per_tensor", "max": 0.5}, "critic": {"mode": "value", "max": 2.0}},
        "obs_norm": {"enabled": True, "clip": 4.0, "eps": 1e-6},
        "reward": {"mode": "normalize", "clip": 3.0},
        "actor_preact_l2": 1e-3,
    })
    f = build_fixes(cfg, num_envs=2, num_agents=3, obs_dim=18, gamma=0.9)
    assert isinstance(f.actor_clip, PerTensorClip) and f.actor_clip.max_value == 0.5
    assert isinstance(f.critic_clip, ValueClip) and f.critic_clip.max_value == 2.0
    assert isinstance(f.obs, ObsNormalizer)
    assert f.obs.rms.mean.shape == (3, 18) and f.obs.clip == 4.0 and f.obs.eps == 1e-6
    assert isinstance(f.reward, ReturnNormalizer)
    assert f.reward.returns.shape == (2, 3) and f.reward.gamma == 0.9 and f.reward.clip == 3.0
    assert f.preact_penalty.coef == 1e-3

    g = build_fixes(FixesConfig.model_validate({"grad_clip": {"actor": {"mode": "global_norm", "max": 1.0}},
                                                 "reward": {"mode": "scale", "scale": 0.1}}), 1, 2, 4, 0.95)
    assert isinstance(g.actor_clip, GlobalNormClip) and type(g.critic_clip) is GradClipper
    assert isinstance(g.reward, RewardScale) and g.reward.factor == 0.1
