"""Running a sweep: decide which trials are left, keep the backend busy with them, and record every result in
the index (``DIR/index.json``). The report is not built here: the caller (``ablate``, ``reproduce``) builds it
from the sweep directory afterwards."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from marl_stability.atomic import atomic_write_json, atomic_write_text
from marl_stability.config import flatten
from marl_stability.errors import UserError
from marl_stability.runs.sweep_layout import (
    FINAL_STATUSES,
    INDEX_FORMAT,
    Plan,
    count_states,
    new_entry,
    read_index,
    read_plan,
    reconcile,
    trial_id,
)
from marl_stability.studies.sweep.backends import Backend, WorkerLost, make_backend
from marl_stability.studies.sweep.plan import make_plan
from marl_stability.studies.sweep.spec import SeedChoice
from marl_stability.studies.sweep.trial import Trial, TrialResult, torch_threads

MAX_ATTEMPTS = 3  # a trial whose worker process dies this many times is recorded as failed
BackendFactory = Callable[[str, int, Optional[str]], Backend]


@dataclass
class SweepOutcome:
    out: Path
    counts: dict[str, int]
    ran: list[str] = field(default_factory=list)  # trial ids that ran (or resumed) in this invocation
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> error


def _prepare(config: Optional[Path], out: Path, seeds: "Optional[int | SeedChoice]", resume: bool,
             extra: Optional[dict[str, Any]] = None) -> tuple[Plan, dict[str, Any], Optional[str]]:
    """Validate everything and decide the trial set; touches no file."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    has_index = (out / "index.json").is_file()
    if not resume:
        if config is None:
            raise UserError("--config is required (or --resume with an existing sweep directory)")
        if has_index:
            raise UserError(f"{out} already holds a sweep (use --resume to continue it, or another --out)")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not empty (choose another --out)")
        plan = make_plan(config, seeds, extra=extra)
        index = {"format": INDEX_FORMAT, "name": plan.name, "trials": {}}
        source = config.read_text(encoding="utf-8")
    else:
        if not has_index:
            raise UserError(f"--resume: {out} holds no sweep (no index.json)")
        index = read_index(out)
        plan = read_plan(out)
        source = None
        if config is not None:
            # The saved plan is the truth (its base preset may have moved); a given file must agree with it.
            new = make_plan(config, seeds, probe=False, extra=extra)
            old = {a.name: a.config for a in plan.arms}
            for a in new.arms:
                if a.name not in old or old[a.name] != a.config:
                    raise UserError(f"--resume: {config} does not match the sweep in {out} (arm {a.name} differs); use another --out")
            plan.seeds = sorted(set(plan.seeds) | set(new.seeds))
        elif seeds is not None:
            choice = SeedChoice.of(seeds)
            if choice.count is not None and choice.count < 1:
                raise UserError("--seeds must be >= 1")
            if choice.count is None and choice.listed is None:
                raise UserError("--resume: --seed-offset needs --seeds N (the saved seeds are already shifted)")
            plan.seeds = sorted(set(plan.seeds) | set(choice.resolve(plan.seeds)))
        # More seeds extend the sweep; results of seeds already run are never dropped.
    for a in plan.arms:
        for s in plan.seeds:
            index["trials"].setdefault(trial_id(a.name, s), new_entry(out, a.name, s))
    for entry in index["trials"].values():
        reconcile(out, entry)
    return plan, index, source


@contextlib.contextmanager
def _sweep_lock(out: Path) -> Any:
    """One sweep process per directory: a second ``ablate --resume`` on a running sweep is an error."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(out / ".sweep.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another sweep is running in {out}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _trial_for(plan: Plan, out: Path, entry: dict[str, Any]) -> Trial:
    cfg = dict(plan.arm(entry["arm"]).config)
    cfg["seed"] = entry["seed"]
    return Trial(entry["arm"], entry["seed"], str(out / entry["run_dir"]), cfg, varying_keys(plan))


def varying_keys(plan: Plan) -> tuple[str, ...]:
    """Dotted config keys whose values differ between the plan's arms (the HParams columns that matter)."""
    flat = [flatten(a.config) for a in plan.arms]
    keys = sorted(set().union(*flat)) if flat else []
    return tuple(k for k in keys if len({repr(f.get(k)) for f in flat}) > 1)


def run_sweep(
    config: Optional[Path],
    out: Path,
    seeds: "Optional[int | SeedChoice]" = None,
    workers: int = 1,
    backend: str = "local",
    address: Optional[str] = None,
    resume: bool = False,
    quiet: bool = False,
    backend_factory: Optional[BackendFactory] = None,
    extra: Optional[dict[str, Any]] = None,
) -> SweepOutcome:
    """Run every unfinished trial of the sweep in ``out``.

    ``config`` is the ablation file (optional with ``resume``: the saved plan is used). Raises UserError for
    bad input before any file is written. KeyboardInterrupt (Ctrl-C, or SIGTERM to this process) stops running
    trials at a checkpoint, saves the index and propagates.
    """
    out = Path(out)
    if workers < 1:
        raise UserError("--workers must be >= 1")
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend {backend!r} (local or ray)")
    if address and backend != "ray":
        raise UserError("--address only goes with --backend ray")
    plan, index, source = _prepare(config, out, seeds, resume, extra)
    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        if source is not None:
            atomic_write_text(out / "ablation.yaml", source)
        atomic_write_json(out / "arms.json", plan.to_json())
        atomic_write_json(out / "index.json", index)
        todo = [e for e in index["trials"].values() if e["state"] == "pending"]
        outcome = SweepOutcome(out=out, counts=count_states(index))
        if todo:
            if backend_factory is not None:
                be = backend_factory(backend, workers, address)
            else:
                be = make_backend(backend, workers, address, max(torch_threads(a.config) for a in plan.arms))
            _execute(plan, out, index, todo, outcome, be, quiet)
        outcome.counts = count_states(index)
        outcome.failed = {k: e["error"] for k, e in index["trials"].items() if e["state"] == "failed"}
    return outcome


def _execute(plan: Plan, out: Path, index: dict[str, Any], todo: list[dict[str, Any]], outcome: SweepOutcome,
             backend: Backend, quiet: bool) -> None:
    """Run ``todo`` on the backend; Ctrl-C or SIGTERM stops the trials at a checkpoint and propagates."""
    bar = _progress_bar(plan, index, quiet)
    dispatch = _Dispatch(plan, out, index, todo, outcome, backend, bar)

    # SIGTERM to the sweep is treated like Ctrl-C: stop trials at a checkpoint, keep the index consistent.
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    interrupted = False
    try:
        dispatch.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if interrupted:
            dispatch.stop()
        else:
            backend.shutdown()
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if interrupted:
        raise KeyboardInterrupt


def _progress_bar(plan: Plan, index: dict[str, Any], quiet: bool) -> Any:
    from tqdm import tqdm

    entries = index["trials"]
    finished = sum(e["state"] in FINAL_STATUSES for e in entries.values())
    return tqdm(total=len(entries), initial=finished, unit="trial", desc=f"ablate {plan.name}",
                dynamic_ncols=True, disable=quiet or not sys.stderr.isatty())


class _Dispatch:
    """Keeps the backend full, records each result in the index and saves the index after every change."""

    def __init__(self, plan: Plan, out: Path, index: dict[str, Any], todo: list[dict[str, Any]],
                 outcome: SweepOutcome, backend: Backend, bar: Any) -> None:
        self.plan, self.out, self.index, self.outcome, self.backend, self.bar = plan, out, index, outcome, backend, bar
        self.entries: dict[str, dict[str, Any]] = index["trials"]
        self.queue = list(todo)
        self.in_flight: dict[Any, str] = {}  # backend handle -> trial id

    def save(self) -> None:
        atomic_write_json(self.out / "index.json", self.index)
        c = count_states(self.index)
        self.bar.set_postfix(done=c["completed"] + c["diverged"], running=c["running"], failed=c["failed"], refresh=True)

    def run(self) -> None:
        while self.queue or self.in_flight:
            self._fill()
            done, _ = self.backend.wait(list(self.in_flight), timeout=1.0)
            for handle in done:
                self._finish(handle)

    def _fill(self) -> None:
        """Submit queued trials until the backend is at capacity (so submitted == running)."""
        while self.queue and len(self.in_flight) < self.backend.capacity:
            entry = self.queue.pop(0)
            entry.update(state="running", error=None, attempts=entry.get("attempts", 0) + 1)
            self.in_flight[self.backend.submit(_trial_for(self.plan, self.out, entry))] = trial_id(entry["arm"], entry["seed"])
            self.save()

    def _finish(self, handle: Any) -> None:
        tid = self.in_flight.pop(handle)
        entry = self.entries[tid]
        try:
            res = self.backend.result(handle)
        except WorkerLost as e:
            self._retry_or_fail(entry, e)
            self.save()
            return
        _record(entry, res)
        if not res.skipped:
            self.outcome.ran.append(tid)
        self.save()
        if entry["state"] != "pending":
            self.bar.update(1)

    def _retry_or_fail(self, entry: dict[str, Any], lost: WorkerLost) -> None:
        """A dead worker process: queue the trial again, or record it as failed after MAX_ATTEMPTS."""
        if entry["attempts"] < MAX_ATTEMPTS:
            entry.update(state="pending", error=str(lost))
            self.queue.append(entry)
        else:
            entry.update(state="failed", error=f"{lost} ({entry['attempts']} attempts)")
            self.bar.update(1)

    def stop(self) -> None:
        """After an interrupt: stop the backend (trials stop at a checkpoint and come back "interrupted"), record
        what finished meanwhile, and leave no trial "running"."""
        self.backend.shutdown(cancel=True)
        for handle, tid in list(self.in_flight.items()):
            if getattr(handle, "done", lambda: False)():
                with contextlib.suppress(Exception):
                    _record(self.entries[tid], self.backend.result(handle))
        for e in self.entries.values():
            if e["state"] == "running":
                e["state"] = "pending"
        atomic_write_json(self.out / "index.json", self.index)


def _record(entry: dict[str, Any], res: TrialResult) -> None:
    if res.resumed:
        entry["resumed"] = True  # continued from a checkpoint of an earlier, interrupted attempt
    if res.state in FINAL_STATUSES:
        entry.update(state=res.state, error=None, summary=f"{entry['run_dir']}/summary.json")
    elif res.state == "interrupted":
        entry.update(state="pending", error="interrupted")
    else:
        entry.update(state="failed", error=res.error or "failed")
