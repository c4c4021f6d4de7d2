"""Plasticity and representation metrics of the trained networks, on the batch an update trained on.

Definitions (every network, every ``plasticity.every`` updates; ``F`` is the penultimate feature matrix
``[B, W]``: the last hidden layer's output for the B states of the update batch, at most
``plasticity.max_batch`` of them, evenly spaced):

- **tau-dormant units** (Sokar, Agarwal, Castro, Evci 2023, "The Dormant Neuron Phenomenon in Deep
  Reinforcement Learning", ICML, arXiv 2302.12902). Unit i of a hidden layer with H units has the score
  ``s_i = E_x|h_i(x)| / ((1/H) sum_k E_x|h_k(x)|)`` (expectations over the batch, ``h`` the unit's output after
  its activation, before a residual addition); it is tau-dormant when ``s_i <= tau``. ``tau = 0`` counts
  exactly dead units (zero on every state of the batch); the default second threshold ``0.1`` also counts
  units whose mean output is at most a tenth of the layer's average (nearly dead, still drifting). Reported
  per hidden layer and over all hidden units of the network. A layer whose units are all zero has no mean
  to compare with: all its units count as dormant (at every tau).
- **effective rank** ``eff_rank`` (Roy & Vetterli 2007, "The effective rank: a measure of effective
  dimensionality", EUSIPCO): ``exp(-sum_k p_k ln p_k)`` with ``p_k = sigma_k / sum_j sigma_j`` over the singular
  values of F. A real number in [1, min(B, W)]; it falls as the features collapse onto fewer directions.
  "Effective rank" in this project's tags and summaries means this one.
- **srank** (Kumar, Agarwal, Ghosh, Levine 2021, "Implicit Under-Parameterization Inhibits Data-Efficient
  Deep Reinforcement Learning", ICLR): ``min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta}``, delta 0.01:
  the number of singular values that hold 99% of their sum. An integer in [1, min(B, W)].
- **stable rank** ``||F||_F^2 / ||F||_2^2 = sum_k sigma_k^2 / sigma_1^2``: in [1, rank F]; sensitive to one
  dominant direction (Plasticine and Lyle et al. log it next to the effective rank).
- **feature norm**: the mean over the batch of the L2 norm of a state's feature vector ``||F_b||_2``; its
  growth goes with rank collapse (Moalla et al. 2024, "No Representation, No Trust", NeurIPS).

The ranks are of the raw (uncentred) feature matrix, as Kumar et al. define srank; the singular values are
computed in float64 (from the Gram matrix). A feature matrix of zeros has rank 0 (all three ranks 0, norm 0); a network whose
features hold a NaN or an infinity reports NaN for every metric of that measurement.

How the features are obtained: the algorithm names its networks and the inputs they saw in the last update
(``Algorithm.feature_probes``: the states actually trained on, after observation normalization); one extra
forward pass of each network's hidden layers runs under ``torch.no_grad`` in eval mode (so BatchNorm uses
its running statistics and updates nothing), with forward hooks on the activation modules that exist only
for that pass. No parameter, buffer, gradient or random stream is touched: enabling the metrics leaves the
training numbers bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

SRANK_DELTA = 0.01  # Kumar et al. 2021
RANK_METRICS = ("eff_rank", "srank", "stable_rank", "feature_norm")


@dataclass
class FeatureProbe:
    """One network to measure: its name (the tag part, e.g. ``actor/agent_0``), the module (switched to eval
    mode for the pass), the modules whose outputs are its hidden units (one per hidden layer, in depth order),
    the function from inputs to penultimate features ``[B, W]`` (calling it runs those modules), and the
    inputs of the update batch (rows = states)."""

    name: str
    network: nn.Module
    units: Sequence[nn.Module]
    features: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor


def tau_label(tau: float) -> str:
    """``0.0`` -> ``"0"``, ``0.1`` -> ``"0.1"``: the tau in tags (``dormant_tau0.1``) and summary keys."""
    return f"{tau:g}"


def metric_names(taus: Sequence[float], hidden_layers: int) -> list[str]:
    """The keys ``measure`` returns for a network with this many hidden layers, in order."""
    names = [f"dormant_tau{tau_label(t)}/{layer}" for t in taus
             for layer in [*(f"hidden{k}" for k in range(hidden_layers)), "all"]]
    return names + list(RANK_METRICS)


def even_rows(n: int, max_rows: int) -> slice:
    """At most ``max_rows`` of ``n`` rows, evenly spaced from the first (no random draw: nothing else moves)."""
    return slice(None, None, max(1, math.ceil(n / max_rows)))


# --------------------------------------------------------------------------- the definitions
def mean_abs_output(h: torch.Tensor) -> torch.Tensor:
    """``E_x|h_i(x)|`` of every unit of a layer's outputs ``[B, H]`` -> ``[H]`` (averaged in the outputs' dtype,
    returned as float64; an all-zero unit stays exactly 0)."""
    return h.reshape(-1, h.shape[-1]).abs().mean(dim=0).double()


def dormant_counts(mean_abs: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """How many units of a layer are tau-dormant, from their ``E|h_i|`` ``[H]``, for each tau ``[T]`` -> ``[T]``.

    Compares ``E|h_i| <= tau * mean_k E|h_k|`` (the score's definition without its division, so an all-zero layer
    counts every unit as dormant and ``tau = 0`` is an exact test for zero)."""
    return (mean_abs.unsqueeze(0) <= taus.to(mean_abs.dtype).unsqueeze(1) * mean_abs.mean()).sum(dim=1)


def singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values of the feature matrix ``[B, W]`` in float64, largest first: the square roots of the
    eigenvalues of its smaller Gram matrix (``F^T F`` when B >= W), ~3x faster than an SVD of F. A singular value
    below ~1e-8 of the largest comes out as ~1e-8 of it or 0; it counts for nothing in the ranks either way."""
    f = features.reshape(-1, features.shape[-1]).double()
    gram = f.T @ f if f.shape[0] >= f.shape[1] else f @ f.T
    return torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt().flip(0)


def effective_rank(sv: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli's effective rank from singular values (0 for a zero matrix)."""
    total = sv.sum()
    if total <= 0:
        return torch.zeros((), dtype=sv.dtype)
    p = sv / total
    return torch.exp(-torch.special.xlogy(p, p).sum())


def srank(sv: torch.Tensor, delta: float = SRANK_DELTA) -> torch.Tensor:
    """Kumar et al.'s srank_delta: the fewest leading singular values holding 1 - delta of their sum (0 for a
    zero matrix)."""
    total = sv.sum()
    if total <= 0:
        return torch.zeros((), dtype=sv.dtype)
    short = torch.cumsum(sv, 0) < (1.0 - delta) * total  # prefixes that still hold less than 1 - delta
    return (short.sum() + 1).to(sv.dtype)


def stable_rank(sv: torch.Tensor) -> torch.Tensor:
    """``sum sigma^2 / max sigma^2`` (0 for a zero matrix)."""
    top = sv.max() if sv.numel() else torch.zeros((), dtype=sv.dtype)
    if top <= 0:
        return torch.zeros((), dtype=sv.dtype)
    return (sv ** 2).sum() / top ** 2


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of the L2 norm of each row of ``[B, W]``."""
    return features.reshape(-1, features.shape[-1]).norm(dim=1).double().mean()


def metrics_of(layers: Sequence[torch.Tensor], features: torch.Tensor, taus: Sequence[float]) -> dict[str, float]:
    """Every metric of one network from its hidden layers' unit outputs and its penultimate features (the keys
    of ``metric_names``); one host transfer."""
    names = metric_names(taus, len(layers))
    mean_abs = [mean_abs_output(h) for h in layers]
    norm = feature_norm(features)
    # A NaN or an infinity anywhere reaches these reductions: one check (and one sync) instead of one per tensor.
    if not bool(torch.isfinite(torch.cat([*mean_abs, norm.reshape(1)])).all()):
        return dict.fromkeys(names, float("nan"))
    tau_t = torch.tensor(list(taus), dtype=torch.float64)
    counts = torch.stack([dormant_counts(m, tau_t) for m in mean_abs], dim=1).double()  # [T, L]
    widths = torch.tensor([m.shape[0] for m in mean_abs], dtype=torch.float64)
    fractions = torch.cat([counts / widths, (counts.sum(dim=1) / widths.sum()).unsqueeze(1)], dim=1)  # [T, L + 1]
    sv = singular_values(features)
    ranks = torch.stack([effective_rank(sv), srank(sv), stable_rank(sv), norm])
    values = torch.cat([fractions.reshape(-1), ranks]).tolist()
    return dict(zip(names, values))


# --------------------------------------------------------------------------- one extra forward pass
@torch.no_grad()
def measure(probe: FeatureProbe, taus: Sequence[float], max_batch: int) -> dict[str, float]:
    """The metrics of one network on (at most ``max_batch`` evenly spaced rows of) its probe's inputs."""
    x = probe.inputs[even_rows(probe.inputs.shape[0], max_batch)]
    captured: list[torch.Tensor] = []
    handles = [u.register_forward_hook(lambda _m, _i, out: captured.append(out)) for u in probe.units]
    modes = [(m, m.training) for m in probe.network.modules()]
    try:
        for m, _ in modes:
            m.training = False  # eval mode: BatchNorm reads its running statistics and updates none
        features = probe.features(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    if len(captured) != len(probe.units):
        raise RuntimeError(f"plasticity probe {probe.name}: {len(captured)} unit outputs captured in one pass, "
                           f"expected {len(probe.units)} (one per hidden layer)")
    return metrics_of(captured, features, taus)


def measure_all(probes: Sequence[FeatureProbe], taus: Sequence[float], max_batch: int) -> dict[str, dict[str, float]]:
    """``{network name: {metric: value}}`` for every probe."""
    return {p.name: measure(p, taus, max_batch) for p in probes}


def tag_of(network: str, metric: str) -> str:
    """``plasticity/<metric>/<network>[/<layer>]``: ``dormant_tau0/hidden1`` of ``actor/agent_0`` ->
    ``plasticity/dormant_tau0/actor/agent_0/hidden1``; ``eff_rank`` -> ``plasticity/eff_rank/actor/agent_0``."""
    head, _, layer = metric.partition("/")
    return f"plasticity/{head}/{network}" + (f"/{layer}" if layer else "")
