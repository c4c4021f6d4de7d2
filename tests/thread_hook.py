"""A user's hook for the sweep tests (``tests/test_edges.py``): the torch thread count a trial really ran with,
measured inside the worker process at the start and at every update, reported in summary.json under
``hooks.threads_seen``. Used as ``train.hooks: [thread_hook:ThreadsSeen]`` (the tests folder is on ``sys.path``
under pytest, and spawned workers and Ray workers started from it inherit that path)."""

from __future__ import annotations

from typing import Any

import torch

from marl_stability.core.hooks import Hook


class ThreadsSeen(Hook):
    name = "threads_seen"
    prefixes = ("user/threads_seen",)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.seen: set[int] = set()

    def on_start(self, resumed: bool) -> None:
        self.seen.add(torch.get_num_threads())

    def on_update(self, ev: Any) -> None:
        self.seen.add(torch.get_num_threads())

    def summary(self) -> dict[str, Any]:
        return {"torch_threads": sorted(self.seen)}
