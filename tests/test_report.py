"""Report statistics against independent computations on a hand-made sweep (no training)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import trim_mean

from marl_stability.cli.ablate import main as ablate_main
from marl_stability.core.checkpoint import atomic_write_json
from marl_stability.core import rates
from marl_stability.studies import report
from marl_stability.studies.sweep import Arm, Plan

BASE = [-100.0, -95.0, -110.0, -90.0, -105.0, -98.0, -102.0, -120.0, -85.0, -99.0]
BETTER = [x + 40.0 for x in BASE]
SAME = [-97.0, -104.0, -92.0, -111.0, -99.0, -88.0, -101.0]  # seeds 0..6; 7 diverged early, 8 missing, 9 failed
BASE_COLLAPSE = [False] * 10  # 0/10
BETTER_COLLAPSE = [True, False] * 5  # 5/10
BETTER_EXPLODE = [True] * 10  # 10/10


def summary(ret: float | None, status: str = "completed", collapse: bool = False, explode: bool = False) -> dict[str, Any]:
    return {
        "status": status, "final_return": ret, "best_return": None if ret is None else ret + 1.0,
        "max_grad_norm": {"actor": 0.5, "critic": 12.0}, "collapse_step": 5000 if collapse else None,
        "explosion_step": 3000 if explode else None, "nonfinite_step": None, "repeated_action_rate": 0.1,
        "saturation_rate": 0.2, "action_sensitivity": 0.3, "env_steps": 10000, "updates": 100, "wall_seconds": 12.5,
        "eval_history": [] if ret is None else [{"env_steps": 5000, "team_return": ret - 10.0},
                                                {"env_steps": 10000, "team_return": ret}],
    }


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A sweep directory as `ablate` leaves it: arms.json, index.json and one summary.json per finished trial."""
    out = tmp_path / "sweep"
    arms = [Arm("base", {"x": "off"}, {}, {}), Arm("better", {"x": "on"}, {}, {}), Arm("same", {"x": "other"}, {}, {})]
    plan = Plan(name="hand", design="arms", reference="base", factors=["x"], seeds=list(range(10)), arms=arms,
                base_config="none.yaml")
    atomic_write_json(out / "arms.json", plan.to_json())
    trials: dict[str, Any] = {}

    def add(arm: str, seed: int, state: str, data: dict[str, Any] | None, error: str | None = None) -> None:
        run_dir = f"runs/{arm}/seed_{seed}"
        trials[f"{arm}/seed_{seed}"] = {"arm": arm, "seed": seed, "state": state, "error": error, "attempts": 1,
                                        "run_dir": run_dir, "summary": None}
        if data is not None:
            atomic_write_json(out / run_dir / "summary.json", data)

    for s in range(10):
        add("base", s, "completed", summary(BASE[s], collapse=BASE_COLLAPSE[s]))
        add("better", s, "completed", summary(BETTER[s], collapse=BETTER_COLLAPSE[s], explode=BETTER_EXPLODE[s]))
    for s, r in enumerate(SAME):
        add("same", s, "completed", summary(r))
    add("same", 7, "diverged", summary(None, status="diverged"))
    add("same", 8, "pending", None)
    add("same", 9, "failed", None, error="RuntimeError: boom")
    atomic_write_json(out / "index.json", {"format": 1, "name": "hand", "trials": trials})
    return out


# ---------------------------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("k, n, lo, hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                          (1, 20, 0.0089, 0.2361), (3, 5, 0.2307, 0.8824)])
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = rates.wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_edge_cases() -> None:
    assert all(math.isnan(v) for v in rates.wilson_interval(0, 0))
    with pytest.raises(ValueError):
        rates.wilson_interval(3, 2)


def test_iqm_and_probability_of_improvement_by_hand() -> None:
    x = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0]
    middle = sorted(x)[2:6]  # 25% trimmed from each end of 8 values
    assert report.iqm(x) == pytest.approx(sum(middle) / len(middle))
    y = [3.0, 3.0, 6.0, 0.0]
    brute = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(x, y)) / (len(x) * len(y))
    assert report.prob_improvement(x, y) == pytest.approx(brute)
    assert report.prob_improvement(y, x) == pytest.approx(1 - brute)
    # Vectorized over resamples, as scipy's bootstrap calls it.
    stacked = report.prob_improvement(np.array([x, x[::-1]]), np.array([y, y]))
    assert stacked.shape == (2,) and np.allclose(stacked, brute)


def _hand_bootstrap(samples: list[list[float]], stat: Any, reps: int = 20000) -> tuple[float, float]:
    """An independent percentile bootstrap (numpy only) to check the report's scipy-based intervals.

    ``stat`` gets one [reps, n] array of resamples per sample and returns [reps] values.
    """
    rng = np.random.default_rng(123)
    arrays = [np.asarray(s) for s in samples]
    vals = stat(*[a[rng.integers(0, a.size, (reps, a.size))] for a in arrays])
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def test_bootstrap_intervals_match_an_independent_bootstrap() -> None:
    lo, hi = report.bootstrap_ci((BASE,), report.iqm)
    hlo, hhi = _hand_bootstrap([BASE], lambda a: trim_mean(a, 0.25, axis=1))
    assert lo == pytest.approx(hlo, abs=1.5) and hi == pytest.approx(hhi, abs=1.5)
    assert lo <= report.iqm(BASE) <= hi
    plo, phi = report.bootstrap_ci((SAME, BASE), report.prob_improvement)
    hlo, hhi = _hand_bootstrap([SAME, BASE], lambda a, b: ((a[:, :, None] > b[:, None]) + 0.5 * (a[:, :, None] == b[:, None])).mean(axis=(1, 2)))
    assert plo == pytest.approx(hlo, abs=0.05) and phi == pytest.approx(hhi, abs=0.05)
    assert report.bootstrap_ci((BASE,), report.iqm) == (lo, hi)  # seeded: reproducible
    assert all(math.isnan(v) for v in report.bootstrap_ci(([1.0],), report.iqm))  # one seed: no interval


# ---------------------------------------------------------------------------------------------- the report
def test_report_on_a_hand_made_sweep(sweep_dir: Path) -> None:
    rep = report.build_report(sweep_dir)
    stats = {s.arm: s for s in rep["stats"]}
    assert stats["base"].iqm == pytest.approx(trim_mean(BASE, 0.25))
    assert stats["better"].iqm == pytest.approx(trim_mean(BETTER, 0.25))
    assert stats["same"].iqm == pytest.approx(trim_mean(SAME, 0.25))
    brute = sum((a > b) + 0.5 * (a == b) for a in SAME for b in BASE) / (len(SAME) * len(BASE))
    assert stats["same"].p_improve == pytest.approx(brute)
    assert stats["better"].p_improve == 1.0
    assert stats["base"].collapse_ci[1] == pytest.approx(0.2775, abs=1e-4) and stats["base"].collapses == 0
    assert (stats["better"].collapses, stats["better"].finished) == (5, 10)
    assert stats["better"].collapse_ci == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats["better"].explosion_ci[0] == pytest.approx(0.7225, abs=1e-4)
    # same: 7 returns; the diverged trial counts as finished (8) but has no return; failed/missing are neither.
    s = stats["same"]
    assert (len(s.returns), s.finished, s.diverged, s.failed, s.missing) == (7, 8, 1, 1, 1)
    assert stats["better"].diff == pytest.approx(40.0)
    assert stats["better"].diff_ci[0] > 0 and stats["same"].diff_ci[0] < 0 < stats["same"].diff_ci[1]
    assert sorted(rep["missing"]) == ["same/seed_8", "same/seed_9"]

    rows = list(csv.DictReader(io.StringIO((sweep_dir / "results.csv").read_text())))
    assert len(rows) == 30 and rows[0]["x"] == "off" and rows[10]["x"] == "on"
    by_id = {f"{r['arm']}/seed_{r['seed']}": r for r in rows}
    assert by_id["same/seed_9"]["status"] == "failed" and by_id["same/seed_9"]["error"] == "RuntimeError: boom"
    assert by_id["same/seed_8"]["status"] == "missing" and by_id["same/seed_7"]["status"] == "diverged"
    assert by_id["same/seed_7"]["final_return"] == ""
    assert float(by_id["better/seed_3"]["final_return"]) == BETTER[3]
    assert by_id["better/seed_0"]["explosion_step"] == "3000" and by_id["base/seed_0"]["collapse_step"] == ""

    text = (sweep_dir / "report.md").read_text()
    assert ("`better` vs `base`: final return is higher and the difference is distinguishable from zero at "
            "n = 10 vs 10 seeds (IQM difference +40.00") in text
    assert "`same` vs `base`: the effect on final return is not distinguishable from zero at n = 7 vs 10 seeds" in text
    assert "| `better` | 10 | " in text and "5/10 [0.24, 0.76]" in text and "0/10 [0.00, 0.28]" in text
    assert "- `same/seed_9` failed: RuntimeError: boom" in text and "- `same/seed_8` missing" in text
    for png in rep["figures"]:
        assert png.read_bytes()[:4] == b"\x89PNG"
    # Rebuilding gives the same files (seeded bootstrap, full-precision CSV).
    first = {p: (sweep_dir / p).read_bytes() for p in ("results.csv", "report.md")}
    report.build_report(sweep_dir)
    assert first == {p: (sweep_dir / p).read_bytes() for p in ("results.csv", "report.md")}


def test_report_command(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (sweep_dir / "results.csv").unlink(missing_ok=True)
    ablate_main(["report", str(sweep_dir)])
    out = capsys.readouterr().out
    assert "report:" in out and "not finished (2): same/seed_8, same/seed_9" in out
    assert (sweep_dir / "results.csv").is_file()
    with pytest.raises(SystemExit) as e:
        ablate_main(["report", str(tmp_path)])
    assert e.value.code == 2 and "holds no sweep plan" in capsys.readouterr().err


def test_reference_without_results_is_stated(sweep_dir: Path) -> None:
    index = json.loads((sweep_dir / "index.json").read_text())
    for s in range(10):
        (sweep_dir / "runs" / "base" / f"seed_{s}" / "summary.json").unlink()
        index["trials"][f"base/seed_{s}"]["state"] = "pending"
    atomic_write_json(sweep_dir / "index.json", index)
    report.build_report(sweep_dir)
    assert "No finished trial of the reference arm `base`" in (sweep_dir / "report.md").read_text()
