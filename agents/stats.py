"""The one builder of an update's per-agent scalars, shared by every algorithm family."""

from __future__ import annotations

from typing import Sequence

import torch


def agent_stats(names: Sequence[str], values: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{key: [N] tensor}`` -> ``{"key/agent": float}`` with one host transfer."""
    keys = list(values)
    rows = torch.stack([values[k].detach().to(torch.float32) for k in keys]).T.tolist()
    return {f"{k}/{name}": row[j] for name, row in zip(names, rows) for j, k in enumerate(keys)}
