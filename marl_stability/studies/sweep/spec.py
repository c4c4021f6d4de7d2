"""The ablation file: its typed model, and its expansion into arms (name, factor levels, dotted overrides).

An ablation file names a base preset, on/off factors and a design (factorial, one at a time, leave one
out, or explicit arms); ``expand_design`` turns it into arms before any config is validated.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from marl_stability.config import flatten, format_validation_error, read_yaml
from marl_stability.errors import UserError

_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+=-]*$")  # no leading dot: no hidden run folders
_FACTOR_RE = re.compile(r"^[A-Za-z0-9_.]+$")
_RESERVED_ARMS = ("base", "all")


# ---------------------------------------------------------------------------------------------- the file
class _Forbid(BaseModel):
    # Typos in an ablation file must fail loudly, like in run configs.
    model_config = ConfigDict(extra="forbid")


class BaseSpec(_Forbid):
    config: str = Field(description="preset the arms start from, relative to the ablation file")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides applied to every arm")


class FactorSpec(_Forbid):
    """One switch: ``{key, on, off}`` for a single dotted key or ``{set_on, set_off}`` for several together."""

    key: Optional[str] = Field(None, description="dotted config key")
    on: Any = Field(None, description="value of key when the factor is on")
    off: Any = Field(None, description="value of key when off (absent: whatever the base config has)")
    set_on: Optional[dict[str, Any]] = Field(None, description="dotted overrides when on")
    set_off: Optional[dict[str, Any]] = Field(None, description="dotted overrides when off (absent: the base config)")

    @model_validator(mode="after")
    def _one_form(self) -> "FactorSpec":
        if (self.key is None) == (self.set_on is None):
            raise ValueError("give either key (with on, optionally off) or set_on (optionally set_off)")
        if self.key is not None:
            if "on" not in self.model_fields_set:
                raise ValueError("key needs an on value")
            if self.set_off is not None:
                raise ValueError("set_off goes with set_on, not with key")
        elif {"on", "off"} & self.model_fields_set:
            raise ValueError("on/off go with key; use set_on/set_off")
        return self

    def levels(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(overrides when on, overrides when off), both flat dotted dicts."""
        if self.key is not None:
            on = flatten({self.key: self.on}, strict=True)
            off = flatten({self.key: self.off}, strict=True) if "off" in self.model_fields_set else {}
            return on, off
        return flatten(self.set_on or {}, strict=True), flatten(self.set_off or {}, strict=True)


class AblationFile(_Forbid):
    name: Optional[str] = Field(None, description="sweep name (default: the file's stem)")
    description: Optional[str] = Field(None, description="free text, copied into the report")
    base: BaseSpec = Field(description="the starting config")
    factors: dict[str, FactorSpec] = Field(default_factory=dict, description="named on/off switches")
    design: Literal["factorial", "one_at_a_time", "leave_one_out", "arms"] = Field(description="how arms are built")
    arms: Optional[dict[str, dict[str, Any]]] = Field(
        None, description="design=arms: arm name -> dotted overrides; a `config` key starts that arm from another "
        "preset (relative to the ablation file) instead of base.config")
    reference: Optional[str] = Field(None, description="arm every other arm is compared with (default per design)")
    seeds: Union[int, list[int]] = Field(5, description="number of seeds (0..n-1) or an explicit list")
    steps: Optional[int] = Field(None, ge=1, description="env steps per trial (train.steps)")
    threads_per_worker: int = Field(
        1, ge=1, le=256, description="torch threads a trial may use: every arm's train.torch_threads is capped to it, "
        "so --workers N runs N threads (a preset's 2 threads would make N workers run 2N); raise it to let presets "
        "that ask for more threads have them")

    @model_validator(mode="before")
    @classmethod
    def _base_shorthand(cls, data: Any) -> Any:
        # `base: preset.yaml` is the common case; allow it as shorthand for `base: {config: preset.yaml}`.
        if isinstance(data, dict) and isinstance(data.get("base"), str):
            data = {**data, "base": {"config": data["base"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "AblationFile":
        for name in self.factors:
            if not _FACTOR_RE.match(name) or name in _RESERVED_ARMS:
                raise ValueError(f"factor name {name!r} must use letters, digits, '_' or '.' and not be base/all")
        if self.design == "arms":
            if not self.arms:
                raise ValueError("design arms needs a non-empty arms mapping")
        else:
            if self.arms is not None:
                raise ValueError(f"arms only goes with design: arms (design is {self.design})")
            if not self.factors:
                raise ValueError(f"design {self.design} needs at least one factor")
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise ValueError("seeds must be >= 1")
        elif not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError("seeds must be a non-empty list of distinct non-negative integers")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class SeedChoice:
    """Which seeds a sweep runs, from the command line: ``--seeds N`` (0..N-1), shifted by ``--seed-offset K``
    (K..K+N-1; without --seeds the file's seeds, shifted), or ``--seed-list`` (exactly these)."""

    count: Optional[int] = None
    offset: int = 0
    listed: Optional[tuple[int, ...]] = None

    def resolve(self, default: list[int]) -> list[int]:
        if self.listed is not None:
            return list(self.listed)
        base = list(range(self.count)) if self.count is not None else default
        return [s + self.offset for s in base]

    @classmethod
    def of(cls, seeds: "Optional[int | SeedChoice]") -> "Optional[SeedChoice]":
        """An int (the old ``seeds=N``) is ``--seeds N``."""
        if seeds is None or isinstance(seeds, SeedChoice):
            return seeds
        return cls(count=int(seeds))

    @classmethod
    def parse(cls, count: Optional[int], offset: Optional[int], listed: Optional[str]) -> "Optional[SeedChoice]":
        """The CLI options as one choice (None: the file's seeds); a one-line UserError for a bad combination."""
        if listed is not None and (count is not None or offset is not None):
            raise UserError("--seed-list names the seeds itself: leave out --seeds and --seed-offset")
        if count is not None and count < 1:
            raise UserError("--seeds must be >= 1")
        if offset is not None and offset < 0:
            raise UserError("--seed-offset must be >= 0")
        if listed is not None:
            from marl_stability.analysis.calibrate import parse_seeds

            return cls(listed=tuple(parse_seeds(listed, "--seed-list")))
        if count is None and offset is None:
            return None
        return cls(count=count, offset=offset or 0)


def _fix_yaml11_keys(obj: Any) -> Any:
    """PyYAML reads unquoted ``on:``/``off:`` keys as booleans (YAML 1.1); give factor levels their names back."""
    if isinstance(obj, dict):
        return {("on" if k is True else "off" if k is False else k): v for k, v in obj.items()}
    return obj


def load_ablation(path: str | Path) -> AblationFile:
    """Read and validate an ablation file (UserError naming the key on any problem)."""
    p = Path(path)
    data = read_yaml(p)
    if isinstance(data.get("factors"), dict):
        data["factors"] = {k: _fix_yaml11_keys(v) for k, v in data["factors"].items()}
    try:
        return AblationFile.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(p))) from None


# ---------------------------------------------------------------------------------------------- the design
@dataclass
class ArmSpec:
    """An arm before validation: its name, factor levels and the dotted overrides on top of the base preset."""

    name: str
    levels: dict[str, str]
    overrides: dict[str, Any]
    config: Optional[str] = None  # explicit arms only: a preset replacing base.config for this arm


def _arm_spec(name: str, arm: dict[str, Any], base: dict[str, Any], steps: dict[str, Any]) -> ArmSpec:
    """An explicit arm: optional ``config`` (its own preset) plus dotted overrides on top of it."""
    arm = dict(arm or {})
    preset = arm.pop("config", None)
    if preset is not None and (not isinstance(preset, str) or not preset):
        raise UserError(f"arm {name}: config must be a preset path")
    return ArmSpec(name, {}, {**base, **flatten(arm, strict=True), **steps}, preset)


def expand_design(ab: AblationFile) -> list[ArmSpec]:
    """The arms of the design, in report order (the reference arm first for the factor designs).

    Overrides are applied in this order: base ``set``, factor levels, ``steps``; factors never share keys.
    """
    factors = {name: f.levels() for name, f in ab.factors.items()}
    owner: dict[str, str] = {}
    for name, (on, off) in factors.items():
        for key in set(on) | set(off):
            if key in owner:
                raise UserError(f"factors {owner[key]} and {name} both set {key}")
            owner[key] = name
    base = flatten(ab.base.set, strict=True)
    steps = {"train.steps": ab.steps} if ab.steps is not None else {}

    def arm(name: str, on_set: Iterable[str]) -> ArmSpec:
        on_set = set(on_set)
        over = dict(base)
        levels = {}
        for f, (on, off) in factors.items():
            levels[f] = "on" if f in on_set else "off"
            over.update(on if f in on_set else off)
        return ArmSpec(name, levels, {**over, **steps})

    names = list(factors)
    if ab.design == "one_at_a_time":
        arms = [arm("base", [])] + [arm(f"+{f}", [f]) for f in names]
    elif ab.design == "leave_one_out":
        arms = [arm("all", names)] + [arm(f"-{f}", [g for g in names if g != f]) for f in names]
    elif ab.design == "factorial":
        if len(names) > 10:
            raise UserError(f"a full factorial over {len(names)} factors has {2 ** len(names)} arms; use fewer factors")
        arms = [arm("+".join(c) or "base", c) for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    else:  # explicit arms; factor levels (if factors are declared) are found by matching resolved configs later
        arms = [_arm_spec(n, o, base, steps) for n, o in (ab.arms or {}).items()]
    seen: set[str] = set()
    for a in arms:
        if not _NAME_RE.match(a.name) or a.name in (".", ".."):
            raise UserError(f"arm name {a.name!r} is not a plain folder name (letters, digits, _ . + = -)")
        if a.name in seen:
            raise UserError(f"two arms are named {a.name}")
        seen.add(a.name)
    return arms


def default_reference(ab: AblationFile, arms: list[ArmSpec]) -> str:
    """The arm the report compares every other arm with."""
    if ab.reference is not None:
        if ab.reference not in {a.name for a in arms}:
            raise UserError(f"reference {ab.reference!r} is not an arm ({', '.join(a.name for a in arms)})")
        return ab.reference
    if ab.design == "arms":
        return "base" if any(a.name == "base" for a in arms) else arms[0].name
    return arms[0].name  # base (one_at_a_time, factorial) or all (leave_one_out)


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """Dotted dict -> ``key=value`` strings for ``load_config`` (JSON is valid YAML, so values round-trip)."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]

