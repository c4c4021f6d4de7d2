"""Typed run configuration: one source of truth for defaults (these pydantic models).

YAML presets in ``experiments/`` only override fields; ``--set a.b=value`` overrides one dotted key.
Every field carries a one-line description that ``marl-stability config`` prints next to its default.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from marl_stability.errors import UserError

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh"]
NormLayer = Literal["none", "layernorm", "batchnorm"]
InitScheme = Literal["default", "kaiming", "xavier", "orthogonal"]
OutputHead = Literal["auto", "linear_clip", "softsign", "softsign_scaled", "tanh", "tanh_scaled"]
OptimizerName = Literal["adam", "rmsprop", "sgd"]
ClipMode = Literal["none", "global_norm", "per_tensor", "value"]
ActionDistribution = Literal["auto", "gaussian", "tanh_gaussian", "beta"]
# The names of agents.ALGORITHMS, so validating a config needs no torch (a test checks they agree). What an
# algorithm is (on-policy, its discount's section) is a class attribute of the algorithm, not a list here.
BUILTIN_ALGORITHMS = ("maddpg", "matd3", "mappo", "ippo")


class _Strict(BaseModel):
    # Unknown keys are errors (typos in YAML or --set must not be silently ignored).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnvConfig(_Strict):
    id: str = Field("simple_spread_v3", description="environment ID: an mpe2 task module name or package.module:callable")
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"N": 3, "max_cycles": 25, "continuous_actions": True},
        description="keyword arguments passed to the environment factory",
    )
    num_envs: int = Field(1, ge=1, le=4096, description="environment copies stepped in lockstep")
    backend: Literal["auto", "fast", "pettingzoo"] = Field(
        "auto", description="auto: the batched numpy port of mpe2 for every mpe2 task (identical dynamics, "
        "~300x faster), PettingZoo otherwise (a module:callable env); pettingzoo forces mpe2 itself"
    )
    reward_scale: float = Field(1.0, description="multiply env rewards (an env wrapper; >1 induces the failure)")
    obs_scale: float = Field(1.0, description="multiply observations (an env wrapper that induces badly scaled inputs)")
    obs_offset: float = Field(0.0, description="add to observations after obs_scale (an env wrapper)")


class NetworkConfig(_Strict):
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64], description="hidden layer widths")
    activation: Activation = Field("relu", description="hidden activation")
    norm: NormLayer = Field("none", description="normalization layer after each hidden linear layer")
    residual: bool = Field(False, description="residual blocks x + act(W x) between equal-width hidden layers")
    init: InitScheme = Field("default", description="weight init of hidden layers (default = PyTorch's)")
    last_layer_init: Optional[float] = Field(
        None, gt=0, description="if set, last layer weights and biases ~ U(-s, s) (small last-layer init fix)"
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> "NetworkConfig":
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError("hidden_sizes must be a non-empty list of positive integers")
        return self


class ActorConfig(NetworkConfig):
    output: OutputHead = Field(
        "auto",
        description="continuous output head: linear_clip (env clips), softsign, tanh (unscaled (-1, 1); env clips), softsign_scaled, tanh_scaled; "
        "auto = tanh_scaled for continuous, logits for discrete",
    )


class OptimConfig(_Strict):
    name: OptimizerName = Field("adam", description="optimizer")
    lr: float = Field(1e-2, gt=0, le=10, description="learning rate")
    eps: float = Field(1e-8, gt=0, description="Adam/RMSprop epsilon")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD/RMSprop momentum")


class ClipConfig(_Strict):
    mode: ClipMode = Field("none", description="none | global_norm (clip_grad_norm_) | per_tensor (openai/maddpg) | value")
    max: float = Field(1.0, gt=0, description="max L2 norm (global/per tensor) or max |g| (value)")


class GradClipFixes(_Strict):
    actor: ClipConfig = Field(default_factory=ClipConfig, description="gradient clipping of actors")
    critic: ClipConfig = Field(default_factory=ClipConfig, description="gradient clipping of critics")


class ObsNormConfig(_Strict):
    enabled: bool = Field(False, description="running mean/std normalization of each agent's observation")
    clip: float = Field(10.0, gt=0, description="clip normalized observations to +-clip")
    eps: float = Field(1e-8, gt=0, description="(x - mean) / (std + eps)")


class RewardFixConfig(_Strict):
    mode: Literal["none", "scale", "normalize"] = Field(
        "none", description="none | scale (multiply by scale) | normalize (divide by running std of the discounted return)"
    )
    scale: float = Field(1.0, gt=0, description="factor for mode=scale")
    clip: float = Field(10.0, gt=0, description="clip normalized rewards to +-clip (mode=normalize)")


class FixesConfig(_Strict):
    grad_clip: GradClipFixes = Field(default_factory=GradClipFixes, description="gradient clipping after backward, before step")
    obs_norm: ObsNormConfig = Field(default_factory=ObsNormConfig, description="input normalization")
    reward: RewardFixConfig = Field(default_factory=RewardFixConfig, description="reward scaling/normalization seen by the learner")
    actor_preact_l2: float = Field(
        0.0, ge=0, description="openai/maddpg's penalty: actor loss + c * mean(output pre-activation^2); 0 = off"
    )


class MADDPGConfig(_Strict):
    gamma: float = Field(0.95, gt=0, le=1, description="discount")
    tau: float = Field(0.01, gt=0, le=1, description="soft target update rate")
    batch_size: int = Field(1024, ge=1, description="minibatch size")
    buffer_size: int = Field(1_000_000, ge=1, description="replay capacity (transitions)")
    warmup_steps: int = Field(25_600, ge=0, description="env steps of random actions before learning starts")
    update_every: int = Field(100, ge=1, description="env steps between update rounds (openai/maddpg: 100)")
    updates_per_round: int = Field(1, ge=1, description="gradient updates per round")
    exploration_std: float = Field(0.1, ge=0, description="Gaussian exploration noise std, as a fraction of the action range")
    gumbel_temperature: float = Field(1.0, gt=0, description="Gumbel-softmax temperature (discrete actions)")
    critic_loss: Literal["mse", "huber"] = Field("mse", description="critic loss")
    huber_delta: float = Field(1.0, gt=0, description="Huber loss delta")
    batched_agents: Literal["auto", "on", "off"] = Field(
        "auto", description="evaluate all agents' actors/critics in one stacked call per layer with fused optimizers "
        "(same maths, ~1.3x faster training, not bit-identical to the loop: ~1e-7 rounding per step): auto = when the "
        "agents have identical obs/action sizes and no BatchNorm; on = require it; off = the per-agent loop"
    )

    @field_validator("batched_agents", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML reads bare on/off as booleans.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class MATD3Config(_Strict):
    policy_delay: int = Field(2, ge=1, description="MATD3: actors and all targets update once every this many updates (TD3: 2)")
    target_noise: float = Field(
        0.1, ge=0, description="MATD3 target-policy smoothing: Gaussian noise std on target actions, as a fraction of "
        "the action range (TD3's 0.2 on [-1, 1]); 0 = off"
    )
    target_noise_clip: float = Field(
        0.25, ge=0, description="MATD3: clip the smoothing noise to +-this fraction of the action range (TD3's 0.5 on [-1, 1])"
    )


class PPOConfig(_Strict):
    """MAPPO / IPPO (the ``ppo:`` section). Defaults follow the MAPPO paper's reference code
    (marlbenchmark/on-policy, MPE scripts); experiments/mappo_spread.yaml states each with its source."""

    gamma: float = Field(0.99, gt=0, le=1, description="discount")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    rollout_steps: int = Field(25, ge=1, description="env steps per env copy in one rollout (one update per rollout; "
                               "the rollout holds rollout_steps x env.num_envs env steps)")
    epochs: int = Field(10, ge=1, description="PPO epochs over each rollout")
    minibatches: int = Field(1, ge=1, description="minibatches per epoch (the rollout's env steps split evenly)")
    clip: float = Field(0.2, gt=0, description="clipped surrogate: importance ratio clipped to [1 - clip, 1 + clip]")
    entropy_coef: float = Field(0.01, ge=0, description="entropy bonus coefficient (fix: entropy coefficient)")
    value_loss_coef: float = Field(1.0, gt=0, description="value loss weight")
    value_loss: Literal["mse", "huber"] = Field("huber", description="value loss (fix: Huber value loss)")
    huber_delta: float = Field(10.0, gt=0, description="Huber value loss delta (in normalized value units when value_norm)")
    value_clip: Optional[float] = Field(
        0.2, gt=0, description="value-loss clipping: max(loss(v), loss(v_old + clip(v - v_old, +-c))); null = off")
    value_norm: bool = Field(True, description="value normalization: the critic regresses returns standardized by "
                             "their running mean/std (fix)")
    advantage_norm: bool = Field(True, description="standardize advantages over each rollout (fix)")
    distribution: ActionDistribution = Field(
        "auto", description="continuous action distribution: gaussian (clipped by the env), tanh_gaussian (squashed to "
        "the bounds, log-prob corrected), beta (on the bounds); auto = gaussian; discrete actions are categorical")
    log_std: Literal["state_independent", "state_dependent"] = Field(
        "state_independent", description="Gaussian log-std: a learned vector, or an output of the actor")
    log_std_init: float = Field(-1.0, description="initial log-std, in units of half the action range (-1.0: std 0.37, "
                                "the reference's sigmoid(1) * 0.5)")
    log_std_bounds: Optional[list[float]] = Field(
        None, description="[min, max]: log-std = min + (max - min) * sigmoid(raw) (fix: log-std bounds); null = unbounded")
    parameter_sharing: Literal["auto", "on", "off"] = Field(
        "auto", description="on: one actor and one critic for all agents, with an agent-id one-hot input (homogeneous "
        "agents only); off: one network per agent; auto = on when the agents are homogeneous")
    input_layernorm: bool = Field(True, description="LayerNorm on the actor's and critic's inputs (reference: "
                                  "use_feature_normalization)")
    actor_output_gain: float = Field(
        0.01, gt=0, description="orthogonal gain of the actor's output layer when actor.init=orthogonal and "
        "actor.last_layer_init is null (reference: gain 0.01)")

    @field_validator("parameter_sharing", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check_bounds(self) -> "PPOConfig":
        b = self.log_std_bounds
        if b is not None:
            if len(b) != 2 or not b[0] < b[1]:
                raise ValueError("log_std_bounds must be [min, max] with min < max")
            if not b[0] < self.log_std_init < b[1]:
                raise ValueError(f"log_std_init {self.log_std_init} must lie inside log_std_bounds {b}")
        return self


class HealConfig(_Strict):
    """Self-healing (``train.heal``): detect, roll back to before the onset, apply the fix the evidence ranks first
    for the diagnosed road, continue (docs/heal.md)."""

    enabled: bool = Field(False, description="heal the run when a trigger fires (off: the run is untouched)")
    on_explosion: Optional[bool] = Field(
        None, description="trigger: the gradient explosion alarm; default: on for off-policy algorithms, off for "
        "on-policy ones (MAPPO's critic gradient grows steadily under a large reward scale and the alarm fires in runs "
        "that end healthy: a false alarm there, docs/findings.md)")
    on_nonfinite: bool = Field(True, description="trigger: a non-finite loss, gradient, parameter or action (replaces "
                               "train.on_nonfinite while heal is on)")
    on_collapse: bool = Field(True, description="trigger: the action-collapse detector")
    on_entropy_collapse: bool = Field(True, description="trigger: the entropy-collapse detector (on-policy)")
    on_kl_spike: bool = Field(True, description="trigger: the KL-spike detector (on-policy)")
    snapshot_every: Optional[int] = Field(
        None, ge=1, description="updates between snapshots in the ring (networks, optimizers, normalizer statistics, "
        "the replay buffer's write position, detector state); default: 25 for off-policy algorithms (an update every "
        "few env steps), 1 for on-policy ones (an update per rollout)")
    keep: int = Field(8, ge=2, description="snapshots kept in the ring, thinned so their spacing grows geometrically "
                      "towards the past (plus the one standing for the state before the first update, never dropped)")
    max_attempts: int = Field(3, ge=1, description="heals per run; a trigger after the last one is handled as "
                              "without heal (a non-finite value stops the run as diverged; any other alarm is recorded)")
    fixes: list[str] = Field(default_factory=list, description="fix ids to apply, in this order (registry ids, e.g. "
                             "grad_clip, reward_scale); empty: the fixes the evidence ranks first for the diagnosed road")


class TrainConfig(_Strict):
    steps: int = Field(200_000, ge=1, description="total env steps (summed over env copies)")
    eval_every: int = Field(10_000, ge=1, description="env steps between evaluations")
    eval_episodes: int = Field(10, ge=1, description="episodes per evaluation (no exploration noise)")
    checkpoint_every: int = Field(50_000, ge=1, description="env steps between checkpoints")
    checkpoints: Literal["final", "resume", "none"] = Field(
        "final", description="final: checkpoints hold all a resume needs (replay buffer included) while the run "
        "goes; when it ends (completed, diverged) the resume checkpoint is replaced by checkpoints/final.pt without "
        "the replay buffer (networks, optimizers, normalizers: enough to render, evaluate or restart from it); "
        "interrupted and failed runs keep theirs. resume: the full checkpoint is kept at the end as well, so a "
        "finished run can be extended (--resume --steps N). none: no checkpoints (an interrupted run starts over)"
    )
    keep_checkpoints: int = Field(
        0, ge=0, description="also keep the newest N periodic checkpoints (every checkpoint_every env steps) as "
        "checkpoints/history/<env steps>.pt: networks, optimizers, normalizers and the replay buffer, what "
        "train.start_from and `marl-stability cure` start from (cure: the last one before the failure's onset); the ones "
        "there when a failure detector first fires are kept for good (the onset precedes the alarm: keep more than "
        "detectors.collapse_patience evaluations' worth); 0: none")
    start_from: Optional[str] = Field(
        None, description="start from a checkpoint of another run (a history, resume or final one): its networks, "
        "optimizers, normalizers, replay buffer and counters; the env copies restart, the random streams are this "
        "run's seed's; keys that differ from the checkpoint's config must be ones a running run can change (fixes, "
        "learning rates, ...: the 'on a live run' column of the fix table); train.* and seed may differ")
    log_every: int = Field(10, ge=1, description="log update stats every N updates")
    layer_stats: bool = Field(True, description="per-layer gradient/weight norms and update ratios of every network "
                              "(the gradients hook)")
    layer_stats_every: int = Field(
        50, ge=1, description="write per-layer gradient/weight norms and update ratios every N updates (they need a "
        "copy of the weights before the step); global norms and the clip fraction cover every update"
    )

    histogram_every: int = Field(100, ge=1, description="log histograms of the training actions every N updates")
    max_nonfinite: int = Field(10, ge=1, description="non-finite updates tolerated before status=diverged (on_nonfinite=stop)")
    on_nonfinite: Literal["stop", "rollback"] = Field(
        "stop", description="stop: skip non-finite updates, diverge after max_nonfinite; rollback: restore the last good "
        "in-memory snapshot of networks and optimizers and continue"
    )
    snapshot_every: int = Field(50, ge=1, description="updates between in-memory snapshots (on_nonfinite=rollback)")
    max_rollbacks: int = Field(5, ge=0, description="rollbacks tolerated before status=diverged")
    heal: HealConfig = Field(default_factory=HealConfig, description="self-healing: roll back and apply a fix when a "
                             "failure detector fires")
    forensic_history: int = Field(50, ge=1, description="recent update stats kept for the forensic bundle")
    hooks: list[str] = Field(
        default_factory=list, description="extra hooks, as package.module:Class (each built with the run context; see "
        "docs/architecture.md, 'Adding a hook')"
    )
    torch_threads: int = Field(
        1, ge=1, description="torch intra-op threads (1 is fastest for 64-unit nets; 2 made 128-unit updates ~1.4x "
        "faster on an otherwise idle 2-core machine)"
    )

    @model_validator(mode="after")
    def _one_rollback_policy(self) -> "TrainConfig":
        if self.heal.enabled and self.start_from:
            raise ValueError("heal.enabled with start_from: a run started from a checkpoint has no normalizer statistics "
                             "kept from step 0 for a heal to switch on; start it without heal")
        if self.heal.enabled and self.on_nonfinite == "rollback":
            raise ValueError("heal.enabled with on_nonfinite=rollback: heal takes the non-finite policy's place (with "
                             "heal.on_nonfinite it rolls back to before the onset and adds a fix; without, a non-finite "
                             "value stops the run); keep one")
        return self


class PlasticityConfig(_Strict):
    """Plasticity and representation metrics of every actor and critic (``marl_stability.core.plasticity``), on the
    batch an update trained on."""

    enabled: bool = Field(True, description="dormant-unit ratios, effective/stable rank and feature norm of every "
                          "network's hidden features (the plasticity hook; tags plasticity/...)")
    every: Optional[int] = Field(
        None, ge=1, description="measure after every N-th update (one extra no-grad forward pass per network); null = "
        "auto: 50 for off-policy algorithms (MADDPG, MATD3, yours), 1 for MAPPO/IPPO (one update per rollout)")
    taus: list[float] = Field(
        default_factory=lambda: [0.0, 0.1], description="dormant thresholds tau in [0, 1) (Sokar et al. 2023: a unit "
        "is dormant when its mean |activation| <= tau x its layer's mean); 0 = exactly dead units")
    max_batch: int = Field(1024, ge=2, description="at most this many states of the update batch (evenly spaced) "
                           "enter the measurement")

    @field_validator("taus")
    @classmethod
    def _check_taus(cls, v: list[float]) -> list[float]:
        if not 1 <= len(v) <= 8:
            raise ValueError("taus must list 1 to 8 thresholds")
        if any(not 0.0 <= t < 1.0 for t in v):
            raise ValueError(f"every tau must lie in [0, 1), got {v}")
        if len({f"{t:g}" for t in v}) != len(v):
            raise ValueError(f"taus must be distinct, got {v}")
        return v

    def resolved_every(self, on_policy: bool) -> int:
        """``every``, with null resolved for the algorithm (on-policy updates are rare and large: every one)."""
        if self.every is not None:
            return self.every
        return 1 if on_policy else 50


class DebugConfig(_Strict):
    inject_nonfinite_at_update: Optional[int] = Field(
        None, ge=1, description="test hook: make the critic loss NaN from this update on (tests divergence handling)"
    )
    inject_nonfinite_count: Optional[int] = Field(
        None, ge=1, description="test hook: number of consecutive updates made NaN (None = all from then on)"
    )


# The growth rule's default multiple, from the detector-calibration corpus (docs/detectors.md, "Calibrating the detectors";
# docs/results/calibration/): above every run that did not explode (at most ~97x its early level) and below every
# explosion-first failure before its non-finite values (at least 4.7e3x).
GROWTH_DEFAULT = 1000.0


class DetectorConfig(BaseModel):
    """Thresholds of the online failure detectors (embeddable in the run config as ``detectors:``)."""

    # Unknown keys are errors, like the rest of the run config.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    explosion_rule: Literal["growth", "median_ratio"] = Field(
        "growth", description="gradient explosion: growth = a norm above explosion_growth x the network's early "
        "level (median of its first explosion_baseline norms; calibrated on held-out seeds, see docs/detectors.md); "
        "median_ratio = a norm above explosion_ratio x the median of the previous explosion_window norms (the rule "
        "before the calibration)"
    )
    explosion_growth: float = Field(
        GROWTH_DEFAULT, gt=1.0, description="gradient explosion (growth rule): fire when a norm exceeds this multiple "
        "of the network's early level"
    )
    explosion_baseline: int = Field(
        20, ge=1, description="gradient explosion (growth rule): the early level is the median of this many first "
        "finite norms"
    )
    explosion_ratio: float = Field(
        10.0, gt=1.0, description="gradient explosion (median_ratio rule): fire when a norm exceeds this multiple of "
        "the running median"
    )
    explosion_window: int = Field(100, ge=1, description="gradient explosion: number of previous norms in the median")
    explosion_min_history: int = Field(
        20, ge=1, description="gradient explosion: finite norms seen before the ratio test is armed"
    )
    explosion_absolute: float = Field(
        1e12, gt=0, description="gradient explosion: fire when a norm exceeds this bound regardless of history (both "
        "rules; above every healthy run of the calibration corpus, whose largest pre-clip norm was 1.8e10 -- a bound "
        "of 1e4 fired at the first updates of any run with a large reward scale)"
    )
    explosion_min_norm: float = Field(
        10.0, ge=0, description="gradient explosion: the ratio test only counts norms above this (a small-init actor's "
        "gradient growing from 1e-3 to 1e-2 as learning starts is not an explosion)"
    )
    repeat_threshold: float = Field(
        0.9, ge=0, le=1, description="action collapse: repeat (same-action) rate at or above this counts as repetitive"
    )
    saturation_threshold: float = Field(
        0.9, ge=0, le=1, description="action collapse: fraction of action components at a bound counted as saturated"
    )
    sensitivity_threshold: float = Field(
        1e-3, ge=0, description="action collapse: mean Jacobian norm d(action)/d(obs) at or below this is insensitive"
    )
    collapse_patience: int = Field(
        3, ge=1, description="action collapse: consecutive collapsed evaluations before the detector fires"
    )
    saturation_margin: float = Field(
        0.01, gt=0, lt=0.5, description="an action component within this fraction of the range of a bound is saturated"
    )
    same_action_atol: float = Field(
        1e-3, ge=0, description="two actions are the same when every component differs by at most this"
    )
    same_action_max_rows: int = Field(
        256, ge=2, description="at most this many rows (the first ones) enter the pairwise same-action rate"
    )
    entropy_collapse_continuous: float = Field(
        -3.2, description="entropy collapse (on-policy): policy entropy per action dimension, in units of the action "
        "range, at or below this (a Gaussian with std 1 percent of the range: 1.42 + ln 0.01 = -3.2)"
    )
    entropy_collapse_discrete: float = Field(
        0.1, ge=0, description="entropy collapse (on-policy, categorical actions): entropy in nats at or below this "
        "(5 actions with the most likely at p = 0.98: about 0.12)"
    )
    entropy_collapse_patience: int = Field(
        5, ge=1, description="entropy collapse: consecutive updates at or below the threshold before it fires"
    )
    kl_spike_ratio: float = Field(
        10.0, gt=1.0, description="KL spike (on-policy): an update's approx KL above this multiple of the running median"
    )
    kl_spike_window: int = Field(50, ge=1, description="KL spike: number of previous updates in the median")
    kl_spike_min_history: int = Field(10, ge=1, description="KL spike: updates seen before the ratio test is armed")
    kl_spike_min: float = Field(
        0.05, ge=0, description="KL spike: the ratio test only counts approx KL above this (a quiet policy's KL "
        "moving from 1e-4 to 2e-3 is no spike)"
    )
    kl_spike_absolute: float = Field(1.0, gt=0, description="KL spike: fire when an update's approx KL exceeds this")

    degradation_z: float = Field(
        4.0, gt=0, description="degradation (not learning): fire when the trailing median of the last 3 evaluations' "
        "team return lies more than this multiple of the evaluation noise below the run's best trailing median, after "
        "that best rose by as much above the first one")
    degradation_patience: int = Field(3, ge=1, description="degradation: consecutive evaluations below that margin")
    degradation_min_evals: int = Field(6, ge=2, description="degradation: evaluations seen before it is armed")

    @model_validator(mode="after")
    def _check_history(self) -> "DetectorConfig":
        # The history deque never holds more than `window` values, so a larger min_history could never arm.
        if self.explosion_min_history > self.explosion_window:
            raise ValueError("explosion_min_history must be <= explosion_window")
        if self.kl_spike_min_history > self.kl_spike_window:
            raise ValueError("kl_spike_min_history must be <= kl_spike_window")
        return self


class RunConfig(_Strict):
    algo: str = Field("maddpg", description="algorithm: maddpg | matd3 (MADDPG + twin critics, target smoothing, "
                      "delayed actor updates) | mappo (PPO, centralized value) | ippo (PPO, value on each agent's "
                      "observation) | package.module:Class (your own marl_stability.agents.base.Algorithm)")
    algo_params: dict[str, Any] = Field(
        default_factory=dict, description="free-form hyperparameters of your own algorithm (algo=package.module:Class)"
    )
    seed: int = Field(0, ge=0, description="seed of everything (torch, numpy, env resets, exploration)")
    env: EnvConfig = Field(default_factory=EnvConfig, description="environment")
    actor: ActorConfig = Field(default_factory=ActorConfig, description="actor network")
    critic: NetworkConfig = Field(default_factory=NetworkConfig, description="critic network")
    actor_optim: OptimConfig = Field(default_factory=OptimConfig, description="actor optimizer")
    critic_optim: OptimConfig = Field(default_factory=OptimConfig, description="critic optimizer")
    maddpg: MADDPGConfig = Field(default_factory=MADDPGConfig, description="MADDPG hyperparameters (MATD3 uses them too)")
    matd3: MATD3Config = Field(default_factory=MATD3Config, description="what MATD3 adds to MADDPG")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="MAPPO / IPPO hyperparameters and on-policy fixes")
    fixes: FixesConfig = Field(default_factory=FixesConfig, description="stability fixes that are not network pieces")
    train: TrainConfig = Field(default_factory=TrainConfig, description="budget, evaluation, checkpoints, logging")
    detectors: DetectorConfig = Field(default_factory=DetectorConfig, description="failure detector thresholds")
    plasticity: PlasticityConfig = Field(default_factory=PlasticityConfig,
                                         description="plasticity and representation metrics (dormant units, ranks)")
    debug: DebugConfig = Field(default_factory=DebugConfig, description="test hooks")

    @field_validator("algo")
    @classmethod
    def _known_algo(cls, v: str) -> str:
        if v in BUILTIN_ALGORITHMS or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            return v
        raise ValueError(f"unknown algorithm {v!r} ({', '.join(BUILTIN_ALGORITHMS)}, or package.module:Class)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self, ignore: tuple[str, ...] = ("train.steps",)) -> str:
        flat = {k: v for k, v in flatten(self.to_dict()).items() if k not in ignore}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "", strict: bool = False) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; dict-valued free-form fields (env.kwargs) are flattened too.

    Keys may themselves be dotted ({'a.b': {'c': 1}} -> {'a.b.c': 1}), so a dict value sets its leaves and never
    replaces a whole section. ``strict`` (user-written overrides, e.g. an ablation file's ``set``): a key that is
    not a non-empty dotted name is a UserError, and a dict given for ``env.kwargs`` replaces the kwargs as a
    whole (as a preset's ``base:`` merge does), so an override can move an arm to another task without the old
    task's kwargs (``N`` of simple_spread) leaking in; ``env.kwargs.N: 4`` still sets one kwarg.
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if strict and (not isinstance(k, str) or not k or any(not p for p in k.split("."))):
            raise UserError(f"bad dotted key {k!r}")
        key = f"{prefix}{k}"
        if strict and key == "env.kwargs" and isinstance(v, dict):
            out[key] = v
        elif isinstance(v, dict) and v:
            out.update(flatten(v, key + ".", strict))
        else:
            out[key] = v
    return out


def config_diff(a: RunConfig, b: RunConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first invalid key: ``<source>: a.b: <message> (and N more)``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {p}: {e.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"malformed YAML in {p}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: top level must be a mapping of config keys")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge; ``over`` wins. ``env.kwargs`` is free-form, so it is replaced as a whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_preset(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML preset; a top-level ``base: other.yaml`` (relative to this file) is loaded first and merged."""
    p = Path(path)
    data = read_yaml(p)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"{p}: base must be a file name")
    base_path = (p.parent / base).resolve()
    if base_path in _seen or base_path == p.resolve():
        raise UserError(f"{p}: circular base chain through {base_path.name}")
    return deep_merge(read_preset(base_path, _seen + (p.resolve(),)), data)


# ---------------------------------------------------------------------------------------------- preset lookup
# experiments/*.yaml are the presets. A wheel ships them as marl_stability/presets/ (pyproject.toml maps that
# package folder onto experiments/); a source checkout, and the editable install `make setup` makes, reads
# experiments/ itself. `--config NAME` finds them from any working directory.
DEFAULT_PRESET = "maddpg_spread"  # `train` without --config: the "sensible settings" preset (docs/configuration.md)
PRESET_DIR_NAME = "experiments"


def presets_dir() -> Optional[Path]:
    """The folder holding the presets: the packaged copy of an installed wheel, or ``experiments/`` of the
    source checkout this module runs from (None when neither exists)."""
    package = Path(__file__).resolve().parent
    for candidate, marker in ((package / "presets", None), (package.parent / PRESET_DIR_NAME, "pyproject.toml")):
        if candidate.is_dir() and (marker is None or (package.parent / marker).is_file()):
            return candidate
    return None


def preset_names() -> list[str]:
    """Names of the presets (file stems), sorted."""
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None else []


def resolve_preset(name: str | Path) -> Path:
    """A ``--config`` value -> the preset file: an existing path first, then a packaged preset by name
    (``maddpg_spread``, ``maddpg_spread.yaml``, or ``experiments/maddpg_spread.yaml`` run outside the repository).
    Anything else is a UserError listing the presets."""
    path = Path(name)
    if path.exists():  # a folder or an unreadable file is read_yaml's one-line error
        return path
    parts = path.parts
    bare = len(parts) == 1 or (len(parts) == 2 and parts[0] == PRESET_DIR_NAME)
    folder = presets_dir()
    if bare and folder is not None and path.name not in ("", ".", ".."):
        stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    names = preset_names()
    listing = f"; presets: {', '.join(names)}" if names else "; no packaged presets found"
    raise UserError(f"config file not found: {path} (not a file, nor a preset name{listing})")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (so 1e-3, true, [64, 64] work)."""
    if "=" not in assignment:
        raise UserError(f"--set expects key.path=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot parse value {raw!r}") from None
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source)) from None


def load_config(path: Optional[str | Path] = None, overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """Defaults <- YAML file <- --set overrides, validated into a RunConfig."""
    data: dict[str, Any] = read_preset(path) if path is not None else {}
    # `--set env.kwargs.N=4` must merge into the default env kwargs, not replace them.
    for item in overrides:
        if item.startswith("env.kwargs."):
            env = data.setdefault("env", {})
            if isinstance(env, dict) and "kwargs" not in env:
                env["kwargs"] = dict(EnvConfig().kwargs)
        apply_override(data, item)
    source = str(path) if path is not None else "config"
    return build_config(data, source + (" with --set overrides" if overrides else ""))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_schema(model: type[BaseModel] = RunConfig, indent: int = 0) -> str:
    """YAML of every default, each line commented with the field's description (``marl-stability config``)."""
    lines: list[str] = []
    pad = "  " * indent
    instance = model()
    for name, field in model.model_fields.items():
        value = getattr(instance, name)
        desc = field.description or ""
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:  # {desc}")
            lines.append(describe_schema(type(value), indent + 1))
        else:
            dumped = json.dumps(value.tolist() if hasattr(value, "tolist") else value)
            lines.append(f"{pad}{name}: {dumped}  # {desc}")
    return "\n".join(lines)
