"""The shared reward of simple_formation_v1 and simple_line_v1: agents matched to target positions by an
optimal assignment (mpe2 uses scipy's ``linear_sum_assignment``), reward ``-mean(clip(distance, 0, 2))``."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

DIST_THRESHOLD = 0.05  # terminate_on_success: every agent this close to its assigned target

# Up to this many agents every permutation is scored at once (7! = 5040); above it, scipy per env.
_BRUTE_FORCE_MAX = 7


@lru_cache(maxsize=None)
def _permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every permutation σ of n agents ([P, N]) and the 0/1 matrix [P, N*N] that sums d[i, σ(i)]."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
    select = np.zeros((perms.shape[0], n * n))
    select[np.arange(perms.shape[0])[:, None], np.arange(n)[None, :] * n + perms] = 1.0
    return perms, select


def matched_distance_reward(agent_pos: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([B] ``-mean(clip(d[i, σ(i)], 0, 2))``, [N, B] ``d[i, σ(i)]``) for the assignment σ minimising the
    summed distance.

    ``agent_pos`` and ``targets`` are [2, N, B]. ``d[i, j] = |agent_i - target_j|`` with mpe2's
    ``np.linalg.norm`` arithmetic (``sqrt(dx*dx + dy*dy)``); the chosen distances are averaged in numpy's
    order, so the reward equals mpe2's. Only the *choice* of σ uses other arithmetic (a matrix product
    scores all permutations): the optimum is unique for positions in general position, and two
    assignments whose summed distances tie to the last bit could be resolved differently from scipy
    (the reward would then differ by rounding only).
    """
    delta = agent_pos[:, :, None, :] - targets[:, None, :, :]  # [2, N, N, B]
    sq = delta * delta
    dist = np.sqrt(sq[0] + sq[1])  # [N agents, N targets, B]
    n, b = dist.shape[0], dist.shape[2]
    if n <= _BRUTE_FORCE_MAX:
        perms, select = _permutations(n)
        best = perms[np.argmin(select @ dist.reshape(n * n, b), axis=0)].T  # [N, B]
    else:
        from scipy.optimize import linear_sum_assignment

        best = np.stack([linear_sum_assignment(dist[:, :, k])[1] for k in range(b)], axis=1)
    chosen = np.take_along_axis(dist, best[:, None, :], axis=1)[:, 0]  # [N, B]
    clipped = np.ascontiguousarray(np.clip(chosen, 0, 2).T)  # [B, N]: np.mean's summation per env
    return -(np.add.reduce(clipped, axis=1) / n), chosen
