"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)`` (no code is ever unpickled)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from marl_stability.atomic import (  # noqa: F401 (re-exported)
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from marl_stability.config import RunConfig
from marl_stability.errors import UserError


def to_safe(obj: Any) -> Any:
    """numpy arrays -> tensors, recursively, so the weights-only unpickler accepts the state."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def resume_checkpoint(run_dir: Path) -> Path:
    """Everything a resume needs (replay buffer, env copies, hooks): written while a run goes."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def final_checkpoint(run_dir: Path) -> Path:
    """What a finished run keeps by default (``train.checkpoints: final``): networks, optimizers, normalizers."""
    return Path(run_dir) / "checkpoints" / "final.pt"


def policy_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint to act from: the final one, else the resume one; None without either."""
    for path in (final_checkpoint(run_dir), resume_checkpoint(run_dir)):
        if path.is_file():
            return path
    return None


def saved_config(state: dict[str, Any], path: Path) -> RunConfig:
    """The config a checkpoint was written with (a one-line error when it is not a valid one)."""
    try:
        return RunConfig.model_validate(state["config"])
    except Exception:
        raise UserError(f"checkpoint {path} holds an invalid config") from None


def history_dir(run_dir: Path) -> Path:
    """``train.keep_checkpoints``: the periodic checkpoints kept, one per ``checkpoint_every``, named by env step."""
    return Path(run_dir) / "checkpoints" / "history"


def history_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(env step, path) of the run's kept periodic checkpoints, oldest first ([] without any)."""
    found = []
    for path in history_dir(run_dir).glob("*.pt"):
        if path.stem.isdigit():
            found.append((int(path.stem), path))
    return sorted(found)


def keep_history(run_dir: Path, state: dict[str, Any], env_steps: int, keep: int, alarmed: bool) -> None:
    """Write ``state`` without its env copies and hooks (what ``train.start_from`` loads) as the
    history checkpoint of ``env_steps`` and drop all but the newest ``keep`` -- except that the ones there when a
    failure detector has first fired (``alarmed``) are pinned for good (``history/pinned.json``): a failure's onset
    comes before its alarm (a collapse is confirmed evaluations later), and they are the states ``cure`` starts from."""
    pinned_file = history_dir(run_dir) / "pinned.json"
    if alarmed and not pinned_file.is_file():
        atomic_write_json(pinned_file, [step for step, _ in history_checkpoints(run_dir)])
    kept = {k: v for k, v in state.items() if k not in ("env", "obs", "hooks")}
    save_checkpoint(history_dir(run_dir) / f"{env_steps}.pt", {**kept, "kind": "history"})
    pinned = set(json.loads(pinned_file.read_text(encoding="utf-8"))) if pinned_file.is_file() else set()
    droppable = [path for step, path in history_checkpoints(run_dir) if step not in pinned]
    for old in droppable[:-keep]:
        old.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(to_safe(state), f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"no checkpoint to resume from: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a checkpoint at all
        raise UserError(f"cannot load checkpoint {path}: corrupt or not a marl-stability checkpoint ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise UserError(f"cannot load checkpoint {path}: not a marl-stability checkpoint")
    return state


def save_final_checkpoint(run_dir: Path, state: dict[str, Any], resume_only: tuple[str, ...]) -> None:
    """A run's final checkpoint: of a checkpoint's ``state``, its format, config, counters and the algorithm's
    state without its ``resume_only`` keys (such as the replay buffer); env copies and hooks are left out. The
    resume checkpoint stays until the run's summary is written (the trainer removes it then): a run killed in
    between still resumes."""
    save_checkpoint(final_checkpoint(run_dir), {
        "format": state["format"], "kind": "final", "config": state["config"],
        "algo": {k: v for k, v in state["algo"].items() if k not in resume_only}, "progress": state["progress"],
        **({"healed": list(state["healed"])} if state.get("healed") else {}),  # train.heal: the config it ended with
    })
