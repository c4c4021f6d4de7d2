"""Where trials run: a local process pool or Ray tasks, behind one small interface (``Backend``)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Optional, Protocol

from marl_stability.errors import UserError
from marl_stability.studies.sweep.trial import Trial, TrialResult, one_line, run_trial


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
    """Ray tasks (retried twice if their worker dies) on a cluster or a local Ray instance. Each task reserves as
    many CPUs as its trial runs torch threads (one unless the ablation file's threads_per_worker allows more);
    a local instance gets ``workers x threads`` CPUs, so ``workers`` trials run at once.

    On a cluster every node must see the project installed and the sweep directory at the same path
    (a shared file system): workers write their run directories themselves.
    """

    def __init__(self, workers: int, address: Optional[str] = None, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("the ray backend needs `pip install -e .[ray]`") from None
        if workers < 1:
            raise UserError("--workers must be >= 1")
        # Trials run arbitrary training code on every node: Ray's token authentication stays on (the default
        # for local instances since Ray 2.59; a cluster is started with RAY_AUTH_MODE=token, see docs/ablations.md).
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
                    ray.init(num_cpus=workers * max(1, threads), log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {one_line(e)}") from None
        self._task = ray.remote(num_cpus=1, max_retries=2)(_ray_trial)

    def submit(self, trial: Trial) -> Any:
        return self._task.options(num_cpus=trial.threads).remote(trial)

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
    # Ray workers are long-lived processes (a previous task may have changed the count): run_trial sets this
    # trial's thread count, as in the process pool.
    return run_trial(trial)


def make_backend(name: str, workers: int, address: Optional[str] = None, threads: int = 1) -> Backend:
    """The backend for ``--backend``; ``threads``: torch threads per trial (the plan's largest), which a local Ray
    instance reserves CPUs for (the process pool needs no reservation: run_trial sets each trial's count)."""
    if name == "local":
        if address:
            raise UserError("--address only goes with --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        return RayBackend(workers, address, threads)
    raise UserError(f"unknown backend {name!r} (local or ray)")

