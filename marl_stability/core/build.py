"""One way to build a run: env (vector), layout, fixes and algorithm, with the probe and compatibility
checks. Used by the trainer, ``reproduce``'s episode rendering and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from marl_stability import agents, envs
from marl_stability.config import RunConfig
from marl_stability.errors import UserError
from marl_stability.fixes.objects import Fixes, build_fixes


def make_venv(cfg: RunConfig, num_envs: int, seed: int) -> Any:
    e = cfg.env
    return envs.make_vector_env(e.id, e.kwargs, num_envs, seed, backend=e.backend, reward_scale=e.reward_scale,
                                obs_scale=e.obs_scale, obs_offset=e.obs_offset)


def probe_env(cfg: RunConfig) -> None:
    """Build one env copy, reset it and take one step, so a bad env kwarg fails before any file is touched."""
    try:
        venv = make_venv(cfg, 1, cfg.seed)
        venv.reset()
        venv.step(np.asarray(venv.layout.act_low, np.float32)[None])
        venv.close()
    except envs.EnvError as e:
        if cfg.env.id in str(e):
            raise
        raise envs.EnvError(f"{cfg.env.id} (env.backend={cfg.env.backend}): {e}") from None
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"environment {cfg.env.id} with env.kwargs {cfg.env.kwargs} failed on a probe step: "
                        f"{e.__class__.__name__}: {detail}") from None


def check_compatible(cfg: RunConfig, layout: Any) -> None:
    """The configured algorithm can train these agents with this config (else a one-line UserError)."""
    agents.algorithm_class(cfg.algo).check_layout(cfg, layout)


@dataclass
class RunParts:
    venv: Any
    layout: Any
    fixes: Fixes
    algorithm: agents.Algorithm

    def close(self) -> None:
        self.venv.close()


def build_run(cfg: RunConfig, events: Any = None, num_envs: Optional[int] = None, seed: Optional[int] = None,
              probe: bool = True) -> RunParts:
    """Probe the env, build ``num_envs`` copies (default ``env.num_envs``), check the algorithm fits the
    agents, build the fixes and the algorithm (holding ``events``). The env is closed on any failure."""
    if probe:
        probe_env(cfg)
    n = cfg.env.num_envs if num_envs is None else num_envs
    venv = make_venv(cfg, n, cfg.seed if seed is None else seed)
    try:
        layout = venv.layout
        check_compatible(cfg, layout)
        gamma = agents.algorithm_class(cfg.algo).discount(cfg)  # the learner's discount: the class says whose
        fixes = build_fixes(cfg.fixes, n, layout.num_agents, layout.max_obs_dim, gamma, shadow=cfg.train.heal.enabled)
        algorithm = agents.make(cfg, layout, fixes, events)
    except BaseException:
        venv.close()
        raise
    return RunParts(venv, layout, fixes, algorithm)
