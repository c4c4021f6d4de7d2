"""The shared reward of simple_formation_v1 and simple_line_v1: agents matched to target positions by an
optimal assignment (mpe2 uses scipy's ``linear_sum_assignment``), reward ``-mean(clip(distance, 0, 2))``."""

from __future__ import annotations

import itertools

import numpy as np

# Up to this many agents every permutation is scored at once (7! = 5040); above it, scipy per env.
_BRUTE_FORCE_MAX = 7


def matched_distance_reward(agent_pos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[B] ``-mean(clip(d[i, σ(i)], 0, 2))`` for the assignment σ minimising the summed distance.

    ``agent_pos`` and ``targets`` are [2, N, B]. ``d[i, j] = |agent_i - target_j|`` with mpe2's
    ``np.linalg.norm`` arithmetic (``sqrt(dx*dx + dy*dy)``). The optimum is unique for positions in general
    position; two assignments whose summed distances tie to the last bit could be resolved differently
    from scipy (the reward would then differ by rounding only).
    """
    delta = agent_pos[:, :, None, :] - targets[:, None, :, :]  # [2, N, N, B]
    sq = delta * delta
    dist = np.sqrt(sq[0] + sq[1])  # [N agents, N targets, B]
    n, b = dist.shape[0], dist.shape[2]
    if n <= _BRUTE_FORCE_MAX:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)  # [P, N]
        cost = dist[np.arange(n)[None, :], perms].sum(axis=1)  # [P, B]
        best = perms[np.argmin(cost, axis=0)]  # [B, N]
    else:
        from scipy.optimize import linear_sum_assignment

        best = np.stack([linear_sum_assignment(dist[:, :, k])[1] for k in range(b)])
    chosen = dist[np.arange(n)[:, None], best.T, np.arange(b)[None, :]]  # [N, B]
    clipped = np.ascontiguousarray(np.clip(chosen, 0, 2).T)  # [B, N]: np.mean's summation per env
    return -clipped.mean(axis=1)
