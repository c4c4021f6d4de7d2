"""The fix evidence: what each single fix measured against each road to the failure, and the ranking built on it.

``fix_evidence.json`` (next to this module, written by ``python -m marl_stability.analysis.fix_evidence``) holds,
per mechanism (``saturation-first``, ``explosion-first``, ``on-policy``), the single-fix sweep it was measured on
(its env, budget and algorithm) and, per arm,
the seeds' labels and final returns. ``doctor`` ranks its advice with it after a run; ``train.heal`` picks the fix
to apply with it during one -- one reading, here, in the fixes layer below both. No torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

PACKAGED = Path(__file__).with_name("fix_evidence.json")

T = TypeVar("T")


def load(path: Path = PACKAGED) -> dict[str, Any]:
    """The evidence file as a dict ({} when it is missing or unreadable: the practitioner's order then stands)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ranked(evidence: dict[str, Any], mechanism: str) -> list[dict[str, Any]]:
    """The measured fixes for ``mechanism``, best first: most seeds left healthy (as a share), then the highest
    mean final return; each ``{"fix", "arm", "healthy", "n", "mean_final_return", "labels"}``."""
    arms = ((evidence.get("mechanisms") or {}).get(mechanism) or {}).get("arms") or {}
    rows = [a for a in arms.values() if isinstance(a, dict) and a.get("fix") and a.get("n")]

    def key(a: dict[str, Any]) -> tuple[float, float]:
        ret = a.get("mean_final_return")
        return (-a["healthy"] / a["n"], -(ret if ret is not None else -float("inf")))

    return [{k: a.get(k) for k in ("fix", "arm", "healthy", "n", "mean_final_return", "labels")} for a in sorted(rows, key=key)]


def measured(mechanism: str, evidence: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """fix title -> what the mechanism's single-fix table measured for it ({} when nothing was measured); the key
    "" holds where the numbers come from."""
    evidence = load() if evidence is None else evidence
    rows = ranked(evidence, mechanism)
    if not rows:
        return {}
    table = evidence["mechanisms"][mechanism]
    out: dict[str, dict[str, Any]] = {r["fix"]: r for r in rows}
    out[""] = {"source": f"the {mechanism} single-fix table ({table.get('sweep')}, {table_algo(table).upper()} on {table.get('env')}, "
                         f"{table.get('env_steps')} env steps)"}
    return out


def table_algo(table: dict[str, Any]) -> str:
    """The algorithm a mechanism's table was measured with (the tables written before the key: all MADDPG)."""
    return table.get("algo") or "maddpg"


def rank_by_evidence(items: Sequence[T], table: dict[str, dict[str, Any]], title: Callable[[T], str]) -> list[T]:
    """``items`` (fixes in the practitioner's order) re-ranked by ``table`` (:func:`measured`): measured fixes that
    left seeds healthy first (most healthy, then best return), then unmeasured fixes in their given order, then
    measured fixes that cured no seed."""
    if not table:
        return list(items)
    rank = {name: i for i, name in enumerate(n for n in table if n)}

    def key(pos_item: tuple[int, T]) -> tuple[int, int]:
        pos, item = pos_item
        m = table.get(title(item))
        if m is None:
            return (1, pos)
        return (0 if m["healthy"] > 0 else 2, rank[title(item)])

    return [item for _, item in sorted(enumerate(items), key=key)]
