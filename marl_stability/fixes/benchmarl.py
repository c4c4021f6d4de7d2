"""The fix registry in BenchMARL's terms: which BenchMARL 1.5 setting applies each of this project's fixes, and a BenchMARL
experiment's configuration read as this project's config sections (so the registry can tell which fixes a BenchMARL
run already uses). Pure data and functions on plain dicts: doctor uses it on a run folder without BenchMARL installed.

``BENCHMARL`` in a run's ``config.yaml`` holds BenchMARL's own configuration as the callback saw it:
``{"experiment": ExperimentConfig fields, "algorithm": the algorithm config's fields and "name", "model": ...,
"critic_model": ..., "task": the task's config}``. A setting is written ``<part>.<field>=<value>`` with ``part`` one of
those keys, as a user sets it on the config objects (``experiment_config.lr = 0.0003``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

FRAMEWORK = "benchmarl"
BENCHMARL = "benchmarl"  # the config.yaml section holding BenchMARL's own configuration

# The bounded log-std of this project's ``ppo.log_std_bounds`` fix, as a BenchMARL ``scale_mapping`` (a tensordict custom
# mapping the integration registers): std = exp(lo + (hi - lo) * sigmoid(x + offset)), x = 0 giving exp(LOG_STD_INIT).
LOG_STD_BOUNDS = (-5.0, -0.69)
LOG_STD_INIT = -1.0
BOUNDED_SCALE_MAPPING = "marl_stability_log_std_bounds"

Settings = Callable[[dict[str, Any]], list[str]]


def _part(bm: dict[str, Any], name: str) -> dict[str, Any]:
    value = bm.get(name)
    return value if isinstance(value, dict) else {}


def _num(bm: dict[str, Any], part: str, key: str, default: float) -> float:
    value = _part(bm, part).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _lower_lr(bm: dict[str, Any]) -> list[str]:
    return [f"experiment.lr={_num(bm, 'experiment', 'lr', 5e-5) / 10:g}"]


def _fewer_epochs(bm: dict[str, Any]) -> list[str]:
    return [f"experiment.on_policy_n_minibatch_iters={max(1, int(_num(bm, 'experiment', 'on_policy_n_minibatch_iters', 45)) // 2)}"]


def _entropy(bm: dict[str, Any]) -> list[str]:
    return [f"algorithm.entropy_coef={2 * _num(bm, 'algorithm', 'entropy_coef', 0.0) or 0.01:g}"]


# fix id -> the BenchMARL settings that apply it (None: BenchMARL 1.5 has no setting for it; the text says what is missing).
SETTINGS: dict[str, Settings | str] = {
    "lr_eps": lambda bm: [f"experiment.lr={min(_num(bm, 'experiment', 'lr', 3e-4), 3e-4):g}",
                          f"experiment.adam_eps={max(_num(bm, 'experiment', 'adam_eps', 1e-5), 1e-5):g}"],
    "lower_lr": _lower_lr,
    "grad_clip": lambda bm: ["experiment.clip_grad_norm=True", "experiment.clip_grad_val=1.0"],
    "grad_clip_10": lambda bm: ["experiment.clip_grad_norm=True", "experiment.clip_grad_val=10.0"],
    "entropy": _entropy,
    "log_std_bounds": lambda bm: [f"algorithm.scale_mapping={BOUNDED_SCALE_MAPPING}"],
    "fewer_epochs": _fewer_epochs,
    "huber_value": lambda bm: ["algorithm.loss_critic_type=smooth_l1"],  # Huber only: BenchMARL sets no value clipping
    "norm_layers": "set model.norm_class=torch.nn.LayerNorm with model.norm_kwargs={'normalized_shape': W} (and the "
                   "same on critic_model) when every hidden layer has width W: torchrl's MLP passes one norm_kwargs to all",
    "activation": lambda bm: ["model.activation_class=torch.nn.Tanh", "critic_model.activation_class=torch.nn.Tanh"],
    "beta": "no Beta distribution in BenchMARL's MAPPO/IPPO (algorithm.use_tanh_normal=False gives a Normal clipped by "
            "the env instead)",
    "value_norm": "no value normalization in BenchMARL 1.5",
    "advantage_norm": "BenchMARL 1.5's MAPPO/IPPO build their loss with normalize_advantage=False (no setting)",
    "reward_scale": "no reward scaling setting in BenchMARL 1.5 (a torchrl RewardScaling transform on the task's env)",
    "obs_norm": "no observation normalization setting in BenchMARL 1.5 (a torchrl ObservationNorm transform)",
}


def settings_for(fix_id: str, bm: dict[str, Any]) -> tuple[list[str], Optional[str]]:
    """(the BenchMARL settings that apply ``fix_id`` to this configuration, None) or ([], why none applies)."""
    entry = SETTINGS.get(fix_id)
    if entry is None:
        return [], "not translated to a BenchMARL setting"
    if isinstance(entry, str):
        return [], entry
    return entry(bm), None


def _clip(bm: dict[str, Any]) -> dict[str, Any]:
    exp = _part(bm, "experiment")
    val = exp.get("clip_grad_val")
    if val is None:
        return {"mode": "none"}
    return {"mode": "global_norm" if exp.get("clip_grad_norm") else "value", "max": float(val)}


def _is_layernorm(model: dict[str, Any]) -> bool:
    return "LayerNorm" in str(model.get("norm_class") or "")


def as_run_config(bm: dict[str, Any]) -> dict[str, Any]:
    """This project's config sections that describe a BenchMARL run as far as they map (what the fix registry reads
    to tell which fixes a run already uses). Settings without a counterpart are left at what BenchMARL does."""
    exp, alg, model = _part(bm, "experiment"), _part(bm, "algorithm"), _part(bm, "model")
    optim = {"name": "adam", "lr": exp.get("lr"), "eps": exp.get("adam_eps")}
    layernorm = _is_layernorm(model) and _is_layernorm(_part(bm, "critic_model"))
    activation = str(model.get("activation_class") or "torch.nn.Tanh").rsplit(".", 1)[-1].lower()
    net = {"hidden_sizes": list(model.get("num_cells") or []), "activation": activation,
           "norm": "layernorm" if layernorm else "none"}
    ppo = {"gamma": exp.get("gamma"), "gae_lambda": alg.get("lmbda"), "clip": alg.get("clip_epsilon"),
           "entropy_coef": alg.get("entropy_coef"), "epochs": exp.get("on_policy_n_minibatch_iters"),
           "value_loss": "huber" if alg.get("loss_critic_type") == "smooth_l1" else "mse",
           # BenchMARL clips no value: the Huber loss is as much of that fix as it can take (counted as applied)
           "value_clip": 0.0 if alg.get("loss_critic_type") == "smooth_l1" else None,
           "value_norm": False, "advantage_norm": False, "input_layernorm": False,
           "distribution": "tanh_normal" if alg.get("use_tanh_normal") else "gaussian",
           "log_std": "state_dependent",
           "log_std_bounds": list(LOG_STD_BOUNDS) if alg.get("scale_mapping") == BOUNDED_SCALE_MAPPING else None}
    clip = _clip(bm)
    return {"actor": dict(net), "critic": dict(net), "actor_optim": optim, "critic_optim": dict(optim), "ppo": ppo,
            "fixes": {"grad_clip": {"actor": clip, "critic": dict(clip)}, "obs_norm": {"enabled": False},
                      "reward": {"mode": "none", "scale": 1.0}}}


def bounded_scale(x: Any) -> Any:
    """The ``log_std_bounds`` fix as a scale mapping (torch tensors in, std out)."""
    import torch

    lo, hi = LOG_STD_BOUNDS
    p = (LOG_STD_INIT - lo) / (hi - lo)
    return torch.exp(lo + (hi - lo) * torch.sigmoid(x + math.log(p / (1.0 - p))))


def markdown_table() -> str:
    """The fixes as BenchMARL settings, for docs/benchmarl.md (a test keeps the page equal to this)."""
    from marl_stability.fixes import registry

    bm = {"experiment": {"lr": 7e-4, "on_policy_n_minibatch_iters": 10}, "algorithm": {"entropy_coef": 0.01}}
    rows = ["| fix (registry id) | BenchMARL setting (on the MAPPO-paper configuration of the proof run) |", "|---|---|"]
    for spec in registry.FIXES:
        settings, missing = settings_for(spec.id, bm)
        if spec.id in SETTINGS:
            rows.append(f"| {spec.title} (`{spec.id}`) | " + (", ".join(f"`{s}`" for s in settings) or f"none: {missing}") + " |")
    return "\n".join(rows)
