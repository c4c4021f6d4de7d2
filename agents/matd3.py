"""MATD3 (Ackermann et al. 2019, arXiv 1910.01465): MADDPG with TD3's three changes (Fujimoto et al. 2018).

1. **Twin centralized critics per agent**; the TD target takes the minimum of the two target critics, both
   critics regress on it (their losses summed, one optimizer, one gradient clip per agent).
2. **Target-policy smoothing**: the target actors' actions get Gaussian noise of std ``matd3.target_noise``
   clipped to +-``matd3.target_noise_clip`` (both fractions of the action range, like the exploration
   noise; TD3's 0.2 / 0.5 on a [-1, 1] action are 0.1 / 0.25 of its range, the defaults here), then
   pass through the output head's exploration mapping (the bounds). Discrete agents: no smoothing (their
   target action is the target actor's one-hot argmax, as in MADDPG).
3. **Delayed actor and target updates**: the actors and every target network move once every
   ``matd3.policy_delay`` updates (default 2); the critics every update.

Everything else — networks, fixes, the per-agent or stacked update strategy, exploration, replay,
checkpoints — is MADDPG's, configured by the same ``maddpg:`` section. The actor follows the first critic.
"""

from __future__ import annotations

from typing import Any

import torch
from marl_stability.agents.maddpg import MADDPG
from marl_stability.envs.vector import AgentLayout


class MATD3(MADDPG):
    name = "matd3"
    stat_prefixes = MADDPG.stat_prefixes + ("q/twin_gap/",)
    num_critics = 2

    def __init__(self, cfg: Any, spec: AgentLayout, fixes: Any, events: Any = None) -> None:
        self.td3 = cfg.matd3
        super().__init__(cfg, spec, fixes, events)

    def actor_step_due(self) -> bool:
        return self.updates % self.td3.policy_delay == 0

    def smooth_target(self, i: int, action: torch.Tensor) -> torch.Tensor:
        if self.spec.discrete[i] or self.td3.target_noise == 0:
            return action
        d = self.spec.act_dims[i]
        span = self.high[i, :d] - self.low[i, :d]
        noise = torch.randn(action.shape, generator=self.gen) * self.td3.target_noise * span
        bound = self.td3.target_noise_clip * span
        return self.target_actors[i].head.explore(action + torch.maximum(torch.minimum(noise, bound), -bound))

    def smooth_target_stacked(self, actions: torch.Tensor) -> torch.Tensor:
        if self.strategy.target_actor_stack.discrete or self.td3.target_noise == 0:
            return actions
        n, b, d = actions.shape
        # One draw per agent, as the per-agent loop makes them (same random stream in both strategies).
        span = (self.high - self.low).unsqueeze(1)  # [N, 1, d]
        noise = torch.stack([torch.randn((b, d), generator=self.gen) for _ in range(n)]) * self.td3.target_noise * span
        bound = self.td3.target_noise_clip * span
        return self.strategy.target_actor_stack.explore(actions + torch.maximum(torch.minimum(noise, bound), -bound))
