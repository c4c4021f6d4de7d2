"""Optimizers and the one gradient step every algorithm takes: backward -> measure -> clip -> step, with
the events hooks see and the evidence of the first non-finite loss, gradient or parameter."""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch

from marl_stability.config import OptimConfig
from marl_stability.core.events import GradEvent, UpdateStats
from marl_stability.fixes.objects import ClipStats, GradClipper, measure_grads

_NAN_CLIP = ClipStats(float("nan"), float("nan"), False)


def make_optimizer(params: Any, cfg: OptimConfig, fast: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer. ``fast``: one kernel for all parameters instead of a Python loop over them,
    fused where torch has it on CPU (Adam ~3x and SGD ~2x faster per step than the default for these small
    networks), else foreach (RMSprop). Fused kernels round differently (~1e-7 per step), so the fast path
    goes with stacked agents and the per-agent path stays bit-identical to earlier releases."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, **({"fused": True} if fast else {}))
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum,
                                   **({"foreach": True} if fast else {}))
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, **({"fused": True} if fast else {}))


def optimizer_name(opt: torch.optim.Optimizer) -> str:
    """The config name of a built optimizer (``OptimConfig.name``)."""
    return "adam" if isinstance(opt, torch.optim.Adam) else "rmsprop" if isinstance(opt, torch.optim.RMSprop) else "sgd"


def retuned(opt: torch.optim.Optimizer, params: Any, cfg: OptimConfig, fast: bool = False) -> torch.optim.Optimizer:
    """A running optimizer made to follow ``cfg`` (``train.heal`` applying a fix): another kind is a new optimizer
    over the same parameters (its state starts empty: Adam's moments at zero); the same kind keeps its state and
    takes the new learning rate, eps and momentum in every param group."""
    if optimizer_name(opt) != cfg.name:
        return make_optimizer(params, cfg, fast)
    for group in opt.param_groups:
        group["lr"] = cfg.lr
        for key in ("eps", "momentum"):
            if key in group:
                group[key] = getattr(cfg, key)
    return opt


def keep_fast_kernels(opts: Sequence[torch.optim.Optimizer]) -> None:
    """After ``load_state_dict``: a checkpoint's param groups carry the implementation flags it was saved
    with; keep this build's faster implementation of the same update rule."""
    for opt in opts:
        for group in opt.param_groups:
            for key in ("foreach", "fused"):
                if key in opt.defaults:
                    group[key] = opt.defaults[key]


def all_finite(params: Sequence[torch.Tensor]) -> bool:
    # A NaN/Inf anywhere makes the sum of sums non-finite; one reduction instead of one per tensor.
    return bool(torch.isfinite(torch.stack([p.sum() for p in params]).sum()))


class _Guard(threading.local):
    """Per thread: whether an ``Algorithm.update()`` is running, whether the stepper is stepping, and the optimizer
    steps taken outside the stepper so far."""

    active = False
    stepping = False
    bypassed = 0


@dataclass
class BypassCount:
    bypassed: int = 0


_GUARD = _Guard()
_HOOK: list[Any] = []


def _count_bypass(optimizer: Any, args: Any, kwargs: Any) -> None:
    if _GUARD.active and not _GUARD.stepping:
        _GUARD.bypassed += 1


@contextlib.contextmanager
def optimizer_guard() -> Iterator[BypassCount]:
    """Count the optimizer steps taken inside the block but not through a ``GradientStepper`` (``.bypassed`` of
    the yielded record, set on exit). One global optimizer pre-step hook, registered on first use; outside such a
    block it does nothing."""
    if not _HOOK:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _HOOK.append(register_optimizer_step_pre_hook(_count_bypass))
    count, active, start = BypassCount(), _GUARD.active, _GUARD.bypassed
    _GUARD.active = True
    try:
        yield count
    finally:
        count.bypassed = _GUARD.bypassed - start
        _GUARD.active = active


class GradientStepper:
    """The gradient step of one network, with its events. ``modules`` (name -> network) and ``batch`` feed
    the non-finite evidence: the first non-finite loss or gradient of an update is kept whole (batch,
    parameters, gradients) for the forensics hook."""

    def __init__(self, events: Any, modules: dict[str, torch.nn.Module]) -> None:
        self.events, self.modules = events, modules
        self.update = 0
        self.batch: dict[str, torch.Tensor] = {}
        self.evidence: Optional[dict[str, Any]] = None
        self.nonfinite = 0
        self.steps: list[GradEvent] = []

    def begin(self, update: int, batch: dict[str, torch.Tensor]) -> None:
        """Start an update (required before its first ``step``): its index (1-based; the logging and sampling
        rates count it) and its batch (the evidence of a non-finite step). Resets the update's records."""
        self.update, self.batch, self.evidence, self.nonfinite, self.steps = update, batch, None, 0, []

    def use_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """The batch this update trains on: kept with the evidence of its first non-finite step."""
        self.batch = batch

    def result(self, scalars: dict[str, float]) -> UpdateStats:
        """The update's record for the loop: the algorithm's scalars plus what the stepper saw."""
        return UpdateStats(scalars, self.nonfinite, self.evidence, self.steps)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
             clipper: GradClipper, model: str) -> tuple[ClipStats, bool]:
        """backward -> clip -> step, skipping the step when the loss or the gradient is non-finite."""
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.record(model, "loss", loss)
            return _NAN_CLIP, False
        loss.backward()
        return self.clip_and_step(loss, opt, params, clipper, model)

    def skip(self, model: str, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> tuple[ClipStats, bool]:
        """A network whose loss is non-finite in a joint backward: no step, no gradient left behind."""
        for p in params:
            p.grad = None
        self.record(model, "loss", loss)
        return _NAN_CLIP, False

    def clip_and_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                      clipper: GradClipper, model: str) -> tuple[ClipStats, bool]:
        """After this network's backward: measure (once) -> after_backward -> clip -> after_clip -> step ->
        after_step; a non-finite gradient is recorded and its step skipped."""
        if self.update < 1:
            raise RuntimeError("GradientStepper: call begin(update_index, batch) at the start of every update")
        norms = measure_grads(params)
        ev = GradEvent(model, self.update, norms, finite=math.isfinite(norms.total))
        self.steps.append(ev)
        self.events.after_backward(ev)  # hooks read the gradients here; they must not change them
        clip = clipper.clip(ev.norms)
        ev.clip = clip
        if not ev.finite:
            self.record(model, "gradient", loss)
            opt.zero_grad(set_to_none=True)
            return clip, False
        self.events.after_clip(ev)
        stepping, _GUARD.stepping = _GUARD.stepping, True
        try:
            opt.step()
        finally:
            _GUARD.stepping = stepping
        self.events.after_step(ev)
        return clip, True

    def record(self, model: str, what: str, loss: torch.Tensor) -> None:
        """Count a non-finite step; keep the evidence of the update's first one."""
        self.nonfinite += 1
        if self.evidence is None:
            self.evidence = nonfinite_evidence(self.modules, self.update, model, what, loss, self.batch)


def nonfinite_evidence(modules: dict[str, torch.nn.Module], update: int, model: str, what: str,
                       loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Batch, parameters and gradients at a non-finite event, copied (the run goes on changing them)."""
    return {
        "update": update,
        "model": model,
        "what": what,
        "loss": float(loss.detach()),
        "batch": {k: v.clone() for k, v in batch.items()},
        "parameters": {f"{n}/{pn}": p.detach().clone() for n, m in modules.items() for pn, p in m.named_parameters()},
        "gradients": {f"{n}/{pn}": p.grad.detach().clone() for n, m in modules.items()
                      for pn, p in m.named_parameters() if p.grad is not None},
    }
