"""The calibration's view of a labelled run (``records.json`` holds a list of these): its label and onset (from
:mod:`marl_stability.runs.labels`), its group, each existing detector's step, and every signal's trace.

The label and onset definitions are in ``marl_stability.analysis.calibrate``'s docstring.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from marl_stability.core.summary import RunSummary
from marl_stability.runs.record import RunRecord
from marl_stability.runs.signals import SignalParams, Trace, learning_start, traces

# Existing detectors: summary field, and the signal whose tags show the detector was fed (None: always fed).
DETECTORS: dict[str, tuple[str, Optional[str]]] = {
    "collapse": ("collapse_step", "repeat_rate"),
    "explosion": ("explosion_step", "critic_grad_norm"),
    "nonfinite": ("nonfinite_step", None),
    "entropy_collapse": ("entropy_collapse_step", "entropy"),
    "kl_spike": ("kl_spike_step", "approx_kl"),
    "degradation": ("degradation_step", "summary"),  # fed where summary.json has the key (runs of 0.2.0 on)
}
ANY_DETECTOR = "any"  # the earliest step any existing detector fired


@dataclass
class LabelledRun:
    """Everything the calibration uses from one run (``records.json`` holds a list of these)."""

    run_dir: str
    group: str  # readable: the sweep arm, else the run folder without _s<k>/seed_<k>
    group_key: str  # hash of the resolved config without the seed
    sweep: str  # folder of the sweep the run sits in ("" if none)
    seed: int
    status: str
    algo: str
    env: str
    env_steps: int
    label: str  # healthy | collapsed | diverged | degraded
    onset: Optional[int]  # env step the failure began (None for healthy runs)
    onset_note: str  # how the onset was found ("" when the definition applied as written)
    learning_start: Optional[int] = None  # first gradient update's env step: signals are read from here on
    kind: str = ""  # collapsed: saturated | unsaturated; degraded: below_do_nothing | dropped (runs.labels)
    collapsed_agents: list[str] = field(default_factory=list)
    detectors: dict[str, Optional[int]] = field(default_factory=dict)  # fired step (None: never); absent: n/a
    signals: dict[str, Optional[Trace]] = field(default_factory=dict)  # None: n/a (no tag logged)

    @property
    def failing(self) -> bool:
        return self.label != "healthy"


# ---------------------------------------------------------------------------------------------- groups
def group_key(config: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the resolved config without ``seed``."""
    rest = {k: v for k, v in config.items() if k != "seed"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def group_name(run_dir: Path) -> tuple[str, str]:
    """(readable group name, sweep folder name): ``<sweep>/runs/<arm>/seed_<k>`` -> (arm, sweep); else the run
    folder's name without a trailing ``_s<k>`` or ``seed_<k>`` (the parent's name if nothing is left)."""
    if re.fullmatch(r"seed_\d+", run_dir.name) and run_dir.parent.parent.name == "runs":
        return run_dir.parent.name, run_dir.parent.parent.parent.name
    name = re.sub(r"(_s\d+|_?seed_\d+)$", "", run_dir.name)
    return (name or run_dir.parent.name), ""


def disambiguate(records: list[LabelledRun]) -> None:
    """Two configs with one readable name (the same arm name in two sweeps): prefix the sweep, else add the hash."""
    keys: dict[str, set[str]] = {}
    for r in records:
        keys.setdefault(r.group, set()).add(r.group_key)
    for r in records:
        if len(keys[r.group]) > 1:
            r.group = f"{r.sweep}/{r.group}" if r.sweep else f"{r.group} [{r.group_key[:8]}]"
    again: dict[str, set[str]] = {}
    for r in records:
        again.setdefault(r.group, set()).add(r.group_key)
    for r in records:
        if len(again[r.group]) > 1:  # still ambiguous (one sweep, two configs per arm): the hash decides
            r.group = f"{r.group} [{r.group_key[:8]}]"


def detector_steps(summary: RunSummary, signals: dict[str, Optional[Trace]]) -> dict[str, Optional[int]]:
    """Each existing detector's fired step (None: never) where it was fed; ``any``: the earliest of them."""
    out: dict[str, Optional[int]] = {}
    for name, (fieldname, fed_by) in DETECTORS.items():
        if fed_by == "summary":
            if fieldname in summary.model_fields_set:
                out[name] = getattr(summary, fieldname)
        elif fed_by is None or signals.get(fed_by) is not None:
            out[name] = getattr(summary, fieldname)
    fired = [s for s in out.values() if s is not None]
    out[ANY_DETECTOR] = min(fired) if fired else None
    return out


def read_run(run: RunRecord, params: SignalParams) -> LabelledRun:
    """Label one finished run and compute its signals."""
    summary, config, scalars = run.summary, run.config or {}, run.scalars
    assert summary is not None, "read_run needs a run with a summary (skip_reason() is None)"
    label, onset, note, agents, kind = run.label
    sig = traces(scalars, params)
    name, sweep = group_name(run.dir)
    return LabelledRun(run_dir=str(run.dir), group=name, group_key=group_key(config), sweep=sweep, seed=summary.seed,
                       status=summary.status, algo=summary.algo, env=summary.env, env_steps=summary.env_steps,
                       label=label, kind=kind, onset=onset, onset_note=note, learning_start=learning_start(scalars),
                       collapsed_agents=agents, detectors=detector_steps(summary, sig), signals=sig)
