"""Evaluation: E episodes of the noise-free policy on fresh env copies. Returns raw samples only (the
``evaluation`` hook and the detectors derive every metric from them); observation statistics stay frozen."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from marl_stability.config import RunConfig
from marl_stability.core.build import make_venv
from marl_stability.core.events import EvaluationEvent
from marl_stability.errors import UserError

MAX_EVAL_STEPS = 100_000


def eval_seed(cfg: RunConfig, index: int) -> int:
    """Depends only on (seed, evaluation index): evaluation never perturbs training randomness."""
    return cfg.seed * 100_003 + 7919 * index


def evaluate(cfg: RunConfig, algorithm: Any, fixes: Any, index: int) -> EvaluationEvent:
    """The ``index``-th evaluation (1-based). Besides the episodes it records, for the value check, the
    algorithm's value estimate at the first state and the discounted learner return observed from it."""
    n = cfg.train.eval_episodes
    venv = make_venv(cfg, n, eval_seed(cfg, index))
    try:
        return _run_episodes(cfg, algorithm, fixes, venv, n, index)
    finally:
        venv.close()


def _run_episodes(cfg: RunConfig, algorithm: Any, fixes: Any, venv: Any, n: int, index: int) -> EvaluationEvent:
    obs = venv.reset()
    value_initial = algorithm.value_estimates(obs)  # [n, N] or None
    mc_return = np.zeros((n, venv.layout.num_agents))
    discount = np.ones(n)
    first: dict[int, dict[str, Any]] = {}
    observed, taken, counted = [], [], []  # full [n, ...] arrays and which rows count for the statistics
    fresh = np.ones(n, bool)
    for _ in range(MAX_EVAL_STEPS):
        actions = algorithm.act(obs, explore=False)
        step = venv.step(actions)
        live = np.array([b not in first for b in range(n)])  # only each env's first episode counts
        observed.append(obs)
        taken.append(actions)
        counted.append(live & ~fresh)  # a consecutive pair (t-1, t) inside one first episode
        learner_reward = fixes.reward(torch.as_tensor(step.reward)).numpy()
        mc_return += np.where(live[:, None], discount[:, None] * learner_reward, 0.0)
        discount *= algorithm.gamma
        fresh = step.done.copy()
        for ep in step.episodes:
            first.setdefault(int(ep["env_index"]), ep)
        if len(first) == n:
            break
        obs = step.obs
    else:
        raise UserError(f"evaluation: {n - len(first)} of {n} episodes of {cfg.env.id} did not end within "
                        f"{MAX_EVAL_STEPS} steps")
    episodes = [first[i] for i in sorted(first)]
    return EvaluationEvent(index, episodes, observed, taken, counted,
                           value_initial=value_initial, value_return=mc_return if value_initial is not None else None)
