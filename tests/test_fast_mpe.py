"""FastMPEVectorEnv / FastMPEParallelEnv: equality with mpe2, batching, autoreset, save/restore."""

from __future__ import annotations

import copy
import importlib
import warnings
from typing import Any

import numpy as np
import pytest
from conftest import mpe_actions
from marl_stability.envs.fast_mpe import (
    SUPPORTED_ENV_IDS,
    FastMPEParallelEnv,
    FastMPEVectorEnv,
)
from marl_stability.envs.registry import EnvError
from marl_stability.envs.vector import AgentLayout, NonFiniteActionError

# Exact numbers that depend on numpy/OpenBLAS arithmetic: .ci/blas_kernels.py reruns these under every
# OpenBLAS kernel the machine can run.
pytestmark = pytest.mark.cpu_sensitive

TASKS = list(SUPPORTED_ENV_IDS)  # every mpe2 task (tests/test_fast_mpe_lockstep.py: equality with mpe2)
TOL = 1e-5


def _mpe(env_id: str, kwargs: dict[str, Any]) -> Any:
    return importlib.import_module(f"mpe2.{env_id}").parallel_env(**kwargs)


def _random_actions(rng: np.random.Generator, layout: AgentLayout, b: int) -> np.ndarray:
    # Slightly outside [0, 1] so continuous clipping is exercised too.
    shape = (b, layout.num_agents, layout.max_act_dim)
    return rng.uniform(-0.2, 1.2, size=shape).astype(np.float32)


def _compare_episode(env_id: str, kwargs: dict[str, Any], seed: int, crowd: bool) -> float:
    """Run one full episode in mpe2 and FastMPE from the same state; return max abs diff."""
    mpe = _mpe(env_id, kwargs)
    obs_m, _ = mpe.reset(seed=seed)
    rng = np.random.default_rng(seed + 12345)
    if crowd:
        # Pack agents close together so collision forces/penalties really happen.
        for agent in mpe.unwrapped.world.agents:
            agent.state.p_pos = rng.uniform(-0.2, 0.2, 2)
        obs_m = {a: mpe.unwrapped.observe(a) for a in mpe.possible_agents}
    fast = FastMPEVectorEnv(env_id, kwargs, 1, seed)
    fast.reset()
    fast.set_state_from_mpe(0, mpe)
    lay = fast.layout
    worst = 0.0

    def check_obs(ours: np.ndarray, theirs: dict[str, np.ndarray]) -> None:
        nonlocal worst
        for i, agent in enumerate(lay.agents):
            assert theirs[agent].dtype == np.float32
            diff = float(np.max(np.abs(ours[i, : lay.obs_dims[i]] - theirs[agent])))
            worst = max(worst, diff)
            assert diff <= TOL, (env_id, seed, agent, diff)
            assert not ours[i, lay.obs_dims[i] :].any()  # padding stays zero

    check_obs(fast.current_obs()[0], obs_m)
    max_cycles = kwargs.get("max_cycles", 25)
    for t in range(max_cycles):
        acts = _random_actions(rng, lay, 1)
        obs_m, rew_m, term_m, trunc_m, _ = mpe.step(mpe_actions(lay, acts[0]))
        res = fast.step(acts)
        check_obs(res.next_obs[0], obs_m)
        for i, agent in enumerate(lay.agents):
            diff = abs(float(res.reward[0, i]) - float(rew_m[agent]))
            worst = max(worst, diff)
            assert diff <= TOL, (env_id, seed, t, agent, diff)
            assert bool(res.terminated[0, i]) == term_m[agent]
            assert bool(res.truncated[0, i]) == trunc_m[agent]
        assert bool(res.done[0]) == (t == max_cycles - 1)
    assert not mpe.agents  # mpe2 ended at the same step
    mpe.close()
    return worst


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "discrete"])
def test_equals_mpe2_spread_options(continuous: bool) -> None:
    kwargs = {"N": 5, "local_ratio": 0.3, "max_cycles": 12, "continuous_actions": continuous}
    for seed in range(6):
        _compare_episode("simple_spread_v3", kwargs, seed, crowd=True)
    ref = {"local_ratio": 0.9, "max_cycles": 10, "continuous_actions": continuous}
    for seed in range(3):
        _compare_episode("simple_reference_v3", ref, seed, crowd=False)


def test_collisions_are_exercised() -> None:
    """The crowded start really produces collision penalties (guards the test above)."""
    mpe = _mpe("simple_spread_v3", {"continuous_actions": True, "local_ratio": 1.0})
    mpe.reset(seed=0)
    rng = np.random.default_rng(0)
    for agent in mpe.unwrapped.world.agents:
        agent.state.p_pos = rng.uniform(-0.05, 0.05, 2)
    kwargs = {"continuous_actions": True, "local_ratio": 1.0}
    fast = FastMPEVectorEnv("simple_spread_v3", kwargs, 1, 0)
    fast.reset()
    fast.set_state_from_mpe(0, mpe)
    res = fast.step(np.zeros((1, 3, 5), dtype=np.float32))
    np.testing.assert_array_equal(res.reward, -2.0)  # local reward only: -1 per neighbour
    res = fast.step(np.zeros((1, 3, 5), dtype=np.float32))
    # Contact forces pushed the agents apart, exactly as in mpe2.
    obs_m, *_ = mpe.step({a: np.zeros(5, np.float32) for a in mpe.possible_agents})
    obs_m, *_ = mpe.step({a: np.zeros(5, np.float32) for a in mpe.possible_agents})
    assert np.abs(res.next_obs[0, 0, :2]).max() > 0.1  # velocity from collisions
    np.testing.assert_allclose(res.next_obs[0, 0], obs_m["agent_0"], atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "env_id,kwargs",
    [(t, {"continuous_actions": c}) for t in TASKS for c in (True, False)]
    + [("simple_spread_v3", {"N": 4, "continuous_actions": True})],
)
def test_layout_matches_mpe2(env_id: str, kwargs: dict[str, Any]) -> None:
    fast = FastMPEVectorEnv(env_id, kwargs, 2, 0)
    assert fast.layout == AgentLayout.from_env(_mpe(env_id, kwargs))
    assert fast.num_envs == 2
    assert fast.reset().shape == (2, fast.layout.num_agents, fast.layout.max_obs_dim)


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "discrete"])
@pytest.mark.parametrize("env_id", TASKS)
def test_parallel_api(env_id: str, continuous: bool) -> None:
    from pettingzoo.test import (
        parallel_api_test,  # import before turning warnings into errors
    )

    env = FastMPEParallelEnv(env_id, {"continuous_actions": continuous}, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(env, num_cycles=60)
    agent = env.possible_agents[0]
    assert env.observation_space(agent) is env.observation_space(agent)
    assert env.action_space(agent) is env.action_space(agent)
    obs1, _ = env.reset(seed=3)
    obs2, _ = env.reset(seed=3)
    assert all(np.array_equal(obs1[a], obs2[a]) for a in env.possible_agents)
    assert env.state().shape == env.state_space.shape


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "discrete"])
@pytest.mark.parametrize("env_id", TASKS)
def test_parallel_view_equals_mpe2(env_id: str, continuous: bool) -> None:
    kwargs = {"continuous_actions": continuous, "max_cycles": 8}
    mpe, env = _mpe(env_id, kwargs), FastMPEParallelEnv(env_id, kwargs, seed=0)
    mpe.reset(seed=4)
    env.reset(seed=4)
    env.vector_env.set_state_from_mpe(0, mpe)
    # Every agent's space seeded: the actions, and so the test, are fixed. (Seeding only agent 0's left the others'
    # actions random: now and then a collector picked a treasure up within the 8 steps, and its respawn -- drawn
    # from the port's own stream, not mpe2's; test_fast_mpe_lockstep.py replays mpe2's -- failed this test, about
    # 1 run in 25 on collect_treasure_v1. With this seeding no respawn happens in any task here.)
    for i, agent in enumerate(mpe.possible_agents):
        mpe.action_space(agent).seed(i)
    while env.agents:
        acts = {a: mpe.action_space(a).sample() for a in mpe.agents}
        obs_m, rew_m, term_m, trunc_m, _ = mpe.step(acts)
        obs_f, rew_f, term_f, trunc_f, info_f = env.step(acts)
        for a in env.possible_agents:
            np.testing.assert_allclose(obs_f[a], obs_m[a], atol=TOL, rtol=0)
            assert rew_f[a] == pytest.approx(rew_m[a], abs=TOL)
        assert term_f == term_m and trunc_f == trunc_m and set(info_f) == set(obs_m)
    assert not mpe.agents


def _env_slice(state: dict[str, Any], b: int) -> dict[str, Any]:
    """A B=1 state dict holding env ``b`` of a batched state dict."""
    out = copy.deepcopy(state)
    out["num_envs"] = 1
    keys = ("pos", "vel", "comm", "goals", "steps", "cam_range0", "agent_returns", "team_returns")
    for key in keys:
        out[key] = state[key][b : b + 1].copy()
    out["aux"] = {key: value[b : b + 1].copy() for key, value in state["aux"].items()}
    return out


def _stateless_respawns(rng: np.random.Generator, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """collect_treasure respawns that depend only on the treasure index (not on a generator)."""
    t = np.arange(dead.shape[0])[:, None] * np.ones(dead.shape)
    return np.stack([0.9 * np.sin(t), 0.9 * np.cos(t)]), (t % 2).astype(np.int64)


@pytest.mark.parametrize("env_id", TASKS)
def test_batched_equals_independent_envs(env_id: str) -> None:
    kwargs = {"continuous_actions": env_id not in ("simple_reference_v3", "simple_world_comm_v3")}
    big = FastMPEVectorEnv(env_id, kwargs, 64, 1)
    big.reset()
    rng = np.random.default_rng(7)
    for _ in range(5):  # start mid-episode with non-zero velocities and messages
        big.step(_random_actions(rng, big.layout, 64))
    state = big.state_dict()
    singles = []
    for b in range(64):
        env = FastMPEVectorEnv(env_id, kwargs, 1, 99)
        env.load_state_dict(_env_slice(state, b))
        singles.append(env)
    if env_id == "collect_treasure_v1":
        # Respawns come from the generator, whose stream depends on the batch: draw them from the state.
        for env in [big, *singles]:
            env.scenario.draw_respawns = _stateless_respawns  # type: ignore[method-assign]
    for _ in range(25):  # crosses the episode end (autoreset streams differ afterwards)
        acts = _random_actions(rng, big.layout, 64)
        res = big.step(acts)
        for b, env in enumerate(singles):
            one = env.step(acts[b : b + 1])
            np.testing.assert_array_equal(one.next_obs[0], res.next_obs[b])
            np.testing.assert_array_equal(one.reward[0], res.reward[b])
            np.testing.assert_array_equal(one.truncated[0], res.truncated[b])
            np.testing.assert_array_equal(one.terminated[0], res.terminated[b])
            assert one.done[0] == res.done[b]
        if res.done.any():
            break
    else:
        pytest.fail("episode did not end")


@pytest.mark.parametrize("env_id", TASKS)
def test_autoreset_and_episode_records(env_id: str) -> None:
    env = FastMPEVectorEnv(env_id, {"max_cycles": 7, "continuous_actions": True}, 4, 0)
    obs = env.reset()
    rng = np.random.default_rng(0)
    sums = np.zeros((4, env.layout.num_agents))
    for t in range(7):
        res = env.step(_random_actions(rng, env.layout, 4))
        sums += res.reward
        if t < 6:
            assert not res.done.any() and not res.episodes
            np.testing.assert_array_equal(res.obs, res.next_obs)
    assert res.done.all() and res.truncated.all() and not res.terminated.any()
    assert [e["env_index"] for e in res.episodes] == [0, 1, 2, 3]
    for ep in res.episodes:
        b = ep["env_index"]
        assert ep["length"] == 7
        assert set(ep["agent_returns"]) == set(env.layout.agents)
        returns = np.array([ep["agent_returns"][a] for a in env.layout.agents])
        np.testing.assert_allclose(returns, sums[b], rtol=1e-5, atol=1e-4)
        assert ep["team_return"] == pytest.approx(sum(ep["agent_returns"].values()), abs=1e-9)
        assert ep["team_return"] == pytest.approx(float(sums[b].sum()), abs=1e-4)
    # obs is the new episode's first obs, next_obs the true final one.
    assert not np.array_equal(res.obs, res.next_obs)
    np.testing.assert_array_equal(res.obs, env.current_obs())
    assert not np.array_equal(res.obs, obs)
    res2 = env.step(_random_actions(rng, env.layout, 4))
    assert not res2.done.any()
    assert env.state_dict()["steps"].tolist() == [1, 1, 1, 1]


def _plain(value: Any) -> bool:
    """Only python builtins and numpy arrays (no objects, generators...)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (np.ndarray, int, float, str, bool, type(None)))


@pytest.mark.parametrize("env_id", TASKS)
def test_state_dict_roundtrip(env_id: str) -> None:
    kwargs = {"continuous_actions": env_id == "simple_reference_v3"}
    env = FastMPEVectorEnv(env_id, kwargs, 8, 5)
    env.reset()
    rng = np.random.default_rng(1)
    for _ in range(10):
        env.step(_random_actions(rng, env.layout, 8))
    state = env.state_dict()
    obs_at_save = env.current_obs()
    assert _plain(state)
    saved = copy.deepcopy(state)
    actions = [_random_actions(rng, env.layout, 8) for _ in range(40)]  # 2 autoresets
    first = [env.step(a) for a in actions]
    other = FastMPEVectorEnv(env_id, kwargs, 8, 123)
    other.load_state_dict(saved)
    np.testing.assert_array_equal(other.current_obs(), obs_at_save)
    for a, ref in zip(actions, first):
        res = other.step(a)
        for field in ("obs", "next_obs", "reward", "terminated", "truncated", "done"):
            np.testing.assert_array_equal(getattr(res, field), getattr(ref, field))
        assert res.episodes == ref.episodes
    # Loading into the wrong shape of env fails cleanly.
    with pytest.raises(EnvError):
        FastMPEVectorEnv(env_id, kwargs, 4, 0).load_state_dict(saved)


def test_state_dict_before_reset() -> None:
    env = FastMPEVectorEnv("simple_spread_v3", {}, 2, 0)
    other = FastMPEVectorEnv("simple_spread_v3", {}, 2, 9)
    other.load_state_dict(env.state_dict())
    np.testing.assert_array_equal(env.reset(), other.reset())  # same rng stream
    with pytest.raises(EnvError):
        FastMPEVectorEnv("simple_spread_v3", {}, 2, 0).step(np.zeros((2, 3, 5), np.float32))


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "discrete"])
def test_nan_action_raises_and_changes_nothing(continuous: bool) -> None:
    env = FastMPEVectorEnv("simple_reference_v3", {"continuous_actions": continuous}, 3, 0)
    env.reset()
    rng = np.random.default_rng(0)
    env.step(_random_actions(rng, env.layout, 3))
    before = env.state_dict()
    twin = FastMPEVectorEnv("simple_reference_v3", {"continuous_actions": continuous}, 3, 0)
    twin.load_state_dict(before)
    acts = _random_actions(rng, env.layout, 3)
    bad = acts.copy()
    bad[1, 0, -1] = np.nan  # even in a column the agent does not use
    with pytest.raises(NonFiniteActionError):
        env.step(bad)
    bad[1, 0, -1] = np.inf
    with pytest.raises(NonFiniteActionError):
        env.step(bad)
    after = env.state_dict()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value)
        else:
            assert after[key] == value
    res, ref = env.step(acts), twin.step(acts)
    np.testing.assert_array_equal(res.next_obs, ref.next_obs)
    np.testing.assert_array_equal(res.reward, ref.reward)


@pytest.mark.parametrize(
    "env_id,kwargs",
    [
        ("simple_tag_v3", {"curriculum": True}),
        ("simple_tag_v3", {"num_good": 0}),
        ("simple_tag_v3", {"num_agent_neighbors": 2}),
        ("simple_adversary_v3", {"num_landmark_neighbors": 1}),
        ("simple_world_comm_v3", {"num_food": 0}),
        ("simple_formation_v1", {"terminate_on_success": "yes"}),
        ("simple_world_comm_v3", {"terminate_on_success": True}),
        ("simple_line_v1", {"N": 0}),
        ("collect_treasure_v1", {"num_deposits": 7}),
        ("collect_treasure_v1", {"num_treasures": 2.5}),
        ("simple_v3", {"N": 2}),
        ("nope", {}),
        ("simple_spread_v3", {"N": 0}),
        ("simple_spread_v3", {"N": True}),
        ("simple_spread_v3", {"local_ratio": 1.5}),
        ("simple_spread_v3", {"bogus": 1}),
        ("simple_spread_v3", {"curriculum": True}),
        ("simple_spread_v3", {"terminate_on_success": 1}),
        ("simple_spread_v3", {"max_cycles": 0}),
        ("simple_reference_v3", {"N": 3}),
        ("simple_speaker_listener_v4", {"local_ratio": 0.5}),
        ("simple_speaker_listener_v4", {"continuous_actions": "yes"}),
    ],
)
def test_bad_ids_and_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(EnvError):
        FastMPEVectorEnv(env_id, kwargs, 1, 0)


def test_bad_action_shape() -> None:
    env = FastMPEVectorEnv("simple_spread_v3", {}, 2, 0)
    env.reset()
    with pytest.raises(EnvError):
        env.step(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(EnvError):
        env.step(np.zeros((2, 3, 5), dtype=object))


def test_render_rgb_array() -> None:
    env = FastMPEVectorEnv("simple_speaker_listener_v4", {"continuous_actions": True}, 2, 0)
    env.reset()
    frame = env.render(1)
    assert frame.shape == (700, 700, 3) and frame.dtype == np.uint8
    env.close()


def test_norms_have_linalg_norms_bits_under_this_kernel() -> None:
    """mpe2's formation / line / collect_treasure distances are ``np.linalg.norm`` (a BLAS ``ddot`` whose last
    bit depends on the CPU's OpenBLAS kernel). Both of the port's ways of computing them equal it exactly under
    whatever kernel runs this test (.ci/blas_kernels.py runs it under each one the machine can run), and the
    start-up probe picks the elementwise formula only where that formula is exact."""
    from marl_stability.envs.fast_mpe_tasks.base import (
        NORM_IS_ELEMENTWISE,
        norm_by_ddot,
        norm_like_linalg,
    )

    delta = np.random.default_rng(11).uniform(-3.0, 3.0, size=(2, 5000))
    expect = np.array([np.linalg.norm(delta[:, k]) for k in range(delta.shape[1])])
    assert np.array_equal(norm_by_ddot(delta), expect)
    assert np.array_equal(norm_like_linalg(delta), expect)
    elementwise = np.sqrt(delta[0] * delta[0] + delta[1] * delta[1])
    assert NORM_IS_ELEMENTWISE == bool(np.array_equal(elementwise, expect))


def test_assignment_reward_equals_mpe2s_on_each_norm_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The matched-distance reward of formation / line, against mpe2's own computation (``np.linalg.norm`` per
    pair, scipy's assignment, ``np.mean`` of the clipped distances), env by env: the ddot path (taken under
    AVX-512 kernels) on any kernel, the elementwise path where the start-up probe chose it."""
    from marl_stability.envs.fast_mpe_tasks import assignment, base
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(3)
    n, b = 4, 64
    agents, targets = rng.uniform(-1, 1, size=(2, n, b)), rng.uniform(-1, 1, size=(2, n, b))
    paths = [False] + ([True] if base.NORM_IS_ELEMENTWISE else [])
    for elementwise in paths:
        monkeypatch.setattr(assignment, "NORM_IS_ELEMENTWISE", elementwise)
        reward, chosen = assignment.matched_distance_reward(agents, targets)
        for k in range(b):
            d = np.array([[np.linalg.norm(agents[:, i, k] - targets[:, j, k]) for j in range(n)] for i in range(n)])
            rows, cols = linear_sum_assignment(d)
            assert np.array_equal(chosen[:, k], d[rows, cols]), (elementwise, k)
            assert reward[k] == -float(np.mean(np.clip(d[rows, cols], 0, 2))), (elementwise, k)
