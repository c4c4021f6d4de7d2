"""Every mpe2 task on FastMPEVectorEnv, stepped in lockstep with mpe2 itself.

For each task and action type, 20 mpe2 envs (seeds 0-19) are reset, their states copied into one batched
FastMPEVectorEnv (env b = seed b), and both are stepped with the same random actions over a whole
episode. Observations, rewards, terminations and truncations must be *equal* (no tolerance: the port does
mpe2's float64 arithmetic in mpe2's order), and so must the float64 episode returns. Tasks with contacts or
events also run 6 crowded starts (agents, and collect_treasure's treasures, packed together), and the
test checks that the interesting branches really happened (contacts, captures, hidden agents in forests,
speed limits, silent messages, treasure pickups and deliveries), so that equality is not vacuous.
collect_treasure respawns treasures from a generator: the port draws them from the vector env's stream,
and this test replays each mpe2 env's stream through ``CollectTreasureScenario.draw_respawns``.
"""

from __future__ import annotations

import copy
import importlib
from collections import Counter
from typing import Any

import numpy as np
import pytest
from conftest import mpe_actions
from marl_stability.envs.fast_mpe import SUPPORTED_ENV_IDS, FastMPEVectorEnv
from marl_stability.envs.vector import AgentLayout

# Exact numbers that depend on numpy/OpenBLAS arithmetic: .ci/blas_kernels.py reruns these under every
# OpenBLAS kernel the machine can run.
pytestmark = pytest.mark.cpu_sensitive

SEEDS = 20
CROWDED_SEEDS = 6
# Tasks whose contacts / events need a crowded start to be exercised reliably.
CROWD_TASKS = ("simple_spread_v3", "simple_push_v3", "simple_tag_v3", "simple_world_comm_v3",
               "simple_formation_v1", "simple_line_v1", "collect_treasure_v1")


def _actions(rng: np.random.Generator, layout: AgentLayout, b: int) -> np.ndarray:
    """Slightly outside [0, 1] (clipping is exercised); 15% of agents send an all-negative row, which the
    env clips to all zeros (a silent message, standing still)."""
    acts = rng.uniform(-0.2, 1.2, size=(b, layout.num_agents, layout.max_act_dim))
    acts[rng.random((b, layout.num_agents)) < 0.15] = -0.1
    return acts.astype(np.float32)


def _crowd(raw: Any, rng: np.random.Generator) -> None:
    """Pack every agent (and collect_treasure's treasures) into a 0.3-wide square."""
    centre = rng.uniform(-0.5, 0.5, 2)
    movers = list(raw.world.agents)
    if raw.metadata["name"] == "collect_treasure_v1":
        movers += list(raw.world.landmarks)
    for entity in movers:
        entity.state.p_pos = centre + rng.uniform(-0.15, 0.15, 2)


class _Replay:
    """collect_treasure respawn draws taken from copies of each mpe2 env's generator, in mpe2's order."""

    def __init__(self, mpes: list[Any], num_deposits: int) -> None:
        self.mpes, self.num_deposits = mpes, num_deposits
        self.gens: list[Any] = []

    def snapshot(self) -> None:
        self.gens = [copy.deepcopy(m.unwrapped.world.np_random) for m in self.mpes]

    def __call__(self, rng: np.random.Generator, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, types = np.zeros((2,) + dead.shape), np.zeros(dead.shape, dtype=np.int64)
        for b, gen in enumerate(self.gens):
            for t in np.flatnonzero(dead[:, b]):
                assert gen.uniform() <= 1.0  # mpe2's respawn_prob test
                pos[:, t, b] = gen.uniform(-0.95, 0.95, 2)
                types[t, b] = int(gen.integers(0, self.num_deposits))
        return pos, types


def _coverage(raw: Any, rewards: dict[str, float], seen: Counter) -> None:
    """Count which branches of the dynamics this mpe2 step went through."""
    world, name = raw.world, raw.metadata["name"]
    ents = world.entities
    pos = np.array([e.state.p_pos for e in ents])
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    size = np.array([e.size for e in ents])
    collide = np.array([e.collide for e in ents])
    movable = np.array([e.movable for e in ents])
    pairs = np.triu(collide[:, None] & collide[None] & (movable[:, None] | movable[None]), k=1)
    seen["contact"] += int((pairs & (dist < size[:, None] + size[None])).sum())
    for agent in world.agents:
        if agent.max_speed is not None and abs(np.linalg.norm(agent.state.p_vel) - agent.max_speed) < 1e-9:
            seen["speed_limit"] += 1
    if name in ("simple_tag_v3", "simple_world_comm_v3") and rewards[world.agents[0].name] > 0:
        seen["capture"] += 1
    if name in ("simple_tag_v3", "simple_world_comm_v3"):  # a good agent past 0.9: its boundary penalty applies
        seen["boundary"] += int(any(np.abs(a.state.p_pos).max() >= 0.9 for a in world.agents if not a.adversary))
    if name == "simple_world_comm_v3":
        n, first_forest = len(world.agents), len(ents) - len(world.forests)
        inside = (dist[:n, first_forest:] < size[:n, None] + size[None, first_forest:]).any(axis=1)
        seen["hidden"] += int(inside.any() and not inside.all())
    if name == "simple_crypto_v3":
        seen["silent_message"] += sum(int(not a.state.c.any()) for a in world.agents[:2])
    if name == "collect_treasure_v1":
        seen["pickup"] += int(raw.scenario._cached_global_collecting > 0)
        seen["delivery"] += int(raw.scenario._cached_global_deposit > 0)


_EXPECTED = {
    "simple_push_v3": ("contact",),
    "simple_tag_v3": ("contact", "capture", "speed_limit", "boundary"),
    "simple_world_comm_v3": ("contact", "capture", "speed_limit", "hidden", "boundary"),
    "simple_spread_v3": ("contact",),
    "simple_formation_v1": ("contact",),
    "simple_line_v1": ("contact",),
    "simple_crypto_v3": ("silent_message",),
    "collect_treasure_v1": ("pickup", "delivery"),  # accel 1.5 never reaches max_speed 1.0
}


def _mpe_step(mpe: Any, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """pettingzoo's ``aec_to_parallel.step`` without its extra ``last()`` observations (they double the
    cost of mpe2's slow observation code): the same wrapped AEC env, stepped agent by agent."""
    aec = mpe.aec_env
    for agent in aec.agents:
        aec.step(actions[agent])
    rewards, terms, truncs = dict(aec.rewards), dict(aec.terminations), dict(aec.truncations)
    obs = {a: aec.observe(a) for a in aec.agents}
    while aec.agents and (aec.terminations[aec.agent_selection] or aec.truncations[aec.agent_selection]):
        aec.step(None)  # remove finished agents, as the parallel wrapper does
    mpe.agents = aec.agents
    return obs, rewards, terms, truncs


def _lockstep(env_id: str, kwargs: dict[str, Any], seeds: range, crowd: bool, seen: Counter,
              arrange: Any = None) -> None:
    """Run whole episodes of len(seeds) mpe2 envs and one batched port side by side; assert equality.

    ``arrange(raw_env, rng)`` may edit each mpe2 state before it is copied. An env whose episode ends
    early (``terminate_on_success``) is checked at that step and then left out (the port autoresets it).
    """
    module = importlib.import_module(f"mpe2.{env_id}")
    mpes = [module.parallel_env(**kwargs) for _ in seeds]
    obs_m = []
    for seed, mpe in zip(seeds, mpes):
        obs, _ = mpe.reset(seed=seed)
        if crowd or arrange is not None:
            (arrange or _crowd)(mpe.unwrapped, np.random.default_rng(seed + 777))
            obs = {a: mpe.unwrapped.observe(a) for a in mpe.possible_agents}
        obs_m.append(obs)
    fast = FastMPEVectorEnv(env_id, kwargs, len(seeds), 0)
    fast.reset()
    for b, mpe in enumerate(mpes):
        fast.set_state_from_mpe(b, mpe)
    replay = None
    if env_id == "collect_treasure_v1":
        replay = _Replay(mpes, fast.scenario.num_deposits)  # type: ignore[attr-defined]
        fast.scenario.draw_respawns = replay  # type: ignore[method-assign]
    lay = fast.layout
    live = list(range(len(seeds)))
    _assert_obs(env_id, -1, lay, fast.current_obs(), obs_m, live)
    returns = np.zeros((len(seeds), lay.num_agents))
    rng = np.random.default_rng(4242)
    for t in range(kwargs.get("max_cycles", 25)):
        acts = _actions(rng, lay, len(seeds))
        if replay is not None:
            replay.snapshot()
        res = fast.step(acts)
        for b in live:
            obs, rew, term, trunc = _mpe_step(mpes[b], mpe_actions(lay, acts[b]))
            obs_m[b] = obs
            _coverage(mpes[b].unwrapped, rew, seen)
            for i, agent in enumerate(lay.agents):
                assert res.reward[b, i] == np.float32(rew[agent]), (env_id, b, t, agent)
                returns[b, i] = returns[b, i] + rew[agent]
                assert bool(res.terminated[b, i]) == term[agent] and bool(res.truncated[b, i]) == trunc[agent]
            seen["terminated"] += int(all(term.values()))
            assert bool(res.done[b]) == (not mpes[b].agents)
        _assert_obs(env_id, t, lay, res.next_obs, obs_m, live)
        for ep in res.episodes:  # float64 sums of float64 rewards, in the same order: equal too
            b = ep["env_index"]
            if b not in live:
                continue  # the port's next episode of an env whose mpe2 twin has finished
            assert [ep["agent_returns"][a] for a in lay.agents] == returns[b].tolist()
            assert ep["length"] == t + 1
        live = [b for b in live if not res.done[b]]
    assert not live and all(not mpe.agents for mpe in mpes)
    for mpe in mpes:
        mpe.close()


def _assert_obs(env_id: str, t: int, lay: AgentLayout, ours: np.ndarray, theirs: list[dict[str, Any]],
                live: list[int]) -> None:
    for b in live:
        obs = theirs[b]
        for i, agent in enumerate(lay.agents):
            dim = lay.obs_dims[i]
            assert obs[agent].dtype == np.float32
            if not np.array_equal(ours[b, i, :dim], obs[agent]):
                bad = np.flatnonzero(ours[b, i, :dim] != obs[agent])
                pytest.fail(f"{env_id} env {b} step {t} {agent}: obs differs at {bad.tolist()}")
            assert not ours[b, i, dim:].any()  # padding stays zero


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "discrete"])
@pytest.mark.parametrize("env_id", SUPPORTED_ENV_IDS)
def test_lockstep_with_mpe2(env_id: str, continuous: bool) -> None:
    seen: Counter = Counter()
    kwargs = {"continuous_actions": continuous}
    _lockstep(env_id, kwargs, range(SEEDS), crowd=False, seen=seen)
    if env_id in CROWD_TASKS:
        _lockstep(env_id, kwargs, range(SEEDS, SEEDS + CROWDED_SEEDS), crowd=True, seen=seen)
    for branch in _EXPECTED.get(env_id, ()):
        if branch == "silent_message" and not continuous:
            continue  # a discrete message is always one-hot
        assert seen[branch] > 0, (env_id, branch, dict(seen))


@pytest.mark.parametrize(
    "env_id,kwargs",
    [
        ("simple_adversary_v3", {"N": 4, "max_cycles": 9}),
        ("simple_tag_v3", {"num_good": 3, "num_adversaries": 2, "num_obstacles": 3, "max_cycles": 9}),
        ("simple_world_comm_v3", {"num_good": 3, "num_adversaries": 2, "num_obstacles": 2, "num_food": 3,
                                  "num_forests": 3, "max_cycles": 9}),
        ("simple_formation_v1", {"N": 6, "max_cycles": 9}),
        ("simple_line_v1", {"N": 3, "max_cycles": 9}),
        ("collect_treasure_v1", {"num_collectors": 4, "num_deposits": 3, "num_treasures": 5, "max_cycles": 9}),
    ],
)
def test_lockstep_task_options(env_id: str, kwargs: dict[str, Any]) -> None:
    for continuous in (True, False):
        _lockstep(env_id, {**kwargs, "continuous_actions": continuous}, range(6), crowd=True, seen=Counter())


def _on_target(raw: Any, rng: np.random.Generator) -> None:
    """Put the episode one step from mpe2's success test (positions do not change on the first step:
    mpe2 moves by the velocity before the update, and velocities start at zero)."""
    world, name = raw.world, raw.metadata["name"]
    agents, jitter = world.agents, rng.uniform(-0.01, 0.01, (len(world.agents), 2))
    if name == "simple_spread_v3":
        for agent, lm, d in zip(agents, world.landmarks, jitter):
            agent.state.p_pos = lm.state.p_pos + d
    elif name == "simple_tag_v3":
        good = [a for a in agents if not a.adversary]
        for prey, d in zip(good, jitter):
            prey.state.p_pos = agents[0].state.p_pos + d
    elif name == "simple_formation_v1":
        centre, n = world.landmarks[0].state.p_pos, len(agents)
        for i, (agent, d) in enumerate(zip(agents, jitter)):
            angle = 0.3 + i * 2 * np.pi / n
            agent.state.p_pos = centre + 0.5 * np.array([np.cos(angle), np.sin(angle)]) + d
    else:  # simple_line_v1
        for agent, target, d in zip(agents, raw.scenario._expected_positions, jitter):
            agent.state.p_pos = target + d


@pytest.mark.parametrize("env_id", ["simple_spread_v3", "simple_tag_v3", "simple_formation_v1", "simple_line_v1"])
def test_lockstep_terminate_on_success(env_id: str) -> None:
    """mpe2's ``terminate_on_success``: episodes started on target end by termination after one step in
    both; plain starts (tag: crowded, where captures end episodes) run on to success or truncation."""
    for continuous in (True, False):
        kwargs = {"continuous_actions": continuous, "terminate_on_success": True, "max_cycles": 12}
        on_target: Counter = Counter()
        _lockstep(env_id, kwargs, range(6), crowd=False, seen=on_target, arrange=_on_target)
        assert on_target["terminated"] == 6, dict(on_target)  # every env started on target
        plain: Counter = Counter()
        _lockstep(env_id, kwargs, range(6, 14), crowd=env_id == "simple_tag_v3", seen=plain)
        if env_id == "simple_tag_v3":
            assert plain["terminated"] > 0, dict(plain)  # some crowded episodes ended by capture
