"""The run summary (``summary.json``): one typed model, written by the training loop and read by report,
reproduce and doctor. No torch import: reading results must not load the training stack.

Non-finite floats (a diverged run's NaN) are written as JSON ``NaN`` by ``json.dumps`` and read back as
floats; a missing number is ``null`` (``None``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# How a run ended. ``env_error``: the environment failed (a non-finite observation or reward, or an exception in
# its reset/step; ``error`` says where). ``crashed`` is reserved for a bug of ours (an exception escaped the loop).
STATUSES = ("running", "completed", "interrupted", "diverged", "env_error", "crashed")
FINAL_STATUSES = ("completed", "diverged", "interrupted", "env_error")
TIMING_KEYS = ("wall_seconds", "env_steps_per_second")


class EvalPoint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    env_steps: int
    team_return: Optional[float] = None


class AgentActionStats(BaseModel):
    """One agent's action statistics at an evaluation (NaN where undefined, e.g. one-step episodes)."""

    model_config = ConfigDict(extra="ignore")

    repeat_rate: float = Field(description="share of consecutive evaluation steps whose action did not change")
    saturation: float = Field(description="share of action components at a bound (discrete: max prob >= 0.99)")
    batch_same_action: float = Field(description="share of pairs of different states mapped to the same action")
    sensitivity: float = Field(description="mean standardized Jacobian norm d(action)/d(obs)")


class RunSummary(BaseModel):
    """What ``summary.json`` holds. Unknown keys are ignored when reading (older or newer writers)."""

    model_config = ConfigDict(extra="ignore")

    status: str
    env: str = ""
    algo: str = "maddpg"
    on_policy: bool = Field(False, description="the algorithm learns from rollouts of its current policy (its class's "
                            "on_policy); written only when true, so off-policy runs keep the summary they had")
    seed: int = 0
    fixes: dict[str, Any] = Field(default_factory=dict)
    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    final_return: Optional[float] = None
    best_return: Optional[float] = None
    max_grad_norm: dict[str, float] = Field(default_factory=dict, description="peak pre-clip norm per network kind")
    nonfinite_events: int = 0
    explosion_step: Optional[int] = None
    collapse_step: Optional[int] = None
    nonfinite_step: Optional[int] = None
    entropy_collapse_step: Optional[int] = Field(None, description="on-policy: first env step of an entropy collapse")
    kl_spike_step: Optional[int] = Field(None, description="on-policy: env step of the first KL spike")
    degradation_step: Optional[int] = Field(None, description="env step from which the team return stayed below "
                                            "the run's best by more than the degradation margin (None: never)")
    detector_messages: list[str] = Field(default_factory=list)
    repeated_action_rate: Optional[float] = None
    saturation_rate: Optional[float] = None
    action_sensitivity: Optional[float] = None
    action_stats: dict[str, AgentActionStats] = Field(default_factory=dict)
    rollbacks: int = 0
    eval_history: list[EvalPoint] = Field(default_factory=list)
    agents: list[str] = Field(default_factory=list)
    wall_seconds: float = 0.0
    env_steps_per_second: Optional[float] = None
    plasticity: dict[str, Any] = Field(
        default_factory=dict, description="the last plasticity measurement: env_steps, update, networks: {network: "
        "{metric: value}} (metrics as in the plasticity/ tags; empty when plasticity.enabled is false)")
    fix_engagement: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per fix the run uses (registry id): engaged (true/false: measured; null: "
        "acts by construction, not measured) and how (the evidence)")
    healing: list[dict[str, Any]] = Field(
        default_factory=list, description="train.heal: one record per heal (trigger, alarm_step, road, why, onset_step, "
        "rolled_back_to, fix, settings, env_steps_lost, data, outcome); absent when no heal happened")
    started_from: dict[str, Any] = Field(
        default_factory=dict, description="train.start_from: the checkpoint the run started from (checkpoint) and its "
        "env step (env_steps); the run's env_steps, episodes and eval_history include the steps before it")
    hooks: dict[str, dict[str, Any]] = Field(default_factory=dict, description="what users' hooks add, by hook name")
    error: Optional[str] = Field(None, description="env_error: the environment's failure (env, agent, field, env step); "
                                 "crashed: the exception")

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def grad_peak(self, kind: str) -> Optional[float]:
        """Peak pre-clip gradient norm of one network kind ("critic", "actor"), None when not recorded."""
        value = self.max_grad_norm.get(kind)
        return None if value is None else float(value)

    def returns(self) -> list[tuple[int, float]]:
        """(env step, team return) of every evaluation with a finite return."""
        return [(p.env_steps, p.team_return) for p in self.eval_history
                if p.team_return is not None and p.team_return == p.team_return and abs(p.team_return) != float("inf")]

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="python")
        for key in ("on_policy", "plasticity", "fix_engagement", "healing", "started_from", "hooks", "error"):  # runs without these keep the summary.json they always had
            if not out[key]:
                del out[key]
        return out


def action_summary(final: dict[str, AgentActionStats]) -> dict[str, Any]:
    """``summary.json``'s action fields from each agent's final evaluation statistics: the mean over agents of the repeat
    rate, saturation and sensitivity (None without an evaluation), and the per-agent statistics."""
    import numpy as np

    mean = (lambda k: float(np.mean([getattr(v, k) for v in final.values()])) if final else None)  # noqa: E731
    return {"repeated_action_rate": mean("repeat_rate"), "saturation_rate": mean("saturation"),
            "action_sensitivity": mean("sensitivity"), "action_stats": {a: v.model_dump() for a, v in final.items()}}


def read_summary(path: str | Path) -> Optional[RunSummary]:
    """The summary at ``path`` (a run directory or the file itself); None when missing, corrupt or invalid."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return RunSummary.model_validate(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError, TypeError):
        return None
