"""Online failure detectors on synthetic metric streams, and diagnose_policy on hand-built policies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from marl_stability.hooks.detectors import (
    ActionCollapseDetector,
    DegradationDetector,
    DetectorConfig,
    Detectors,
    GradientExplosionDetector,
    NonFiniteDetector,
    action_sensitivity,
    batch_same_action_rate,
    diagnose_policy,
    saturation_fraction,
)


def _stream(n: int = 2000, seed: int = 0) -> list[float]:
    """Healthy gradient norms: lognormal noise around 5."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in 5.0 * np.exp(rng.normal(0.0, 0.3, size=n))]


# --------------------------------------------------------------------------- explosion
def test_explosion_flat_stream_never_fires() -> None:
    det = GradientExplosionDetector()
    assert not any(det.update(v, i) for i, v in enumerate(_stream()))
    assert det.first_step is None and det.message is None


def test_explosion_jump_fires_exactly_at_jump_once() -> None:
    s = _stream()
    s[1200:] = [500.0] * (len(s) - 1200)
    det = GradientExplosionDetector()
    fired = [i for i, v in enumerate(s) if det.update(v, i)]
    assert fired == [1200]
    assert det.first_step == 1200
    assert det.message is not None and "500" in det.message and "median" in det.message
    # Later calls, even larger, return False and leave first_step alone.
    assert not det.update(1e9, 5000)
    assert det.first_step == 1200


def test_explosion_absolute_bound_fires_without_history() -> None:
    det = GradientExplosionDetector(absolute=1e4)
    assert not det.update(9e3, 0)
    assert det.update(2e4, 1)
    assert det.first_step == 1 and "absolute" in str(det.message)


def test_explosion_ignores_nonfinite() -> None:
    det = GradientExplosionDetector(min_history=5, window=10)
    for i in range(10):
        assert not det.update(5.0, i)
    for i, v in enumerate([math.nan, math.inf, -math.inf]):
        assert not det.update(v, 10 + i)
    assert det.median() == 5.0 and len(det.history) == 10  # NaN/Inf did not enter the window
    assert det.update(51.0, 20) and det.first_step == 20


def test_explosion_not_armed_before_min_history() -> None:
    det = GradientExplosionDetector(min_history=20)
    for i in range(19):
        det.update(1.0, i)
    assert not det.update(100.0, 19)  # only 19 values seen: not armed yet (and 100 joins the history)


def test_explosion_state_round_trip_fires_at_same_step() -> None:
    s = _stream(seed=3)
    s[1500] = 1000.0
    ref = GradientExplosionDetector()
    ref_step = next(i for i, v in enumerate(s) if ref.update(v, i))

    first = GradientExplosionDetector()
    for i, v in enumerate(s[:700]):
        assert not first.update(v, i)
    state = json.loads(json.dumps(first.state_dict()))  # plain python only: survives JSON exactly
    resumed = GradientExplosionDetector()
    resumed.load_state_dict(state)
    got = next(i for i, v in enumerate(s[700:], start=700) if resumed.update(v, i))
    assert got == ref_step == 1500


def test_growth_rule_fires_on_a_slow_climb_the_running_median_follows() -> None:
    """A norm climbing 1.5% per update (x100 in ~310 updates) never jumps 10x over its running median of 100,
    so the median rule stays silent; the growth rule fires at the first norm above 100 x its early level."""
    climb = [5.0 * 1.015 ** i for i in range(400)]
    median = GradientExplosionDetector(rule="median_ratio")
    assert not any(median.update(v, i) for i, v in enumerate(climb))
    growth = GradientExplosionDetector(ratio=100.0, rule="growth", baseline=20)
    fired = [i for i, v in enumerate(climb) if growth.update(v, i)]
    early = float(np.median(climb[:20]))
    assert growth.early_level() == pytest.approx(early)
    assert fired == [next(i for i, v in enumerate(climb) if v > 100.0 * early)]
    assert "early level" in str(growth.message) and "first 20 norms" in str(growth.message)


def test_growth_rule_healthy_noise_and_min_norm() -> None:
    """Lognormal noise around a flat level never reaches 100x; a tiny actor gradient growing 100x stays below
    min_norm; nothing fires before the early level exists, except the absolute bound."""
    det = GradientExplosionDetector(ratio=100.0, rule="growth", baseline=20)
    assert not any(det.update(v, i) for i, v in enumerate(_stream()))
    tiny = GradientExplosionDetector(ratio=100.0, rule="growth", baseline=5, min_norm=10.0)
    for i in range(5):
        assert not tiny.update(1e-3, i)
    assert not tiny.update(0.5, 5)  # 500x the early level, but below min_norm
    assert tiny.update(20.0, 6)
    early = GradientExplosionDetector(ratio=100.0, rule="growth", baseline=20, absolute=1e4)
    assert not early.update(1.0, 0) and not early.update(5e3, 1)  # no early level yet: only the bound applies
    assert early.update(2e4, 2) and "absolute" in str(early.message)


def test_growth_rule_state_round_trip_and_config() -> None:
    climb = [3.0 * 1.02 ** i for i in range(400)]
    ref = GradientExplosionDetector(ratio=50.0, rule="growth")
    ref_step = next(i for i, v in enumerate(climb) if ref.update(v, i))
    first = GradientExplosionDetector(ratio=50.0, rule="growth")
    for i, v in enumerate(climb[:10]):  # stop while the early level is still being collected
        first.update(v, i)
    resumed = GradientExplosionDetector(ratio=50.0, rule="growth")
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert next(i for i, v in enumerate(climb[10:], start=10) if resumed.update(v, i)) == ref_step
    d = Detectors(DetectorConfig(explosion_rule="growth", explosion_growth=50.0))
    assert next(i for i, v in enumerate(climb) if d.update_grad_norm("critic/agent_0", v, i)) == ref_step
    with pytest.raises(ValueError):
        GradientExplosionDetector(rule="slope")
    with pytest.raises(ValueError):
        DetectorConfig(explosion_rule="slope")


def test_resuming_a_checkpoint_from_before_the_growth_rule_keeps_the_median_rule() -> None:
    """An old checkpoint's explosion state has no early norms: the resumed detector keeps the median rule (and
    its ratio) instead of rebuilding a baseline from norms that may already have grown."""
    s = _stream(seed=4)
    s[900] = 100.0  # 20x the running median: the median rule fires, the growth rule (100x) would not
    old = Detectors(DetectorConfig(explosion_rule="median_ratio"))
    for i, v in enumerate(s[:500]):
        old.update_grad_norm("critic/agent_0", v, i)
    state = json.loads(json.dumps(old.state_dict()))
    del state["explosion"]["critic/agent_0"]["early"]  # what an older version wrote
    resumed = Detectors(DetectorConfig())  # today's default: growth
    resumed.load_state_dict(state)
    assert resumed.explosion["critic/agent_0"].rule == "median_ratio"
    assert next(i for i, v in enumerate(s[500:], start=500) if resumed.update_grad_norm("critic/agent_0", v, i)) == 900
    fresh = Detectors(DetectorConfig())
    fresh.load_state_dict(json.loads(json.dumps(old.state_dict())))  # a current checkpoint keeps the config's rule
    assert fresh.explosion["critic/agent_0"].rule == "growth"


# --------------------------------------------------------------------------- collapse on streams
COLLAPSED = (1.0, 0.98, 1e-6)  # repeat, saturation, sensitivity
HEALTHY = (0.05, 0.1, 0.8)


def test_collapse_fires_after_patience_with_onset_step() -> None:
    det = ActionCollapseDetector()
    steps = [100, 200, 300, 400, 500]
    evals = [HEALTHY, COLLAPSED, COLLAPSED, COLLAPSED, COLLAPSED]
    fired = [st for st, e in zip(steps, evals) if det.update(*e, step=st)]
    assert fired == [400]  # confirmed on the third consecutive collapsed evaluation...
    assert det.first_step == 200  # ...dated to the first of them
    assert "since step 200" in str(det.message)


def test_collapse_interrupted_streak_does_not_fire() -> None:
    det = ActionCollapseDetector()
    evals = [COLLAPSED, COLLAPSED, HEALTHY, COLLAPSED, COLLAPSED]
    assert not any(det.update(*e, step=i * 100) for i, e in enumerate(evals))
    assert det.first_step is None


def test_collapse_saturated_repetitive_but_sensitive_never_fires() -> None:
    det = ActionCollapseDetector()
    assert not any(det.update(1.0, 0.99, 0.5, step=i) for i in range(50))


def test_collapse_small_init_unsaturated_never_fires() -> None:
    det = ActionCollapseDetector()
    assert not any(det.update(1.0, 0.1, 1e-5, step=i) for i in range(50))


def test_collapse_state_round_trip_mid_streak() -> None:
    det = ActionCollapseDetector()
    det.update(*COLLAPSED, step=10)
    det.update(*COLLAPSED, step=20)
    resumed = ActionCollapseDetector()
    resumed.load_state_dict(json.loads(json.dumps(det.state_dict())))
    assert resumed.update(*COLLAPSED, step=30) and resumed.first_step == 10


# --------------------------------------------------------------------------- non-finite
def test_nonfinite_detector() -> None:
    det = NonFiniteDetector()
    assert not det.update(0, 1) and not det.update(0.0, 2)
    assert det.update(3, 3) and det.first_step == 3 and "3" in str(det.message)
    assert not det.update(7, 4) and det.first_step == 3
    nan_det = NonFiniteDetector()
    assert nan_det.update(float("nan"), 9) and nan_det.first_step == 9


# --------------------------------------------------------------------------- container
def test_detectors_summary_min_over_keys_and_events() -> None:
    d = Detectors(DetectorConfig(explosion_rule="median_ratio", explosion_min_history=5, explosion_window=10))
    assert d.summary() == {"explosion_step": None, "collapse_step": None, "nonfinite_step": None, "detector_messages": []}
    for step in range(20):
        d.update_grad_norm("critic/agent_0", 1.0, step)
        d.update_grad_norm("critic/agent_1", 1.0, step)
    assert d.update_grad_norm("critic/agent_1", 100.0, 30)
    assert d.update_grad_norm("critic/agent_0", 100.0, 40)
    assert d.explosion_steps() == {"critic/agent_0": 40, "critic/agent_1": 30}
    assert d.explosion_step == 30

    for step in (100, 200, 300):
        d.update_actions("agent_0", *HEALTHY, step=step)
        d.update_actions("agent_1", *COLLAPSED, step=step)
    assert d.collapse_steps() == {"agent_0": None, "agent_1": 100}
    assert d.update_nonfinite(2, 250)

    s = d.summary()
    assert set(s) == {"explosion_step", "collapse_step", "nonfinite_step", "detector_messages"}
    assert (s["explosion_step"], s["collapse_step"], s["nonfinite_step"]) == (30, 100, 250)
    assert len(s["detector_messages"]) == 4 and all(isinstance(m, str) for m in s["detector_messages"])

    events = d.fired_events()
    assert [(n, st) for n, st, _ in events] == [
        ("explosion/critic/agent_1", 30),
        ("explosion/critic/agent_0", 40),
        ("collapse/agent_1", 100),
        ("nonfinite", 250),
    ]
    assert d.fired_events() == []  # handed out once


def _returns(seed: int, drop_at: int | None, n: int = 40) -> list[float]:
    """Team returns of a run that learns from -70 to -50 over 20 evaluations (noise std 1.5), then holds or, from
    ``drop_at``, falls back by 20."""
    rng = np.random.default_rng(seed)
    trend = np.minimum(-70 + np.arange(n), -50.0)
    if drop_at is not None:
        trend[drop_at:] -= 20.0
    return list(trend + rng.normal(0, 1.5, n))


def test_degradation_fires_on_a_sustained_drop_and_never_on_healthy_noise() -> None:
    for seed in range(20):  # healthy: learns and holds; noise alone never fires it
        d = DegradationDetector()
        assert not any(d.update(r, 1000 * i) for i, r in enumerate(_returns(seed, None)))
    d = DegradationDetector()
    fired = [i for i, r in enumerate(_returns(0, 30)) if d.update(r, 1000 * i)]
    assert len(fired) == 1 and d.first_step in (30_000, 31_000) and fired[0] * 1000 - d.first_step == 2000  # patience 3
    assert "degradation" in d.message and d.update(-90.0, 99_000) is False  # fires once
    d = DegradationDetector(min_evals=6)
    assert not any(d.update(r, i) for i, r in enumerate([-50.0, -90.0, -90.0, -90.0, -90.0]))  # not armed yet
    assert d.update(float("nan"), 6) is False and len(d.returns) == 5  # a NaN return is not a reading
    # a dip before the run learned anything is not a degradation (e.g. the first updates after warm-up)
    d = DegradationDetector()
    dip = [-75.0, -76.5, -74.0, -75.5, -74.5, -75.0, -95.0, -110.0, -100.0, -105.0, -98.0, -76.0, -74.0]
    assert not any([d.update(r, i) for i, r in enumerate(dip)])


def test_degradation_in_the_summary_and_state() -> None:
    returns = _returns(1, 25)

    def run(split: int | None) -> dict:
        d = Detectors(DetectorConfig())
        for i, r in enumerate(returns):
            if split is not None and i == split:
                state = json.loads(json.dumps(d.state_dict()))
                d = Detectors(DetectorConfig())
                d.load_state_dict(state)
            d.update_return(r, 1000 * i)
        return d.summary()

    ref = run(None)
    assert ref["degradation_step"] in (25_000, 26_000) and ref["detector_messages"][0].startswith("degradation")
    assert run(10) == ref and run(26) == ref
    assert "degradation_step" not in Detectors().summary()  # not fed (no evaluation): absent, as before


def test_detectors_state_round_trip() -> None:
    cfg = DetectorConfig()
    s = _stream(seed=5)
    s[900] = 5e4  # 1e4 x the level: both rules fire

    def run(split: int | None) -> dict:
        d = Detectors(cfg)
        for i, v in enumerate(s):
            if split is not None and i == split:
                state = json.loads(json.dumps(d.state_dict()))
                d = Detectors(cfg)
                d.load_state_dict(state)
            d.update_grad_norm("critic/agent_0", v, i)
            if i % 100 == 0:
                d.update_actions("agent_0", *(COLLAPSED if i >= 1000 else HEALTHY), step=i)
        return d.summary()

    ref = run(None)
    assert ref["explosion_step"] == 900 and ref["collapse_step"] == 1000
    assert run(450) == ref
    assert run(1150) == ref  # mid collapse streak


def test_config_rejects_unknown_and_inconsistent() -> None:
    with pytest.raises(ValidationError):
        DetectorConfig(ratio=3.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        DetectorConfig(explosion_min_history=200, explosion_window=100)
    assert all(f.description for f in DetectorConfig.model_fields.values())


# --------------------------------------------------------------------------- diagnose_policy
OBS_DIM, ACT_DIM = 18, 5


@pytest.fixture
def obs() -> torch.Tensor:
    return torch.randn(512, OBS_DIM, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def W() -> torch.Tensor:
    return torch.randn(OBS_DIM, ACT_DIM, generator=torch.Generator().manual_seed(1))


def test_diagnose_constant_saturated_policy_is_collapsed(obs: torch.Tensor) -> None:
    def policy(o: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(1000.0 + 0.0 * o[:, :ACT_DIM])

    r = diagnose_policy(policy, obs, 0.0, 1.0, DetectorConfig())
    assert r["verdict"] == "collapsed"
    assert r["saturation"] == 1.0 and r["batch_same_action"] == 1.0 and r["sensitivity"] == 0.0


def test_diagnose_bang_bang_is_saturated_but_state_dependent(obs: torch.Tensor) -> None:
    def policy(o: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(100.0 * o[:, :ACT_DIM])  # nearly always at a bound, but which bound follows the state

    r = diagnose_policy(policy, obs, [0.0] * ACT_DIM, [1.0] * ACT_DIM, DetectorConfig())
    assert r["verdict"] == "saturated_but_state_dependent"
    assert r["saturation"] >= 0.9 and r["sensitivity"] > 0.1 and r["batch_same_action"] < 0.2


def test_diagnose_healthy_policy(obs: torch.Tensor, W: torch.Tensor) -> None:
    r = diagnose_policy(lambda o: torch.sigmoid(0.5 * o @ W), obs, 0.0, 1.0, DetectorConfig())
    assert r["verdict"] == "healthy"
    assert r["saturation"] < 0.2 and r["batch_same_action"] < 0.01 and r["sensitivity"] > 0.1


def test_diagnose_small_init_actor_is_not_collapsed(obs: torch.Tensor, W: torch.Tensor) -> None:
    r = diagnose_policy(lambda o: 0.5 + 1e-4 * torch.tanh(o @ W), obs, 0.0, 1.0, DetectorConfig())
    # Repetitive and insensitive like a collapsed actor, but mid-range: a fresh actor, not the failure.
    assert r["batch_same_action"] == 1.0 and r["sensitivity"] < 1e-3 and r["saturation"] == 0.0
    assert r["verdict"] == "healthy"


def test_diagnose_works_on_module_without_touching_param_grads(obs: torch.Tensor) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(OBS_DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, ACT_DIM), torch.nn.Sigmoid())
    r = diagnose_policy(net, obs, 0.0, 1.0)
    assert r["verdict"] in {"healthy", "saturated_but_state_dependent", "collapsed"}
    assert all(p.grad is None for p in net.parameters())


# --------------------------------------------------------------------------- helpers
def test_helpers_basic_values() -> None:
    a = torch.tensor([[0.0, 0.5], [1.0, 0.995], [0.5, 0.02]])
    assert saturation_fraction(a, 0.0, 1.0) == pytest.approx(3 / 6)
    assert saturation_fraction(a, -math.inf, math.inf) == 0.0
    same = torch.tensor([[0.1, 0.2], [0.1005, 0.2], [0.9, 0.9]])
    assert batch_same_action_rate(same) == pytest.approx(1 / 3)
    assert math.isnan(batch_same_action_rate(same[:1]))
    x = torch.randn(8, 3)
    M = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    assert action_sensitivity(lambda o: o @ M, x) == pytest.approx(5.0)  # Frobenius norm of the linear map


def test_explosion_min_norm_ignores_growth_of_tiny_gradients() -> None:
    """A small-init actor's gradient growing 10x from 1e-3 as learning starts is not an explosion."""
    det = GradientExplosionDetector(min_norm=10.0)
    for step in range(50):
        assert not det.update(1e-3, step)
    assert not det.update(1.5e-2, 50)  # 15x the median but tiny in absolute terms
    assert det.update(500.0, 51) and det.first_step == 51


def test_standardized_sensitivity_ignores_input_scale_and_constant_features() -> None:
    """Rescaling the observations (obs_scale, or input normalization dividing a near-constant feature by a
    tiny std) must not change the measured dependence of the action on the state."""
    from marl_stability.hooks.detectors import standardized_sensitivity

    torch.manual_seed(0)
    w = torch.randn(6, 3)
    obs = torch.randn(128, 6)
    obs[:, 5] = 0.0  # a feature that never varies (mpe2's communication channel)
    policy = lambda o: torch.tanh(o[:, :5] @ w[:5])  # noqa: E731
    base = standardized_sensitivity(policy, obs)
    scale = torch.tensor([1e3, 1e-3, 7.0, 1.0, 0.5, 1.0])
    scaled_policy = lambda o: policy(o / scale)  # noqa: E731 - the same policy reading rescaled inputs
    assert abs(standardized_sensitivity(scaled_policy, obs * scale) - base) < 1e-4 * base
    # a huge weight on the constant feature changes nothing: it never moves
    leaky = lambda o: torch.tanh(o[:, :5] @ w[:5] + 1e6 * o[:, 5:6])  # noqa: E731
    assert abs(standardized_sensitivity(leaky, obs) - base) < 1e-6 * base
    assert standardized_sensitivity(lambda o: torch.sigmoid(1000 + 0 * o[:, :5]), obs) == 0.0
