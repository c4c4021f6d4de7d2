"""The shared reward of simple_formation_v1 and simple_line_v1: agents matched to target positions by an
optimal assignment (mpe2 uses scipy's ``linear_sum_assignment``), reward ``-mean(clip(distance, 0, 2))``."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import NORM_IS_ELEMENTWISE, norm_by_ddot

DIST_THRESHOLD = 0.05  # terminate_on_success: every agent this close to its assigned target

# Up to this many agents every permutation is scored at once (7! = 5040); above it, scipy per env.
_BRUTE_FORCE_MAX = 7
# Up to this many agents the permutations' summed distances are gathered and added row by row (5! = 120 rows);
# above it one matrix product (a BLAS call, whose thread start-up costs more than the sums at small sizes).
_GATHER_MAX = 5


@lru_cache(maxsize=None)
def _permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every permutation σ of n agents ([P, N]) and the 0/1 matrix [P, N*N] that sums d[i, σ(i)]."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
    select = np.zeros((perms.shape[0], n * n))
    select[np.arange(perms.shape[0])[:, None], np.arange(n)[None, :] * n + perms] = 1.0
    return perms, select


@lru_cache(maxsize=None)
def _permutation_rows(n: int) -> np.ndarray:
    """[N, P]: the row ``i * N + σ(i)`` of ``d[i, σ(i)]`` in the [N*N, B] distances, for every permutation σ."""
    return np.ascontiguousarray((np.arange(n)[None, :] * n + _permutations(n)[0]).T)


@lru_cache(maxsize=None)
def _row_offsets(n: int, b: int) -> np.ndarray:
    """[N, B] flat index of ``d[i, 0, k]`` in a C-ordered [N, N, B] array: ``i * N * B + k``."""
    return np.arange(n)[:, None] * (n * b) + np.arange(b)[None, :]


def _best_assignment(dist: np.ndarray) -> np.ndarray:
    """[N, B] target index of each agent under the assignment minimising the summed distance ``dist`` [N, N, B]."""
    n, b = dist.shape[0], dist.shape[2]
    if n > _BRUTE_FORCE_MAX:
        from scipy.optimize import linear_sum_assignment

        return np.stack([linear_sum_assignment(dist[:, :, k])[1] for k in range(b)], axis=1)
    perms, select = _permutations(n)
    flat = dist.reshape(n * n, b)
    if n <= _GATHER_MAX:
        terms = flat.take(_permutation_rows(n), axis=0)  # [N, P, B]: d[i, σ(i)] of every permutation
        total = terms[0]
        for i in range(1, n):
            total = total + terms[i]
    else:
        total = select @ flat
    return perms[np.argmin(total, axis=0)].T


def matched_distance_reward(agent_pos: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([B] ``-mean(clip(d[i, σ(i)], 0, 2))``, [N, B] ``d[i, σ(i)]``) for the assignment σ minimising the
    summed distance.

    ``agent_pos`` and ``targets`` are [2, N, B]. mpe2's ``d[i, j]`` is ``np.linalg.norm(agent_i - target_j)``,
    a BLAS ``ddot`` whose last bit depends on the CPU's kernel: the chosen distances are computed the same way
    (:func:`~envs.fast_mpe_tasks.base.norm_like_linalg`'s rule) and averaged in numpy's order, so the reward equals
    mpe2's on every CPU. Only the *choice* of σ uses the cheaper ``sqrt(dx*dx + dy*dy)`` for all N*N pairs
    (the summed distance of every permutation): the optimum is unique for positions in general position, but
    under a fused ``ddot`` kernel two assignments whose summed distances differ by a few ulps could be ranked
    differently from scipy's (which sees mpe2's norms); the reward is then that of another, equally good
    assignment up to rounding, except that the clip at 2 can make the difference larger. Not seen in the
    lockstep tests.
    """
    delta = agent_pos[:, :, None, :] - targets[:, None, :, :]  # [2, N, N, B]
    sq = delta * delta
    dist = np.sqrt(sq[0] + sq[1])  # [N agents, N targets, B], C-ordered
    n, b = dist.shape[0], dist.shape[2]
    best = _best_assignment(dist)
    pairs = _row_offsets(n, b) + best * b  # [N, B]: flat index of pair (i, best[i, k]) in env k
    if NORM_IS_ELEMENTWISE:  # dist already holds mpe2's norms bit for bit
        chosen = dist.ravel().take(pairs)  # [N, B]: d[i, best[i, k], k]
    else:  # a fused ddot kernel: recompute the chosen distances through the same ddot as mpe2's norm
        chosen = norm_by_ddot(delta.reshape(2, -1)[:, pairs])
    clipped = np.ascontiguousarray(np.clip(chosen, 0, 2).T)  # [B, N]: np.mean's summation per env
    return -(np.add.reduce(clipped, axis=1) / n), chosen


def shared_rows(shared: np.ndarray, n: int) -> np.ndarray:
    """[N, B] copy of the [B] shared reward, one row per agent."""
    out = np.empty((n, shared.shape[0]))
    out[:] = shared
    return out
