"""Where a sweep keeps its files, and the two records it writes (the plan and the trial index).

Layout of a sweep directory ``DIR``::

    DIR/ablation.yaml            the ablation file as given (its text, for the record)
    DIR/arms.json                the plan: factors, reference arm, seeds and every arm's resolved config
    DIR/index.json               the state of every trial (pending/running/completed/diverged/failed)
    DIR/runs/<arm>/seed_<n>/     one ordinary training run per trial (config.yaml, events, checkpoints/, summary.json)
    DIR/results.csv, report.md, figures/   written by ``marl_stability.studies.report``

Only the parent process writes ``index.json`` (atomically); workers only write their own run directory.
The run directories are the ground truth: on ``--resume`` a trial whose ``summary.json`` has a final status
is done whatever the index says, so a parent killed between a trial's end and its index update loses nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from marl_stability.errors import UserError
from marl_stability.runs.record import RunRecord

INDEX_FORMAT = 1
# summary.json statuses after which a trial never runs again. Not summary.FINAL_STATUSES: an "interrupted"
# run has ended, but its trial resumes from the checkpoint.
FINAL_STATUSES = ("completed", "diverged")
TRIAL_STATES = ("pending", "running", "completed", "diverged", "failed")


def trial_id(arm: str, seed: int) -> str:
    return f"{arm}/seed_{seed}"


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    # The arm name is the run's folder, so TensorBoard (logdir DIR/runs) shows it in every run name.
    return out / "runs" / arm / f"seed_{seed}"


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class Arm:
    name: str
    levels: dict[str, str]
    overrides: dict[str, Any]
    config: dict[str, Any]  # the fully resolved RunConfig (seed as in the base; each trial sets its own)


@dataclass
class Plan:
    """Everything needed to run and report a sweep; saved as DIR/arms.json, so --resume needs no other file."""

    name: str
    design: str
    reference: str
    factors: list[str]
    seeds: list[int]
    arms: list[Arm]
    description: str = ""
    base_config: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        d = {k: v for k, v in data.items() if k != "format"}
        d["arms"] = [Arm(**a) for a in d["arms"]]
        return cls(**d)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def read_plan(out: Path) -> Plan:
    path = out / "arms.json"
    try:
        return Plan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{out} holds no sweep plan (no arms.json)") from None
    except (OSError, ValueError, TypeError, KeyError):
        raise UserError(f"{path} is unreadable or not a sweep plan") from None


# ---------------------------------------------------------------------------------------------- the index
def read_index(out: Path) -> dict[str, Any]:
    path = out / "index.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{out} holds no sweep (no index.json)") from None
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable or not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), dict):
        raise UserError(f"{path} is not a sweep index")
    return data


def new_entry(out: Path, arm: str, seed: int) -> dict[str, Any]:
    """The index entry of a trial that has not run yet."""
    return {"arm": arm, "seed": seed, "state": "pending", "error": None, "attempts": 0,
            "run_dir": str(run_dir_of(out, arm, seed).relative_to(out)), "summary": None}


def reconcile(out: Path, entry: dict[str, Any]) -> None:
    """Bring one index entry in line with its run directory (the ground truth after a crash or kill)."""
    summary = RunRecord(out / entry["run_dir"]).summary
    if summary is not None and summary.status in FINAL_STATUSES:
        entry.update(state=summary.status, error=None, summary=f"{entry['run_dir']}/summary.json")
    elif entry["state"] != "pending":
        # running (parent killed), failed (retried on resume) or a finished state whose files vanished
        entry.update(state="pending", summary=None)


def count_states(index: dict[str, Any]) -> dict[str, int]:
    """Number of trials in each state."""
    c = {s: 0 for s in TRIAL_STATES}
    for e in index["trials"].values():
        c[e["state"]] = c.get(e["state"], 0) + 1
    return c
