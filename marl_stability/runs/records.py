"""Reading runs for ``marl-stability calibrate``: finding run directories, labelling each run from its
evaluations (never from the detectors), its onset step, its group, and every signal's trace.

The label and onset definitions are in ``marl_stability.analysis.calibrate``'s docstring; this module implements them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from marl_stability.runs.signals import Scalars, SignalParams, Trace, learning_start, traces
from marl_stability.runs.labels import SAME_ACTION_THRESHOLD, is_collapsed
from marl_stability.runs.scalars import read_scalars
from marl_stability.errors import UserError
from marl_stability.core.summary import RunSummary

USABLE_STATUSES = ("completed", "diverged")  # runs that ended on their own; others are skipped with a note
LABELS = ("healthy", "collapsed", "diverged")
EVAL_STATS = ("repeat_rate", "saturation", "sensitivity", "batch_same_action")  # eval/<stat>/<agent>
# Existing detectors: summary field, and the signal whose tags show the detector was fed (None: always fed).
DETECTORS: dict[str, tuple[str, Optional[str]]] = {
    "collapse": ("collapse_step", "repeat_rate"),
    "explosion": ("explosion_step", "critic_grad_norm"),
    "nonfinite": ("nonfinite_step", None),
    "entropy_collapse": ("entropy_collapse_step", "entropy"),
    "kl_spike": ("kl_spike_step", "approx_kl"),
}
ANY_DETECTOR = "any"  # the earliest step any existing detector fired


@dataclass
class RunRecord:
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
    label: str  # healthy | collapsed | diverged
    onset: Optional[int]  # env step the failure began (None for healthy runs)
    onset_note: str  # how the onset was found ("" when the definition applied as written)
    learning_start: Optional[int] = None  # first gradient update's env step: signals are read from here on
    collapsed_agents: list[str] = field(default_factory=list)
    detectors: dict[str, Optional[int]] = field(default_factory=dict)  # fired step (None: never); absent: n/a
    signals: dict[str, Optional[Trace]] = field(default_factory=dict)  # None: n/a (no tag logged)

    @property
    def failing(self) -> bool:
        return self.label != "healthy"


# ---------------------------------------------------------------------------------------------- discovery
def _is_run_dir(path: Path, files: Iterable[str]) -> bool:
    names = set(files)
    return "config.yaml" in names and ("summary.json" in names or any(n.startswith("events.out.tfevents.") for n in names))


def find_run_dirs(dirs: list[Path]) -> list[Path]:
    """Every run directory given or below the given folders (any depth), each once, in a stable order."""
    found: dict[Path, None] = {}
    for d in dirs:
        if not d.exists():
            raise UserError(f"{d} does not exist")
        if not d.is_dir():
            raise UserError(f"{d} is not a directory")
        for root, subdirs, files in os.walk(d):
            subdirs.sort()
            if _is_run_dir(Path(root), files):
                found.setdefault(Path(root).resolve(), None)
                subdirs[:] = []  # checkpoints/, forensics/ (which holds a config.yaml) are part of the run
    return list(found)


def skip_reason(run_dir: Path, summary: Optional[RunSummary]) -> Optional[str]:
    """Why a run cannot be labelled (one line), or None."""
    if summary is None:
        return "no readable summary.json (still running, or crashed before writing one)"
    if summary.status not in USABLE_STATUSES:
        return f"status {summary.status!r} (only completed and diverged runs have a final outcome)"
    if not any(p.name.startswith("events.out.tfevents.") for p in run_dir.iterdir()):
        return "no TensorBoard event file"
    return None


# ---------------------------------------------------------------------------------------------- groups
def read_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's resolved config.yaml as a dict (None when unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


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


def disambiguate(records: list[RunRecord]) -> None:
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


# ---------------------------------------------------------------------------------------------- labels
def detector_thresholds(config: dict[str, Any]) -> dict[str, Any]:
    """The run's ``detectors:`` section over the defaults (older runs lack newer keys)."""
    from marl_stability.config import DetectorConfig

    own = config.get("detectors")
    return {**DetectorConfig().model_dump(), **(own if isinstance(own, dict) else {})}


def _eval_table(scalars: Scalars, agent: str) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Steps at which the agent's evaluation logged every needed stat, and stat -> {step: value}."""
    table = {k: dict(scalars.get(f"eval/{k}/{agent}", [])) for k in EVAL_STATS}
    needed = [k for k in EVAL_STATS if k != "batch_same_action" or table[k]]
    steps = sorted(set.intersection(*(set(table[k]) for k in needed))) if all(table[k] for k in needed) else []
    return steps, table


def collapse_onset(scalars: Scalars, agent: str, det: dict[str, Any]) -> tuple[Optional[int], str]:
    """First evaluation step from which the agent meets the end-state collapse criterion at every later
    evaluation, from its eval/ tags; (None, why) when the tags do not show it. Without eval/batch_same_action
    tags the detector's three thresholds alone decide (the note says so)."""
    steps, table = _eval_table(scalars, agent)
    if not steps:
        return None, f"{agent}: no evaluation tags"
    same = bool(table["batch_same_action"])
    onset: Optional[int] = None
    for st in reversed(steps):
        stats = {k: table[k].get(st, SAME_ACTION_THRESHOLD) for k in EVAL_STATS}  # absent same-action: passes
        if not is_collapsed(stats, det):
            break
        onset = st
    if onset is None:
        return None, f"{agent}: last logged evaluation not collapsed"
    return onset, "" if same else "onset from the detector thresholds alone (no eval/batch_same_action tags)"


def label_run(summary: RunSummary, config: dict[str, Any], scalars: Scalars) -> tuple[str, Optional[int], str, list[str]]:
    """(label, onset step, onset note, collapsed agents) of one run; definitions in ``marl_stability.analysis.calibrate``."""
    det = detector_thresholds(config)
    collapsed = [a for a, st in summary.action_stats.items() if is_collapsed(st.model_dump(), det)]
    if summary.status == "diverged" or summary.nonfinite_step is not None:
        if summary.nonfinite_step is not None:
            return "diverged", summary.nonfinite_step, "", collapsed
        return "diverged", summary.env_steps, "no non-finite step recorded: onset = the run's last env step", collapsed
    if not collapsed:
        return "healthy", None, "", []
    onsets, notes = [], []
    for agent in collapsed:
        step, note = collapse_onset(scalars, agent, det)
        if step is not None:
            onsets.append(step)
        if note:
            notes.append(note)
    if onsets:
        return "collapsed", min(onsets), "; ".join(sorted(set(notes))), collapsed
    final = summary.eval_history[-1].env_steps if summary.eval_history else summary.env_steps
    return "collapsed", final, "; ".join(notes) + ": onset = the final evaluation", collapsed


def detector_steps(summary: RunSummary, signals: dict[str, Optional[Trace]]) -> dict[str, Optional[int]]:
    """Each existing detector's fired step (None: never) where it was fed; ``any``: the earliest of them."""
    out: dict[str, Optional[int]] = {}
    for name, (fieldname, fed_by) in DETECTORS.items():
        if fed_by is None or signals.get(fed_by) is not None:
            out[name] = getattr(summary, fieldname)
    fired = [s for s in out.values() if s is not None]
    out[ANY_DETECTOR] = min(fired) if fired else None
    return out


def read_run(run_dir: Path, summary: RunSummary, config: dict[str, Any], params: SignalParams) -> RunRecord:
    """Label one finished run and compute its signals (reads its event files through runs.scalars)."""
    scalars = read_scalars(run_dir)
    label, onset, note, agents = label_run(summary, config, scalars)
    sig = traces(scalars, params)
    name, sweep = group_name(run_dir)
    return RunRecord(run_dir=str(run_dir), group=name, group_key=group_key(config), sweep=sweep, seed=summary.seed,
                     status=summary.status, algo=summary.algo, env=summary.env, env_steps=summary.env_steps,
                     label=label, onset=onset, onset_note=note, learning_start=learning_start(scalars),
                     collapsed_agents=agents,
                     detectors=detector_steps(summary, sig), signals=sig)
