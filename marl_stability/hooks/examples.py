"""Example hooks to copy from (docs/architecture.md, "Adding a hook"). Use one from config::

    train:
      hooks: [marl_stability.hooks.examples:StopWhenSaturated]
"""

from __future__ import annotations

from typing import Any

from marl_stability.core.events import EvaluationEvent
from marl_stability.core.hooks import Hook, RunContext


class StopWhenSaturated(Hook):
    """End a run early (status ``interrupted``) once every agent's actions stay saturated: the saturation of
    each agent is above ``threshold`` for ``patience`` evaluations in a row. Its own tag counts the streak.

    A run stopped this way keeps its checkpoint and summary; ``--resume --steps N`` continues it."""

    name = "stop_when_saturated"
    prefixes = ("user/saturated_streak",)
    threshold = 0.95
    patience = 3

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        self.streak = 0

    def on_evaluation(self, ev: EvaluationEvent) -> None:
        stats = ev.derived["action_stats"]  # per agent, derived by the built-in evaluation hook (runs first)
        saturated = all(s.saturation > self.threshold for s in stats.values())
        self.streak = self.streak + 1 if saturated else 0
        self.log.record("user/saturated_streak", self.streak, self.ctx.env_steps)
        if self.streak >= self.patience:
            self.ctx.stop("interrupted", f"saturation above {self.threshold} for {self.streak} evaluations")

    def summary(self) -> dict[str, Any]:
        return {"saturated_streak": self.streak}  # summary.json: hooks.stop_when_saturated.saturated_streak

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak}  # a resumed run continues the streak

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = int(state["streak"])
