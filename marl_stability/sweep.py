"""Fix-ablation sweeps: an ablation file -> arms (configs) x seeds -> trials run in parallel, resumable.

Layout of a sweep directory ``DIR``::

    DIR/ablation.yaml            the ablation file as given (its text, for the record)
    DIR/arms.json                the plan: factors, reference arm, seeds and every arm's resolved config
    DIR/index.json               the state of every trial (pending/running/completed/diverged/failed)
    DIR/runs/<arm>/seed_<n>/     one ordinary training run per trial (config.yaml, events, checkpoints/, summary.json)
    DIR/results.csv, report.md, figures/   written by ``marl_stability.report``

Only the parent process writes ``index.json`` (atomically); workers only write their own run directory.
The run directories are the ground truth: on ``--resume`` a trial whose ``summary.json`` has a final status
is done whatever the index says, so a parent killed between a trial's end and its index update loses nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from marl_stability.checkpoint import atomic_write_json, atomic_write_text
from marl_stability.config import load_config, read_yaml
from marl_stability.errors import UserError

INDEX_FORMAT = 1
FINAL_STATUSES = ("completed", "diverged")  # summary.json statuses after which a trial never runs again
TRIAL_STATES = ("pending", "running", "completed", "diverged", "failed")
# Test hook: comma-separated trial ids ("arm/seed_n") or arm names whose worker raises instead of training
# ("crash:<id>": the worker process dies instead, as if killed). It is read inside the worker, so it exercises
# the real failure paths (an exception in a worker process; a dead worker process).
FAIL_ENV_VAR = "MARL_STABILITY_SWEEP_FAIL"
MAX_ATTEMPTS = 3  # a trial whose worker process dies this many times is recorded as failed
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
            on = _flatten_overrides({self.key: self.on})
            off = _flatten_overrides({self.key: self.off}) if "off" in self.model_fields_set else {}
            return on, off
        return _flatten_overrides(self.set_on or {}), _flatten_overrides(self.set_off or {})


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


def _fix_yaml11_keys(obj: Any) -> Any:
    """PyYAML reads unquoted ``on:``/``off:`` keys as booleans (YAML 1.1); give factor levels their names back."""
    if isinstance(obj, dict):
        return {("on" if k is True else "off" if k is False else k): v for k, v in obj.items()}
    return obj


def _flatten_overrides(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a.b': {'c': 1}} -> {'a.b.c': 1}: a dict value sets its leaves, never replaces a whole section."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
            raise UserError(f"bad dotted key {k!r}")
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten_overrides(v, key + "."))
        else:
            out[key] = v
    return out


def load_ablation(path: str | Path) -> AblationFile:
    """Read and validate an ablation file (UserError naming the key on any problem)."""
    p = Path(path)
    data = read_yaml(p)
    if isinstance(data.get("factors"), dict):
        data["factors"] = {k: _fix_yaml11_keys(v) for k, v in data["factors"].items()}
    try:
        return AblationFile.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "<root>"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise UserError(f"{p}: {loc}: {msg}") from None


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
    return ArmSpec(name, {}, {**base, **_flatten_overrides(arm), **steps}, preset)


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
    base = _flatten_overrides(ab.base.set)
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


def make_plan(path: str | Path, seeds: Optional[int] = None, probe: bool = True,
              extra: Optional[dict[str, Any]] = None) -> Plan:
    """Read an ablation file, expand its design and validate every arm's config (and env) before any trial runs.

    ``extra`` (dotted key -> value) is applied to every arm last, e.g. a shorter budget for a smoke run.
    """
    from marl_stability.config import flatten

    path = Path(path)
    ab = load_ablation(path)
    specs = expand_design(ab)
    last = _flatten_overrides(extra or {})
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
                load_config(preset, override_strings({**_flatten_overrides(ab.base.set), **over}))
            except UserError as e:
                raise UserError(f"factor {name} ({level}): {e}") from None
    arms = []
    for spec in specs:
        try:
            cfg = load_config(find(spec.config, f"arm {spec.name}: config") if spec.config else preset,
                              override_strings(spec.overrides))
        except UserError as e:
            raise UserError(f"arm {spec.name}: {e}") from None
        d = cfg.to_dict()
        levels = spec.levels if ab.design != "arms" else _levels_by_matching(ab, flatten(d))
        arms.append(Arm(spec.name, levels, spec.overrides, d))
    if probe:
        _probe_envs(arms)
    seed_list = list(range(seeds)) if seeds is not None else ab.seed_list()
    if seeds is not None and seeds < 1:
        raise UserError("--seeds must be >= 1")
    return Plan(
        name=ab.name or path.stem, design=ab.design, reference=reference, factors=list(ab.factors),
        seeds=seed_list, arms=arms, description=(ab.description or "").strip(), base_config=str(ab.base.config),
    )


def _probe_envs(arms: list[Arm]) -> None:
    """Build and step each distinct environment once: a bad env kwarg fails here, not in every trial."""
    import envs
    from marl_stability.config import RunConfig
    from marl_stability.trainer import probe_env

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


# ---------------------------------------------------------------------------------------------- trials
def trial_id(arm: str, seed: int) -> str:
    return f"{arm}/seed_{seed}"


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    # The arm name is the run's folder, so TensorBoard (logdir DIR/runs) shows it in every run name.
    return out / "runs" / arm / f"seed_{seed}"


@dataclass
class Trial:
    """What a worker needs: plain data only (it crosses process and Ray boundaries)."""

    arm: str
    seed: int
    run_dir: str
    config: dict[str, Any]

    @property
    def id(self) -> str:
        return trial_id(self.arm, self.seed)


@dataclass
class TrialResult:
    id: str
    state: str  # completed | diverged | failed | interrupted
    error: Optional[str] = None
    status: Optional[str] = None  # summary.json status
    resumed: bool = False
    skipped: bool = False  # already finished on disk; nothing ran
    seconds: float = 0.0


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__
    return line[:300]


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's summary.json, or None if absent or unreadable (a trial killed mid-write has no summary)."""
    try:
        data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _trial_lock(run_dir: Path) -> Any:
    """Exclusive lock per trial, held while it runs.

    After a ``kill -9`` of the parent, a worker may still be running for a moment (until its watchdog sees the
    parent gone); the resumed sweep's worker waits for that lock instead of writing into the same folder.
    """
    lock_path = run_dir.parent / f".{run_dir.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - e.g. a file system without locks: go on unprotected
            pass
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _injected_failure(trial: Trial) -> None:
    wanted = {w.strip() for w in os.environ.get(FAIL_ENV_VAR, "").split(",") if w.strip()}
    if f"crash:{trial.id}" in wanted or f"crash:{trial.arm}" in wanted:
        os._exit(3)
    if trial.id in wanted or trial.arm in wanted:
        raise RuntimeError(f"injected failure for {trial.id} ({FAIL_ENV_VAR})")


def run_trial(trial: Trial) -> TrialResult:
    """Run (or resume, or skip) one trial in its run directory. Never raises: a crash is a ``failed`` result."""
    import torch

    from marl_stability.config import RunConfig
    from marl_stability.trainer import Trainer

    start = time.perf_counter()
    run_dir = Path(trial.run_dir)
    resumed = False
    try:
        torch.set_num_threads(1)  # one trial per core; the trainer also applies train.torch_threads
        with _trial_lock(run_dir):
            done = read_summary(run_dir)
            if done is not None and done.get("status") in FINAL_STATUSES:
                return TrialResult(trial.id, done["status"], status=done["status"], skipped=True)
            _injected_failure(trial)
            cfg = RunConfig.model_validate(trial.config)
            trainer = Trainer(cfg, run_dir, quiet=True)
            summary = None
            if (run_dir / "checkpoints" / "last.pt").is_file():
                try:
                    summary = trainer.run(resume=True)
                    resumed = True
                except UserError:
                    # An unreadable checkpoint or one from another config: this folder is ours, start over.
                    trainer = Trainer(cfg, run_dir, quiet=True)
            if summary is None:
                if run_dir.exists():
                    shutil.rmtree(run_dir)  # partial output of a killed attempt without a checkpoint
                summary = trainer.run()
        status = summary.get("status")
        state = status if status in FINAL_STATUSES else "interrupted" if status == "interrupted" else "failed"
        error = None if state != "failed" else f"run ended with status {status}"
        return TrialResult(trial.id, state, error=error, status=status, resumed=resumed,
                           seconds=time.perf_counter() - start)
    except KeyboardInterrupt:  # only outside the trainer's own handler (e.g. while building it)
        return TrialResult(trial.id, "interrupted", error="interrupted", seconds=time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a trial's crash must never take the sweep down
        return TrialResult(trial.id, "failed", error=one_line(e), resumed=resumed, seconds=time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- backends
class WorkerLost(Exception):
    """The process running a trial died (killed, out of memory): the trial may be retried."""


class Backend(Protocol):
    """Where trials run. The sweep keeps at most ``capacity`` trials submitted, so submitted == running."""

    capacity: int

    def submit(self, trial: Trial) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> tuple[list[Any], list[Any]]: ...

    def result(self, handle: Any) -> TrialResult: ...

    def shutdown(self, cancel: bool = False) -> None: ...


def _watch_parent(parent_pid: int) -> None:
    # A worker whose parent sweep was killed (kill -9) must not go on writing: exit as soon as we are orphaned.
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.2)


def _init_worker(parent_pid: int) -> None:
    """Process-pool worker set-up: one torch thread, exit with the parent, Ctrl-C handled by the trainer only."""
    import torch

    torch.set_num_threads(1)
    # Idle workers ignore Ctrl-C (the terminal sends it to the whole process group); a running Trainer installs
    # its own handler, which stops at a step boundary with a checkpoint and status "interrupted".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watchdog").start()


class LocalBackend:
    """A process pool on this machine (spawned processes: no state inherited from the parent's torch)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise UserError("--workers must be >= 1")
        self.capacity = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        return cf.ProcessPoolExecutor(max_workers=self.capacity, mp_context=ctx, initializer=_init_worker,
                                      initargs=(os.getpid(),))

    def submit(self, trial: Trial) -> cf.Future:
        try:
            return self._pool.submit(run_trial, trial)
        except cf.process.BrokenProcessPool:
            # A worker died earlier (the pool is then unusable): start a fresh pool for the remaining trials.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_trial, trial)

    def wait(self, handles: list[cf.Future], timeout: float) -> tuple[list[cf.Future], list[cf.Future]]:
        done, pending = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done), list(pending)

    def result(self, handle: cf.Future) -> TrialResult:
        try:
            return handle.result()
        except cf.process.BrokenProcessPool as e:
            raise WorkerLost("worker process died") from e

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            # Ctrl-C from a terminal already reached the workers; a SIGTERM to the parent did not: forward SIGINT
            # so running trainers stop at a step boundary with a checkpoint.
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    os.kill(proc.pid, signal.SIGINT)
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Ray tasks (one CPU each, retried twice if their worker dies) on a cluster or a local Ray instance.

    On a cluster every node must see the project installed and the sweep directory at the same path
    (a shared file system): workers write their run directories themselves.
    """

    def __init__(self, workers: int, address: Optional[str] = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("the ray backend needs `pip install -e .[ray]`") from None
        if workers < 1:
            raise UserError("--workers must be >= 1")
        # Trials run arbitrary training code on every node: Ray's token authentication stays on (the default
        # for local instances since Ray 2.59; a cluster is started with RAY_AUTH_MODE=token, see the README).
        # Ray reads the mode when it is imported, so it is checked here, not set.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            raise UserError("refusing to use Ray with RAY_AUTH_MODE=disabled: start the cluster with token authentication")
        self._ray = ray
        self.capacity = workers
        self._owns = not ray.is_initialized()
        if self._owns:
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {one_line(e)}") from None
        self._task = ray.remote(num_cpus=1, max_retries=2)(_ray_trial)

    def submit(self, trial: Trial) -> Any:
        return self._task.remote(trial)

    def wait(self, handles: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
        if not handles:
            return [], []
        ray = self._ray
        ready, rest = ray.wait(list(handles), num_returns=1, timeout=timeout)
        if ready and rest:  # collect everything else that is already finished, without waiting
            more, rest = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return list(ready), list(rest)

    def result(self, handle: Any) -> TrialResult:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayError as e:  # worker died after its retries, node lost, task cancelled
            raise WorkerLost(one_line(e)) from e

    def shutdown(self, cancel: bool = False) -> None:
        if self._owns:
            self._ray.shutdown()


def _ray_trial(trial: Trial) -> TrialResult:
    # Ray workers are long-lived processes: set the thread count per task (cheap) rather than per process.
    import torch

    torch.set_num_threads(1)
    return run_trial(trial)


def make_backend(name: str, workers: int, address: Optional[str] = None) -> Backend:
    if name == "local":
        if address:
            raise UserError("--address only goes with --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        return RayBackend(workers, address)
    raise UserError(f"unknown backend {name!r} (local or ray)")


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


def read_plan(out: Path) -> Plan:
    path = out / "arms.json"
    try:
        return Plan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UserError(f"{out} holds no sweep plan (no arms.json)") from None
    except (OSError, ValueError, TypeError, KeyError):
        raise UserError(f"{path} is unreadable or not a sweep plan") from None


def _entry(out: Path, arm: str, seed: int) -> dict[str, Any]:
    return {"arm": arm, "seed": seed, "state": "pending", "error": None, "attempts": 0,
            "run_dir": str(run_dir_of(out, arm, seed).relative_to(out)), "summary": None}


def _reconcile(out: Path, entry: dict[str, Any]) -> None:
    """Bring one index entry in line with its run directory (the ground truth after a crash or kill)."""
    summary = read_summary(out / entry["run_dir"])
    if summary is not None and summary.get("status") in FINAL_STATUSES:
        entry.update(state=summary["status"], error=None, summary=f"{entry['run_dir']}/summary.json")
    elif entry["state"] != "pending":
        # running (parent killed), failed (retried on resume) or a finished state whose files vanished
        entry.update(state="pending", summary=None)


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass
class SweepOutcome:
    out: Path
    counts: dict[str, int]
    ran: list[str] = field(default_factory=list)  # trial ids that ran (or resumed) in this invocation
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> error
    report: Optional[dict[str, Any]] = None


def _counts(index: dict[str, Any]) -> dict[str, int]:
    c = {s: 0 for s in TRIAL_STATES}
    for e in index["trials"].values():
        c[e["state"]] = c.get(e["state"], 0) + 1
    return c


def _prepare(config: Optional[Path], out: Path, seeds: Optional[int], resume: bool,
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
            if seeds < 1:
                raise UserError("--seeds must be >= 1")
            plan.seeds = sorted(set(plan.seeds) | set(range(seeds)))
        # More seeds extend the sweep; results of seeds already run are never dropped.
    for a in plan.arms:
        for s in plan.seeds:
            index["trials"].setdefault(trial_id(a.name, s), _entry(out, a.name, s))
    for entry in index["trials"].values():
        _reconcile(out, entry)
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
    return Trial(entry["arm"], entry["seed"], str(out / entry["run_dir"]), cfg)


def run_sweep(
    config: Optional[Path],
    out: Path,
    seeds: Optional[int] = None,
    workers: int = 1,
    backend: str = "local",
    address: Optional[str] = None,
    resume: bool = False,
    quiet: bool = False,
    report: bool = True,
    backend_factory: Optional[Callable[[str, int, Optional[str]], Backend]] = None,
    extra: Optional[dict[str, Any]] = None,
) -> SweepOutcome:
    """Run every unfinished trial of the sweep in ``out`` and (re)build its report.

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
        outcome = SweepOutcome(out=out, counts=_counts(index))
        if todo:
            _execute(plan, out, index, todo, outcome, workers, backend, address, quiet, backend_factory)
        outcome.counts = _counts(index)
        outcome.failed = {k: e["error"] for k, e in index["trials"].items() if e["state"] == "failed"}
        if report:
            from marl_stability.report import build_report

            outcome.report = build_report(out)
    return outcome


def _execute(plan: Plan, out: Path, index: dict[str, Any], todo: list[dict[str, Any]], outcome: SweepOutcome,
             workers: int, backend_name: str, address: Optional[str], quiet: bool,
             backend_factory: Optional[Callable[[str, int, Optional[str]], Backend]]) -> None:
    from tqdm import tqdm

    entries = index["trials"]
    queue = list(todo)
    total = len(entries)
    finished = sum(e["state"] in FINAL_STATUSES for e in entries.values())
    bar = tqdm(total=total, initial=finished, unit="trial", desc=f"ablate {plan.name}", dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())

    def save() -> None:
        atomic_write_json(out / "index.json", index)
        c = _counts(index)
        bar.set_postfix(done=c["completed"] + c["diverged"], running=c["running"], failed=c["failed"], refresh=True)

    # SIGTERM to the sweep is treated like Ctrl-C: stop trials at a checkpoint, keep the index consistent.
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    be = (backend_factory or make_backend)(backend_name, workers, address)
    in_flight: dict[Any, str] = {}
    interrupted = False
    try:
        while queue or in_flight:
            while queue and len(in_flight) < be.capacity:
                entry = queue.pop(0)
                entry.update(state="running", error=None, attempts=entry.get("attempts", 0) + 1)
                in_flight[be.submit(_trial_for(plan, out, entry))] = trial_id(entry["arm"], entry["seed"])
                save()
            done, _ = be.wait(list(in_flight), timeout=1.0)
            for handle in done:
                tid = in_flight.pop(handle)
                entry = entries[tid]
                try:
                    res = be.result(handle)
                except WorkerLost as e:
                    if entry["attempts"] < MAX_ATTEMPTS:
                        entry.update(state="pending", error=str(e))
                        queue.append(entry)
                    else:
                        entry.update(state="failed", error=f"{e} ({entry['attempts']} attempts)")
                        bar.update(1)
                    save()
                    continue
                _record(out, entry, res)
                if not res.skipped:
                    outcome.ran.append(tid)
                save()
                if entry["state"] != "pending":
                    bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if interrupted:
            be.shutdown(cancel=True)
            # Trials that stopped at a checkpoint came back as "interrupted"; record what finished meanwhile.
            for handle, tid in list(in_flight.items()):
                if getattr(handle, "done", lambda: False)():
                    with contextlib.suppress(Exception):
                        _record(out, entries[tid], be.result(handle))
            for e in entries.values():
                if e["state"] == "running":
                    e["state"] = "pending"
            atomic_write_json(out / "index.json", index)
        else:
            be.shutdown()
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if interrupted:
        raise KeyboardInterrupt


def _record(out: Path, entry: dict[str, Any], res: TrialResult) -> None:
    if res.resumed:
        entry["resumed"] = True  # continued from a checkpoint of an earlier, interrupted attempt
    if res.state in FINAL_STATUSES:
        entry.update(state=res.state, error=None, summary=f"{entry['run_dir']}/summary.json")
    elif res.state == "interrupted":
        entry.update(state="pending", error="interrupted")
    else:
        entry.update(state="failed", error=res.error or "failed")
