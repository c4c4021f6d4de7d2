"""Gradient / weight / action monitor for any actor-critic training loop (no dependence on our trainer).

Usage::

    from marl_stability.hooks import monitor
    mon = monitor.attach(models={"actor/agent_0": actor, "critic/agent_0": critic}, writer="runs/x")
    loss.backward()
    mon.after_backward(step)          # pre-clip grad norms, weight norms, non-finite grads
    torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
    mon.after_clip(step)              # post-clip norms, clip fraction
    optimizer.step()
    mon.after_step(step)              # update-to-weight ratios, non-finite parameters
    mon.actions(actions, step, agent="agent_0", low=0.0, high=1.0, preact=pre)

Tag names (stable; our trainer and detectors use the same ones):

- ``grad_norm/<model>``, ``layers/grad_norm/<model>/<param>``, ``layers/weight_norm/<model>/<param>``,
  ``health/nonfinite_grads/<model>``  (after_backward)
- ``optim/grad_norm_postclip/<model>``, ``optim/clip_active/<model>``, ``optim/clip_fraction/<model>``  (after_clip)
- ``optim/update_ratio/<model>``, ``layers/update_ratio/<model>/<param>``, ``health/nonfinite_params/<model>``
  (after_step)
- ``policy/saturation/<agent>``, ``policy/repeat_rate/<agent>``, ``policy/batch_same_action/<agent>``,
  ``policy/preact_max_abs/<agent>``, ``policy/preact_mean_abs/<agent>``; histograms ``hist/actions/<agent>/dim<k>``
  and ``hist/preact/<agent>``  (actions)
- ``policy/sensitivity/<agent>``  (sensitivity)
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from marl_stability.core.events import GradEvent
from marl_stability.core.sinks import Logger, TensorBoardSink
from marl_stability.fixes.objects import ClipStats, GradNorms, measure_grads
from marl_stability.tags import current_tag

__all__ = [
    "Monitor",
    "MonitorStats",
    "GradientStats",
    "attach",
    "global_grad_norm",
    "saturation_fraction",
    "squashed_saturation",
    "repeated_action_rate",
    "sequence_repeat_rate",
    "discrete_saturation",
    "batch_same_action_rate",
    "action_sensitivity",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | float

_RATIO_EPS = 1e-12  # keeps the update ratio finite for an all-zero weight tensor
_CLIP_RTOL = 1e-6  # post-clip norm must drop by more than this (relative) to count as clipped


# --------------------------------------------------------------------------- pure functions
def _as_tensor(x: ArrayLike) -> torch.Tensor:
    """Detached tensor view of a tensor / ndarray / list (no copy where possible)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not t.is_floating_point():
        t = t.to(torch.float64)  # integer (discrete) actions: comparisons with atol need floats
    return t


def _as_2d(x: ArrayLike) -> torch.Tensor:
    """[batch, act_dim]; a 1-D input is one action component per row (e.g. a batch of discrete actions)."""
    t = _as_tensor(x)
    if t.ndim == 0:
        return t.reshape(1, 1)
    if t.ndim == 1:
        return t.reshape(-1, 1)
    return t.reshape(t.shape[0], -1)


def _stack_norms(norms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack 0-dim norms into one float64 vector (one host transfer later instead of one per tensor)."""
    try:
        return torch.stack(list(norms)).to(torch.float64)
    except RuntimeError:  # models spread over several devices
        dev = norms[0].device
        return torch.stack([n.to(dev) for n in norms]).to(torch.float64)


def _foreach_norm(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-tensor L2 norms in one fused kernel (``torch._foreach_norm`` rejects an empty list)."""
    return list(torch._foreach_norm(list(tensors))) if tensors else []


def _norms(tensors: Sequence[torch.Tensor]) -> list[float]:
    """L2 norm of each tensor, as Python floats, with one fused kernel and one host sync."""
    if not tensors:
        return []
    return _stack_norms(_foreach_norm(tensors)).tolist()


def _combine(norms: Sequence[float]) -> float:
    """Global L2 norm from per-tensor norms: sqrt(sum n_i^2) == sqrt(sum over every element g^2)."""
    return math.sqrt(math.fsum(n * n for n in norms))


def _count_nonfinite(norms: Sequence[float], tensors: Sequence[torch.Tensor]) -> int:
    """Tensors holding a NaN/Inf, given their norms: a non-finite element makes the norm non-finite, so
    only those tensors are checked exactly (a finite tensor can still overflow its norm)."""
    return sum(1 for n, t in zip(norms, tensors) if not math.isfinite(n) and not bool(torch.isfinite(t).all()))


def _copy(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies; one fused kernel on accelerators, where launches dominate; plain clones on CPU,
    where ``_foreach_mul`` measured slower."""
    if not tensors:
        return []
    if tensors[0].device.type == "cpu":
        return [t.detach().clone() for t in tensors]
    return list(torch._foreach_mul(tensors, 1.0))


def global_grad_norm(module: nn.Module) -> float:
    """Global L2 norm of all gradients of ``module`` (0.0 if none has a gradient): the measurement the
    clippers use (``fixes.measure_grads``)."""
    return measure_grads(module.parameters()).total


def saturation_fraction(actions: ArrayLike, low: ArrayLike, high: ArrayLike, margin: float = 0.01) -> float:
    """Fraction of action components within ``margin * (high - low)`` of either bound (or beyond it).

    ``low``/``high`` are scalars or per-dimension arrays (broadcast over the batch). Components with an
    infinite range are never counted as saturated (there is no bound to sit at).
    """
    a = _as_2d(actions)
    lo = torch.as_tensor(np.asarray(low, np.float64), dtype=a.dtype, device=a.device)
    hi = torch.as_tensor(np.asarray(high, np.float64), dtype=a.dtype, device=a.device)
    span = hi - lo
    tol = margin * span
    near = ((a - lo <= tol) | (hi - a <= tol)) & torch.isfinite(span)
    return float(near.to(torch.float64).mean()) if a.numel() else float("nan")


def squashed_saturation(y: ArrayLike, bound: float = 0.99) -> float:
    """Fraction of squashed outputs (tanh/softsign values in (-1, 1)) with ``|y| > bound``."""
    t = _as_tensor(y)
    return float((t.abs() > bound).to(torch.float64).mean()) if t.numel() else float("nan")


def repeated_action_rate(prev: ArrayLike, cur: ArrayLike, atol: float = 1e-3) -> float:
    """Fraction of rows whose action moved by at most ``atol`` in every component since ``prev``.

    Rows are matched by index (row i = env copy i); if the batch size changed, only the common leading
    rows are compared. NaN actions never count as repeated.
    """
    p, c = _as_2d(prev), _as_2d(cur)
    n = min(p.shape[0], c.shape[0])
    if n == 0 or p.shape[1] != c.shape[1]:
        return float("nan")
    p = p[:n].to(device=c.device, dtype=torch.promote_types(p.dtype, c.dtype))
    return float(_unchanged(p, c[:n], atol).to(torch.float64).mean())


def _unchanged(prev: Any, cur: Any, atol: float) -> Any:
    """Per row (leading axes), whether no component moved by more than ``atol`` (NaN counts as moved)."""
    return (abs(cur - prev) <= atol).all(-1) if isinstance(cur, torch.Tensor) else (np.abs(cur - prev) <= atol).all(-1)


def sequence_repeat_rate(seq: np.ndarray, counted: np.ndarray, atol: float = 1e-3) -> float:
    """Repeated-action rate over a sequence of batched actions ``seq`` [T, n, d]: the share of consecutive
    pairs (t-1, t) with ``counted[t-1]`` [T-1, n] true (same episode) whose action did not move by more
    than ``atol``. NaN when no pair counts."""
    if seq.shape[0] < 2:
        return float("nan")
    pairs = _unchanged(seq[:-1], seq[1:], atol)[np.asarray(counted, bool)]
    return float(pairs.mean()) if pairs.size else float("nan")


def discrete_saturation(probs: ArrayLike, threshold: float = 0.99) -> float:
    """Saturation of a categorical policy: the share of states whose most likely action has probability
    at least ``threshold`` (a deterministic, one-hot-like policy)."""
    t = _as_tensor(probs)
    return float((t.max(dim=-1).values >= threshold).float().mean()) if t.numel() else float("nan")


def batch_same_action_rate(actions: ArrayLike, atol: float = 1e-3, max_rows: int = 256) -> float:
    """Fraction of distinct-row pairs whose actions agree within ``atol`` in every component.

    Measures "different states mapped to the same action". Uses the first ``max_rows`` rows (deterministic,
    bounds the O(n^2) pair count). NaN with fewer than two rows.
    """
    a = _as_2d(actions)[:max_rows]
    n = a.shape[0]
    if n < 2:
        return float("nan")
    # Chebyshev distance of every pair; n <= 256 so the [n, n, d] intermediate is tiny.
    dist = (a.unsqueeze(1) - a.unsqueeze(0)).abs().amax(dim=2)
    close = dist <= atol
    pairs_same = (int(close.sum()) - int(close.diagonal().sum())) / 2  # drop i == j, count i < j once
    return pairs_same / (n * (n - 1) / 2)


def action_sensitivity(policy: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor) -> float:
    """Batch mean of the Frobenius norm of the per-sample Jacobian d action / d obs.

    One backward pass per action dimension (act_dim is small); assumes samples do not interact inside
    ``policy`` (true for MLPs; not for train-mode batch norm). Parameter ``.grad`` fields are untouched.
    """
    x = obs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = policy(x)
        out = out.reshape(out.shape[0], -1) if out.ndim > 1 else out.reshape(-1, 1)
        if not out.requires_grad:  # constant policy: output not connected to obs at all
            return 0.0
        sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for k in range(out.shape[1]):
            (g,) = torch.autograd.grad(
                out[:, k].sum(), x, retain_graph=k + 1 < out.shape[1], allow_unused=True
            )
            if g is not None:  # None: this output does not depend on obs
                sq += g.reshape(x.shape[0], -1).to(torch.float64).pow(2).sum(dim=1)
    return float(sq.sqrt().mean()) if x.shape[0] else float("nan")


def _make_logger(writer: Any) -> tuple[Logger | None, bool]:
    """(logger, whether we own it)."""
    if writer is None:
        return None, False
    if isinstance(writer, Logger):
        return writer, False
    if isinstance(writer, (str, os.PathLike)):
        return Logger([TensorBoardSink(writer)]), True
    if hasattr(writer, "add_scalar") and hasattr(writer, "add_histogram"):
        return Logger([TensorBoardSink(writer=writer)]), False
    if hasattr(writer, "scalar") and hasattr(writer, "histogram"):  # a bare sink (e.g. MemorySink)
        return Logger([writer]), False
    raise TypeError(f"writer must be None, a path, a SummaryWriter or a Logger, not {type(writer).__name__}")


# --------------------------------------------------------------------------- gradient statistics

class MonitorStats(dict):
    """What a monitor call returns: ``{tag: value}``. A key renamed by the 0.2.0 tag regrouping (for example
    ``grad_norm_postclip/q``, now ``optim/grad_norm_postclip/q``) is still answered, with a FutureWarning,
    until 0.3.0, so a loop that reads the old names does not silently get ``None`` (see CHANGELOG.md)."""

    def _renamed(self, key: object) -> str | None:
        if not isinstance(key, str):
            return None
        new = current_tag(key)
        if new == key or not dict.__contains__(self, new):
            return None
        warnings.warn(f"monitor key {key!r} is now {new!r} (renamed in marl-stability 0.2.0); the old name "
                      "stops working in 0.3.0", FutureWarning, stacklevel=3)
        return new

    def __missing__(self, key: str) -> float:
        new = self._renamed(key)
        if new is None:
            raise KeyError(key)
        return dict.__getitem__(self, new)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._renamed(key) is not None

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        new = self._renamed(key)
        return default if new is None else dict.__getitem__(self, new)

class GradientStats:
    """Gradient statistics of named networks, from the one measurement taken after backward (a ``GradEvent``
    carrying ``fixes.GradNorms``). One implementation serves the training loop's ``gradients`` hook and
    :class:`Monitor` in a user's own loop; neither measures the gradients again.

    ``backward``: pre-clip global norm, non-finite gradient count; with ``names`` (per-layer statistics on)
    also per-layer gradient and weight norms, and a weight snapshot for ``step``. ``clip``: post-clip norm,
    whether clipping acted, the running clip fraction. ``step``: update-to-weight ratios (needs the
    snapshot) and the non-finite parameter count.
    """

    def __init__(self) -> None:
        self.clip_counts: dict[str, list[int]] = {}  # model -> [clip calls, calls that clipped]
        self._snapshots: dict[str, tuple[list[int], list[torch.Tensor], list[float]]] = {}

    @torch.no_grad()
    def backward(self, ev: Any, names: Sequence[str] | None = None, snapshot: bool = True) -> dict[str, float]:
        g, params = ev.norms, ev.norms.params
        grads = [params[i].grad for i in g.with_grad]
        stats = {f"grad_norm/{ev.model}": g.total,
                 f"health/nonfinite_grads/{ev.model}": float(_count_nonfinite(g.per_tensor, grads))}
        if snapshot or names is not None:
            weights = [params[i] for i in g.with_grad]
            wnorms = _norms(weights)
            if ev.finite:  # a step the trainer skips (non-finite gradient) gets no update ratio
                self._snapshots[ev.model] = (list(g.with_grad), _copy(weights), wnorms)
        if names is not None:
            for j, i in enumerate(g.with_grad):
                stats[f"layers/grad_norm/{ev.model}/{names[i]}"] = g.per_tensor[j]
                stats[f"layers/weight_norm/{ev.model}/{names[i]}"] = wnorms[j]
        return stats

    def clip(self, ev: Any) -> dict[str, float]:
        counts = self.clip_counts.setdefault(ev.model, [0, 0])
        counts[0] += 1
        counts[1] += int(ev.clip.clipped)
        return {f"optim/grad_norm_postclip/{ev.model}": ev.clip.post_norm, f"optim/clip_active/{ev.model}": float(ev.clip.clipped),
                f"optim/clip_fraction/{ev.model}": counts[1] / counts[0]}

    def has_snapshot(self, model: str) -> bool:
        return model in self._snapshots

    @torch.no_grad()
    def step(self, ev: Any, names: Sequence[str] | None = None) -> dict[str, float]:
        params = ev.norms.params
        snap = self._snapshots.pop(ev.model, None)
        idx, olds, wnorms = snap if snap is not None else ([], [], [])
        rest = [i for i in range(len(params)) if i not in set(idx)]  # not snapshotted: checked by their norms
        diffs = list(torch._foreach_sub([params[i] for i in idx], olds)) if idx else []
        flat = _norms(diffs + [params[i] for i in rest])
        dnorms, rnorms = flat[: len(diffs)], flat[len(diffs):]
        # A NaN/Inf in the new weights makes the difference non-finite too: no extra norm needed.
        bad = _count_nonfinite(dnorms, [params[i] for i in idx]) + _count_nonfinite(rnorms, [params[i] for i in rest])
        stats: dict[str, float] = {}
        if snap is not None:
            if names is not None:
                for i, d, w in zip(idx, dnorms, wnorms):
                    stats[f"layers/update_ratio/{ev.model}/{names[i]}"] = d / (w + _RATIO_EPS)
            stats[f"optim/update_ratio/{ev.model}"] = _combine(dnorms) / (_combine(wnorms) + _RATIO_EPS)
        stats[f"health/nonfinite_params/{ev.model}"] = float(bad)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"clip_counts": {k: list(v) for k, v in self.clip_counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_counts = {k: [int(a), int(b)] for k, (a, b) in state["clip_counts"].items()}


# --------------------------------------------------------------------------- monitor
class Monitor:
    """Per-update gradient/weight statistics and per-call action statistics, logged and returned."""

    def __init__(self, models: Mapping[str, nn.Module], logger: Logger | None, owns_logger: bool,
                 log_every: int = 1, histogram_every: int = 50, layer_stats: bool = True) -> None:
        if not models:
            raise ValueError("attach() needs at least one model")
        if log_every < 1 or histogram_every < 1:
            raise ValueError("log_every and histogram_every must be >= 1")
        self.logger = logger
        self._owns_logger = owns_logger
        self.log_every, self.histogram_every, self.layer_stats = log_every, histogram_every, layer_stats
        self._models: dict[str, tuple[list[str], list[nn.Parameter]]] = {}
        for mname, module in models.items():
            named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            self._models[mname] = ([n for n, _ in named], [p for _, p in named])
        self.gradients = GradientStats()
        self._events: dict[str, Any] = {}  # model -> its GradEvent since after_backward
        self._calls: dict[str, int] = defaultdict(int)  # per method (per agent for actions/sensitivity)
        self._prev_actions: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- helpers
    def _tick(self, key: str) -> int:
        """Return this key's call index (0-based) and advance it."""
        n = self._calls[key]
        self._calls[key] = n + 1
        return n

    def _emit(self, key: str, stats: dict[str, float], step: int) -> MonitorStats:
        if self._tick(key) % self.log_every == 0 and self.logger is not None:
            self.logger.record_dict(stats, step)
        return MonitorStats(stats)

    def _names(self, model: str) -> list[str] | None:
        return self._models[model][0] if self.layer_stats else None

    # ----------------------------------------------------------------- update hooks
    def after_backward(self, step: int) -> MonitorStats:
        """Pre-clip gradient norms (global and per layer), weight norms, non-finite gradient count.

        Also remembers the measurement for ``after_clip`` and snapshots the weights for ``after_step``.
        """
        stats: dict[str, float] = {}
        for name, (_, params) in self._models.items():
            ev = self._events[name] = GradEvent(name, self._calls["after_backward"], measure_grads(params))
            stats.update(self.gradients.backward(ev, self._names(name)))
        return self._emit("after_backward", stats, step)

    def after_clip(self, step: int) -> MonitorStats:
        """Post-clip global norms, whether clipping acted this call, and the running clip fraction."""
        stats: dict[str, float] = {}
        for name, (_, params) in self._models.items():
            post = measure_grads(params).total
            ev = self._events.get(name)
            if ev is None:  # after_backward was not called: nothing to compare against
                stats[f"optim/grad_norm_postclip/{name}"] = post
                continue
            ev.clip = ClipStats(ev.norms.total, post, post < ev.norms.total * (1.0 - _CLIP_RTOL))
            stats.update(self.gradients.clip(ev))
        return self._emit("after_clip", stats, step)

    def after_step(self, step: int) -> MonitorStats:
        """Update-to-weight ratios ||w_new - w_old|| / ||w_old|| and non-finite parameter counts."""
        stats: dict[str, float] = {}
        for name, (_, params) in self._models.items():
            ev = self._events.pop(name, None) or GradEvent(name, 0, GradNorms(params, [], [], 0.0, torch.zeros(())))
            stats.update(self.gradients.step(ev, self._names(name)))
        return self._emit("after_step", stats, step)

    # ----------------------------------------------------------------- actor diagnostics
    @torch.no_grad()
    def actions(self, actions: ArrayLike, step: int, agent: str, low: ArrayLike | None = None,
                high: ArrayLike | None = None, preact: ArrayLike | None = None,
                squashed: ArrayLike | None = None, atol: float = 1e-3) -> MonitorStats:
        """Saturation, repeated-action and same-action rates of one agent's batch of actions.

        Call counts (for log_every / histogram_every) are kept per agent, so calling this once per agent
        per step logs every agent on the same steps.
        """
        a = _as_2d(actions)
        stats: dict[str, float] = {}
        if low is not None and high is not None:
            stats[f"policy/saturation/{agent}"] = saturation_fraction(a, low, high)
        elif squashed is not None:
            stats[f"policy/saturation/{agent}"] = squashed_saturation(squashed)
        prev = self._prev_actions.get(agent)
        if prev is not None:
            stats[f"policy/repeat_rate/{agent}"] = repeated_action_rate(prev, a, atol)
        self._prev_actions[agent] = a.clone()  # the caller may reuse/mutate its buffer
        if a.shape[0] >= 2:
            stats[f"policy/batch_same_action/{agent}"] = batch_same_action_rate(a, atol)
        pre = _as_tensor(preact) if preact is not None else None
        if pre is not None and pre.numel():
            mx, mean = torch.stack([pre.abs().amax(), pre.abs().mean()]).tolist()
            stats[f"policy/preact_max_abs/{agent}"] = mx
            stats[f"policy/preact_mean_abs/{agent}"] = mean

        key = f"actions/{agent}"
        n = self._calls[key]
        stats = self._emit(key, stats, step)
        if n % self.histogram_every == 0 and self.logger is not None:
            cols = a.to(torch.float64).cpu().numpy()
            for k in range(cols.shape[1]):
                self.logger.histogram(f"hist/actions/{agent}/dim{k}", cols[:, k], step)
            if pre is not None and pre.numel():
                self.logger.histogram(f"hist/preact/{agent}", pre.to(torch.float64).cpu().numpy().ravel(), step)
        return stats

    def sensitivity(self, policy: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor, step: int,
                    agent: str) -> float:
        """``policy/sensitivity/<agent>``: mean per-sample Frobenius norm of d action / d obs."""
        value = action_sensitivity(policy, obs)
        self._emit(f"sensitivity/{agent}", {f"policy/sensitivity/{agent}": value}, step)
        return value

    # ----------------------------------------------------------------- lifecycle
    def flush(self) -> None:
        if self.logger is not None:
            self.logger.flush()

    def close(self) -> None:
        """Close sinks this monitor created (a logdir); only flush a writer/logger the user passed."""
        if self.logger is None:
            return
        if self._owns_logger:
            self.logger.close()
        else:
            self.logger.flush()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach(models: Mapping[str, nn.Module], writer: Any = None, log_every: int = 1,
           histogram_every: int = 50, layer_stats: bool = True) -> Monitor:
    """Build a :class:`Monitor` over named models.

    ``writer``: None (stats only returned), a log directory (TensorBoard files, closed by ``close()``),
    a ``torch.utils.tensorboard.SummaryWriter`` (written through, never closed), or a
    ``marl_stability.core.sinks.Logger`` (used as is). Model names may contain "/".
    """
    logger, owns = _make_logger(writer)
    return Monitor(models, logger, owns, log_every=log_every, histogram_every=histogram_every,
                   layer_stats=layer_stats)
