"""From an ablation file to a validated plan: every arm's resolved config, checked (and its env probed) before
any trial runs, so a typo fails in seconds and names the factor or arm it is in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from marl_stability.config import RunConfig, flatten, load_config
from marl_stability.errors import UserError
from marl_stability.runs.sweep_layout import Arm, Plan
from marl_stability.studies.sweep.spec import (
    SeedChoice,
    AblationFile,
    default_reference,
    expand_design,
    load_ablation,
    override_strings,
)


def _levels_by_matching(ab: AblationFile, flat_cfg: dict[str, Any]) -> dict[str, str]:
    """For explicit arms: a factor is 'on'/'off' when every key of that level matches the arm's config."""
    out = {}
    for name, f in ab.factors.items():
        on, off = f.levels()
        if all(flat_cfg.get(k) == v for k, v in on.items()):
            out[name] = "on"
        elif not off or all(flat_cfg.get(k) == v for k, v in off.items()):
            out[name] = "off"  # without set_off, "off" means "not the on level" (whatever the base has)
        else:
            out[name] = "other"
    return out


def make_plan(path: str | Path, seeds: "Optional[int | SeedChoice]" = None, probe: bool = True,
              extra: Optional[dict[str, Any]] = None) -> Plan:
    """Read an ablation file, expand its design and validate every arm's config (and env) before any trial runs.

    ``extra`` (dotted key -> value) is applied to every arm last, e.g. a shorter budget for a smoke run.
    """
    path = Path(path)
    ab = load_ablation(path)
    specs = expand_design(ab)
    last = flatten(extra or {}, strict=True)
    for spec in specs:
        spec.overrides.update(last)
    reference = default_reference(ab, specs)

    def find(rel: str, what: str) -> Path:
        p = (path.parent / rel).resolve()
        if not p.is_file():
            raise UserError(f"{path}: {what} {rel} not found (looked for {p})")
        return p

    preset = find(ab.base.config, "base config")
    # Each factor's levels are checked on the base alone too, so the error names the factor, not an arm.
    for name, f in ab.factors.items():
        for level, over in zip(("on", "off"), f.levels()):
            try:
                load_config(preset, override_strings({**flatten(ab.base.set, strict=True), **over}))
            except UserError as e:
                raise UserError(f"factor {name} ({level}): {e}") from None
    arms = []
    for spec in specs:
        try:
            cfg = load_config(find(spec.config, f"arm {spec.name}: config") if spec.config else preset,
                              override_strings(spec.overrides))
        except UserError as e:
            raise UserError(f"arm {spec.name}: {e}") from None
        d = _cap_threads(spec.name, spec.overrides, cfg.to_dict(), ab.threads_per_worker)
        levels = spec.levels if ab.design != "arms" else _levels_by_matching(ab, flatten(d))
        arms.append(Arm(spec.name, levels, spec.overrides, d))
    if probe:
        _probe_envs(arms)
    choice = SeedChoice.of(seeds)
    if choice is not None and choice.count is not None and choice.count < 1:
        raise UserError("--seeds must be >= 1")
    seed_list = choice.resolve(ab.seed_list()) if choice is not None else ab.seed_list()
    return Plan(
        name=ab.name or path.stem, design=ab.design, reference=reference, factors=list(ab.factors),
        seeds=seed_list, arms=arms, description=(ab.description or "").strip(), base_config=str(ab.base.config),
    )


def _cap_threads(arm: str, overrides: dict[str, Any], config: dict[str, Any], threads: int) -> dict[str, Any]:
    """One torch thread per worker unless the file's ``threads_per_worker`` allows more: a preset's own
    ``train.torch_threads`` is capped (recorded in the arm's resolved config, so every trial's config.yaml says
    what ran); an override in the ablation file asking for more than the cap is an error, not silently lowered."""
    asked = overrides.get("train.torch_threads")
    if asked is not None and isinstance(asked, int) and asked > threads:
        raise UserError(f"arm {arm}: train.torch_threads={asked} is above threads_per_worker={threads}; "
                        f"set threads_per_worker: {asked} in the ablation file to run {asked} threads per trial")
    config["train"]["torch_threads"] = min(int(config["train"]["torch_threads"]), threads)
    return config


def _probe_envs(arms: list[Arm]) -> None:
    """Build and step each distinct environment once: a bad env kwarg fails here, not in every trial."""
    from marl_stability import envs
    from marl_stability.core.build import (
        probe_env,  # builds envs (and imports torch): only when probing
    )

    seen: set[str] = set()
    for a in arms:
        cfg = RunConfig.model_validate(a.config)
        key = json.dumps(cfg.env.model_dump(mode="json"), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            probe_env(cfg)  # the trainer's own probe: the same check a trial would fail on
        except (UserError, envs.EnvError) as e:
            raise UserError(f"arm {a.name}: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}") from None

