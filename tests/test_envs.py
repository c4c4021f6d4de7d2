"""Tests for the envs package: registry, wrappers and the vectorised env."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import gymnasium.spaces
import numpy as np
import pytest
import torch
from pettingzoo.utils.env import ParallelEnv

# Imported before any test turns warnings into errors: importing pettingzoo.test
# emits a DeprecationWarning (from pettingzoo's own deprecated-module shim).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from pettingzoo.test import parallel_api_test

from marl_stability.envs import (
    AgentLayout,
    EnvError,
    EpisodeStatistics,
    NonFiniteActionError,
    ObservationAffine,
    RewardScale,
    SyncVectorEnv,
    make,
    make_wrapped,
)

from marl_stability import envs

SPREAD = "simple_spread_v3"
SPEAKER = "simple_speaker_listener_v4"
SPREAD_KW: dict[str, Any] = {"N": 3, "max_cycles": 25, "continuous_actions": True}
SPEAKER_KW: dict[str, Any] = {"max_cycles": 25, "continuous_actions": False}


def _random_actions(env: ParallelEnv, rng: np.random.Generator) -> dict[str, Any]:
    """Deterministic (rng-driven) env-format actions for the live agents."""
    out: dict[str, Any] = {}
    for agent in env.agents:
        space = env.action_space(agent)
        if isinstance(space, gymnasium.spaces.Discrete):
            out[agent] = int(rng.integers(space.n))
        else:
            out[agent] = rng.uniform(space.low, space.high).astype(space.dtype)
    return out


def _batch_actions(layout: AgentLayout, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, (num_envs, layout.num_agents, layout.max_act_dim)).astype(
        np.float32
    )


def _spread_vec(num_envs: int = 3, seed: int = 7) -> SyncVectorEnv:
    return SyncVectorEnv(lambda: make_wrapped(SPREAD, SPREAD_KW), num_envs, seed)


# ---------------------------------------------------------------- registry


def test_list_env_ids_sorted_and_complete() -> None:
    ids = envs.list_env_ids()
    assert ids == sorted(ids)
    assert {SPREAD, SPEAKER, "simple_v3", "simple_tag_v3"} <= set(ids)
    assert "all_modules" not in ids and not any(i.startswith("_") for i in ids)


@pytest.mark.parametrize("env_id", envs.list_env_ids())
def test_every_mpe2_id_makes_and_resets(env_id: str) -> None:
    env = make(env_id, max_cycles=5)
    try:
        assert isinstance(env, ParallelEnv)
        obs, infos = env.reset(seed=0)
        assert set(obs) == set(env.possible_agents) and set(infos) == set(obs)
    finally:
        env.close()


def test_unknown_id_suggests_close_match() -> None:
    with pytest.raises(EnvError, match="simple_spread_v3") as info:
        make("simple_sprad_v3")
    assert "\n" not in str(info.value)


def test_bad_kwarg_is_env_error() -> None:
    with pytest.raises(EnvError, match=r"unknown keyword argument for simple_spread_v3: 'bogus'"):
        make(SPREAD, bogus=1)


def test_module_callable_path() -> None:
    env = make("mpe2.simple_spread_v3:parallel_env", N=2, continuous_actions=True)
    assert isinstance(env, ParallelEnv)
    assert env.possible_agents == ["agent_0", "agent_1"]
    env.close()


@pytest.mark.parametrize(
    "env_id",
    [
        "mpe2.simple_spread_v3:env",  # an AEC env, not a ParallelEnv
        "builtins:dict",
        "no_such_module_xyz:make",
        "mpe2.simple_spread_v3:no_such_attr",
        "mpe2.simple_spread_v3:",
    ],
)
def test_bad_import_paths_are_env_errors(env_id: str) -> None:
    with pytest.raises(EnvError) as info:
        make(env_id)
    assert "\n" not in str(info.value)


def test_describe_reports_each_agent() -> None:
    rows = envs.describe(SPEAKER, continuous_actions=True)
    box3 = repr(gymnasium.spaces.Box(0.0, 1.0, (3,), np.float32))
    box5 = repr(gymnasium.spaces.Box(0.0, 1.0, (5,), np.float32))
    assert rows == [
        {"name": "speaker_0", "obs_shape": (3,), "action_space": box3},
        {"name": "listener_0", "obs_shape": (11,), "action_space": box5},
    ]


# ---------------------------------------------------------------- wrappers


@pytest.mark.parametrize("env_id,kwargs", [(SPREAD, SPREAD_KW), (SPEAKER, SPEAKER_KW)])
def test_parallel_api_with_warnings_as_errors(env_id: str, kwargs: dict[str, Any]) -> None:
    env = make_wrapped(env_id, kwargs, reward_scale=3.0, obs_scale=-2.0, obs_offset=0.5)
    assert isinstance(env, RewardScale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(env, num_cycles=60)
    env.close()


def test_make_wrapped_order_and_identity_skipping() -> None:
    plain = make_wrapped(SPREAD, SPREAD_KW)
    assert isinstance(plain, EpisodeStatistics)
    full = make_wrapped(SPREAD, SPREAD_KW, reward_scale=2.0, obs_offset=1.0)
    assert isinstance(full, RewardScale)
    assert isinstance(full.env, ObservationAffine)
    assert isinstance(full.env.env, EpisodeStatistics)


def _rollout(env: ParallelEnv, seed: int, steps: int) -> list[tuple[dict, dict]]:
    """(obs, rewards) per step, driven by an rng seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = [(obs, {})]
    for _ in range(steps):
        if not env.agents:
            break
        obs, rew, _, _, _ = env.step(_random_actions(env, rng))
        out.append((obs, rew))
    return out


def test_reward_scale_multiplies_exactly() -> None:
    raw = _rollout(make(SPREAD, **SPREAD_KW), seed=3, steps=10)
    scaled = _rollout(RewardScale(make(SPREAD, **SPREAD_KW), -4.5), seed=3, steps=10)
    for (o_raw, r_raw), (o_s, r_s) in zip(raw, scaled):
        assert set(r_raw) == set(r_s)
        for agent in r_raw:
            assert r_s[agent] == float(r_raw[agent]) * -4.5
            np.testing.assert_array_equal(o_raw[agent], o_s[agent])


@pytest.mark.parametrize("scale,offset", [(2.5, -1.0), (-0.5, 3.0)])
def test_observation_affine_exact(scale: float, offset: float) -> None:
    raw = _rollout(make(SPREAD, **SPREAD_KW), seed=5, steps=5)
    env = ObservationAffine(make(SPREAD, **SPREAD_KW), scale, offset)
    wrapped = _rollout(env, seed=5, steps=5)
    for (o_raw, _), (o_w, _) in zip(raw, wrapped):
        for agent, value in o_raw.items():
            expected = value * np.float32(scale) + np.float32(offset)
            assert o_w[agent].dtype == np.float32
            np.testing.assert_array_equal(o_w[agent], expected)
            assert env.observation_space(agent).contains(o_w[agent])


def test_observation_affine_bounds_transform_and_swap() -> None:
    class _Bounded(ParallelEnv):
        """Minimal env with finite observation bounds (mpe2 uses +-inf)."""

        possible_agents = ["a"]
        metadata: dict[str, Any] = {}

        def observation_space(self, agent: str) -> gymnasium.spaces.Box:
            return gymnasium.spaces.Box(np.float32(-1), np.float32(2), (2,), np.float32)

        def action_space(self, agent: str) -> gymnasium.spaces.Box:
            return gymnasium.spaces.Box(0, 1, (1,), np.float32)

    env = ObservationAffine(_Bounded(), -2.0, 1.0)
    space = env.observation_space("a")
    assert space.dtype == np.float32
    np.testing.assert_array_equal(space.low, [-3.0, -3.0])
    np.testing.assert_array_equal(space.high, [3.0, 3.0])
    assert env.observation_space("a") is space
    with pytest.raises(EnvError):
        ObservationAffine(_Bounded(), 0.0, 1.0)


def test_episode_statistics_records_raw_team_return() -> None:
    env = make_wrapped(SPREAD, SPREAD_KW, reward_scale=10.0)
    stats = env.env
    assert isinstance(stats, EpisodeStatistics)
    rng = np.random.default_rng(0)
    env.reset(seed=11)
    team, per_agent, steps = 0.0, dict.fromkeys(env.possible_agents, 0.0), 0
    infos: dict[str, dict] = {}
    while env.agents:
        actions = _random_actions(env, rng)
        _, rew, _, _, infos = env.step(actions)
        steps += 1
        for agent, r in rew.items():
            raw = r / 10.0  # undo the outer RewardScale
            team += raw
            per_agent[agent] += raw
        if env.agents:
            assert all("episode" not in info for info in infos.values())
    record = env.last_episode  # forwarded through the outer wrapper
    assert record is not None and record is stats.last_episode
    assert record["length"] == steps == 25
    assert record["team_return"] == pytest.approx(team, rel=1e-12)
    for agent in env.possible_agents:
        assert record["agent_returns"][agent] == pytest.approx(per_agent[agent], rel=1e-12)
        assert infos[agent]["episode"] is record
    # The record must not leak into the next episode's infos.
    env.reset(seed=12)
    _, _, _, _, infos = env.step(_random_actions(env, rng))
    assert all("episode" not in info for info in infos.values())


# ---------------------------------------------------------------- layout


def test_agent_layout_heterogeneous_speaker_listener() -> None:
    layout = AgentLayout.from_env(make(SPEAKER, **SPEAKER_KW))
    assert layout.agents == ("speaker_0", "listener_0")
    assert layout.obs_dims == (3, 11) and layout.act_dims == (3, 5)
    assert layout.discrete == (True, True) and layout.all_discrete and not layout.all_continuous
    assert (layout.num_agents, layout.max_obs_dim, layout.max_act_dim) == (2, 11, 5)
    assert layout.act_low.shape == (2, 5) and layout.act_low.dtype == np.float32
    np.testing.assert_array_equal(layout.act_low, np.zeros((2, 5)))
    np.testing.assert_array_equal(layout.act_high, np.ones((2, 5)))

    cont = AgentLayout.from_env(make(SPEAKER, continuous_actions=True))
    assert cont.all_continuous and cont.act_dims == (3, 5)
    restored = AgentLayout.from_dict(json.loads(json.dumps(cont.to_dict())))
    assert restored == cont and restored != layout


def test_vector_obs_padding_heterogeneous() -> None:
    vec = SyncVectorEnv(lambda: make(SPEAKER, **SPEAKER_KW), 2, seed=0)
    obs = vec.reset()
    assert obs.shape == (2, 2, 11) and obs.dtype == np.float32
    assert np.all(obs[:, 0, 3:] == 0.0)  # speaker obs is 3-dim, rest is padding


def test_unsupported_spaces_rejected() -> None:
    class _ImageObs(ParallelEnv):
        possible_agents = ["a"]
        metadata: dict[str, Any] = {}

        def observation_space(self, agent: str) -> gymnasium.spaces.Box:
            return gymnasium.spaces.Box(0, 1, (2, 2), np.float32)

        def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
            return gymnasium.spaces.Discrete(2)

    with pytest.raises(EnvError, match="1-D Box observations"):
        AgentLayout.from_env(_ImageObs())


# ---------------------------------------------------------------- vector env


def test_vector_shapes_and_dtypes() -> None:
    vec = _spread_vec(num_envs=4)
    obs = vec.reset()
    assert obs.shape == (4, 3, 18) and obs.dtype == np.float32
    res = vec.step(_batch_actions(vec.layout, 4, np.random.default_rng(0)))
    assert res.obs.shape == res.next_obs.shape == (4, 3, 18)
    assert res.reward.shape == res.terminated.shape == res.truncated.shape == (4, 3)
    assert res.reward.dtype == np.float32 and res.terminated.dtype == bool
    assert res.done.shape == (4,) and not res.done.any() and res.episodes == []
    with pytest.raises(EnvError, match="shape"):
        vec.step(np.zeros((4, 3, 4), dtype=np.float32))


def test_vector_autoreset_after_max_cycles() -> None:
    vec = _spread_vec(num_envs=2)
    vec.reset()
    rng = np.random.default_rng(1)
    for t in range(25):
        res = vec.step(_batch_actions(vec.layout, 2, rng))
        if t < 24:
            assert not res.done.any()
    assert res.done.all() and res.truncated.all()
    assert not np.array_equal(res.next_obs, res.obs)
    assert sorted(e["env_index"] for e in res.episodes) == [0, 1]
    assert all(e["length"] == 25 for e in res.episodes)
    # obs must be the first obs of the episode seeded with the new episode seed.
    state = vec.state_dict()
    for b in range(2):
        assert state["envs"][b]["actions"] == []
        fresh = make_wrapped(SPREAD, SPREAD_KW)
        first, _ = fresh.reset(seed=state["envs"][b]["episode_seed"])
        expected = np.stack([first[a] for a in vec.layout.agents])
        np.testing.assert_array_equal(res.obs[b], expected)
    res = vec.step(_batch_actions(vec.layout, 2, rng))
    assert not res.done.any()


def test_episode_records_are_raw_rewards() -> None:
    vec = SyncVectorEnv(lambda: make_wrapped(SPREAD, SPREAD_KW, reward_scale=100.0), 1, seed=3)
    vec.reset()
    rng = np.random.default_rng(2)
    total = 0.0
    for _ in range(25):
        res = vec.step(_batch_actions(vec.layout, 1, rng))
        total += float(res.reward.astype(np.float64).sum())
    (record,) = res.episodes
    # The vector env sees scaled rewards (float32), the record holds raw ones.
    assert record["team_return"] * 100.0 == pytest.approx(total, rel=1e-5)


def _trajectory(vec: SyncVectorEnv, steps: int, action_seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(action_seed)
    out: list[np.ndarray] = []
    for _ in range(steps):
        res = vec.step(_batch_actions(vec.layout, vec.num_envs, rng))
        out += [res.obs, res.next_obs, res.reward, res.done]
    return out


def test_same_seed_same_trajectory() -> None:
    a, b, c = _spread_vec(seed=42), _spread_vec(seed=42), _spread_vec(seed=43)
    np.testing.assert_array_equal(a.reset(), b.reset())
    assert not np.array_equal(a.state_dict()["envs"][0]["obs"], c.reset()[0])
    for x, y in zip(_trajectory(a, 30, 0), _trajectory(b, 30, 0)):
        np.testing.assert_array_equal(x, y)


def test_discrete_actions_use_argmax() -> None:
    vec = SyncVectorEnv(lambda: make(SPEAKER, **SPEAKER_KW), 1, seed=5)
    vec.reset()
    seed = vec.state_dict()["envs"][0]["episode_seed"]
    ref = make(SPEAKER, **SPEAKER_KW)
    ref.reset(seed=seed)
    rng = np.random.default_rng(0)
    for _ in range(6):
        probs = rng.dirichlet(np.ones(5), size=(1, 2)).astype(np.float32)
        probs[0, 0, 3:] = 0.0  # speaker has 3 actions: padding
        res = vec.step(probs)
        logged = vec.state_dict()["envs"][0]["actions"][-1]
        expected = {
            "speaker_0": int(np.argmax(probs[0, 0, :3])),
            "listener_0": int(np.argmax(probs[0, 1])),
        }
        assert logged == expected
        obs, rew, _, _, _ = ref.step(expected)
        np.testing.assert_array_equal(res.next_obs[0, 1], obs["listener_0"])
        assert res.reward[0, 1] == np.float32(rew["listener_0"])


def test_continuous_actions_clipped_and_cast() -> None:
    vec = _spread_vec(num_envs=1)
    vec.reset()
    actions = np.full((1, 3, 5), 7.0, dtype=np.float64)
    actions[0, 0, 0] = -3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mpe2 warns on float64 / out-of-range actions
        vec.step(actions)
    logged = vec.state_dict()["envs"][0]["actions"][0]
    assert logged["agent_0"] == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_nan_action_raises_and_leaves_envs_untouched() -> None:
    vec, twin = _spread_vec(seed=9), _spread_vec(seed=9)
    vec.reset()
    twin.reset()
    rng = np.random.default_rng(0)
    first = _batch_actions(vec.layout, 3, rng)
    vec.step(first)
    twin.step(first)
    bad = _batch_actions(vec.layout, 3, rng)
    bad[1, 2, 4] = np.nan
    before = vec.state_dict()
    with pytest.raises(NonFiniteActionError, match=r"\[1\]"):
        vec.step(bad)
    bad[1, 2, 4] = np.inf
    with pytest.raises(NonFiniteActionError):
        vec.step(bad)
    after = vec.state_dict()
    assert after["envs"][0]["actions"] == before["envs"][0]["actions"]
    for x, y in zip(_trajectory(vec, 5, 1), _trajectory(twin, 5, 1)):
        np.testing.assert_array_equal(x, y)


def _through_torch(state: dict[str, Any]) -> dict[str, Any]:
    """Round-trip via torch.save/torch.load(weights_only=True), as checkpoints do."""
    state = dict(state)
    state["envs"] = [dict(e, obs=torch.from_numpy(e["obs"])) for e in state["envs"]]
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    loaded["envs"] = [dict(e, obs=e["obs"].numpy()) for e in loaded["envs"]]
    return loaded


@pytest.mark.parametrize("env_id,kwargs", [(SPREAD, SPREAD_KW), (SPEAKER, SPEAKER_KW)])
def test_state_dict_resume_reproduces_trajectory(env_id: str, kwargs: dict[str, Any]) -> None:
    def fn() -> ParallelEnv:
        return make_wrapped(env_id, kwargs, reward_scale=2.0, obs_scale=0.5)

    original = SyncVectorEnv(fn, 3, seed=123)
    original.reset()
    _trajectory(original, 13, action_seed=0)  # mid-episode
    state = _through_torch(original.state_dict())
    assert json.dumps({k: v for k, v in state.items() if k != "envs"})  # plain python

    resumed = SyncVectorEnv(fn, 3, seed=999)  # different seed: all comes from state
    resumed.load_state_dict(state)
    assert len(resumed.state_dict()["envs"][0]["actions"]) == 13
    for x, y in zip(_trajectory(original, 40, 1), _trajectory(resumed, 40, 1)):
        np.testing.assert_array_equal(x, y)


def test_load_state_dict_detects_mismatch() -> None:
    vec = _spread_vec(num_envs=2)
    vec.reset()
    _trajectory(vec, 3, action_seed=0)
    state = vec.state_dict()
    state["envs"][1]["obs"] = state["envs"][1]["obs"] + 1.0
    with pytest.raises(EnvError, match="not deterministic"):
        _spread_vec(num_envs=2).load_state_dict(state)
    with pytest.raises(EnvError):
        _spread_vec(num_envs=3).load_state_dict(vec.state_dict())


def test_step_before_reset_and_render() -> None:
    vec = SyncVectorEnv(lambda: make(SPREAD, render_mode="rgb_array", **SPREAD_KW), 1, seed=0)
    with pytest.raises(EnvError, match="reset"):
        vec.step(np.zeros((1, 3, 5), dtype=np.float32))
    vec.reset()
    frame = vec.render(0)
    assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
    vec.close()


class _DropOutEnv(ParallelEnv):
    """Two agents; ``a`` terminates after 2 steps, ``b`` truncates after 4."""

    metadata: dict[str, Any] = {"name": "dropout_v0"}

    def __init__(self) -> None:
        self.possible_agents = ["a", "b"]
        self.agents: list[str] = []
        self._obs_spaces = {
            "a": gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "b": gymnasium.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        }
        self._act_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._t = 0

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._act_space

    def _obs(self) -> dict[str, np.ndarray]:
        return {a: np.full(self._obs_spaces[a].shape, self._t + 1, np.float32) for a in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.agents, self._t = list(self.possible_agents), 0
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        assert set(actions) == set(self.agents)
        self._t += 1
        rew = {a: 1.0 for a in self.agents}
        term = {a: a == "a" and self._t >= 2 for a in self.agents}
        trunc = {a: a == "b" and self._t >= 4 for a in self.agents}
        obs, infos = self._obs(), {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, infos


def test_agent_dropout_rows() -> None:
    vec = SyncVectorEnv(_DropOutEnv, 1, seed=0)
    assert vec.layout.max_obs_dim == 3 and vec.layout.act_low.tolist() == [[-1, -1], [-1, -1]]
    vec.reset()
    zeros = np.zeros((1, 2, 2), dtype=np.float32)
    results = [vec.step(zeros) for _ in range(4)]
    assert results[1].terminated[0].tolist() == [True, False]
    assert results[1].next_obs[0, 0, :2].tolist() == [3.0, 3.0]  # final obs of a (t=2)
    for res in results[2:]:
        assert res.next_obs[0, 0].tolist() == [0.0, 0.0, 0.0]
        assert res.reward[0].tolist() == [0.0, 1.0]
        assert res.terminated[0, 0]
    assert [r.done[0] for r in results] == [False, False, False, True]
    (record,) = results[3].episodes
    assert record["agent_returns"] == {"a": 2.0, "b": 4.0}
    assert record["team_return"] == 6.0 and record["length"] == 4
