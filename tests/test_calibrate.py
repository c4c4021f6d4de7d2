"""``marl-stability calibrate``: labels and onsets follow their definitions, the threshold rule picks what it says,
held-out scores are exact on synthetic runs built with the project's own writers, real tiny runs go through the
command, records re-render the same report, and bad input is one ``error:`` line with nothing written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from marl_stability.analysis import calibrate as cal
from marl_stability.analysis.calibrate_eval import Row, choose, score
from marl_stability.atomic import atomic_write_json
from marl_stability.cli.main import main
from marl_stability.config import dump_yaml, load_config
from marl_stability.core.sinks import TensorBoardSink
from marl_stability.core.summary import RunSummary
from marl_stability.runs.labelled import LabelledRun
from marl_stability.core.returns import drop_from_best
from marl_stability.runs.labels import DROP_Z, collapse_onset, label_run
from marl_stability.runs.signals import (
    SignalParams,
    Trace,
    aggregate,
    drift_ratio,
    growth,
    log_slope,
    trace_of,
    traces,
)

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("agent_0", "agent_1")
COLLAPSED = {"repeat_rate": 1.0, "saturation": 1.0, "sensitivity": 0.0, "batch_same_action": 1.0}
LIVELY = {"repeat_rate": 0.3, "saturation": 0.2, "sensitivity": 0.4, "batch_same_action": 0.01}
LEAD = 3000  # the synthetic failing runs' critic gradient jumps this many env steps before the onset


# ---------------------------------------------------------------------------------------------- synthetic runs
def write_run(run: Path, seed: int, scalars: dict[int, dict[str, float]], summary: dict[str, Any],
              config_overrides: tuple[str, ...] = ()) -> Path:
    """A run directory in the real format: resolved config.yaml, a TensorBoard event file, summary.json."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(load_config(None, [f"seed={seed}", *config_overrides])))
    sink = TensorBoardSink(run)
    for step in sorted(scalars):
        sink.scalar_batch(scalars[step], step)
    sink.close()
    atomic_write_json(run / "summary.json", RunSummary.model_validate({"seed": seed, **summary}).to_json())
    return run


def synthetic_run(root: Path, failing: bool, seed: int) -> Path:
    """Updates every 100 steps from 1000 to 20000, evaluations every 2000. Failing runs collapse at their
    onset (10k, 12k or 14k by seed) and their critic gradient norm jumps from [1, 2] to its peak 60 exactly LEAD
    steps earlier (then stays in [50, 55]); healthy runs keep it in [1, 2]. ``update_ratio`` spikes in even seeds of both groups (does not
    separate); ``entropy`` is logged by failing runs only; no run logs plasticity tags."""
    onset = 10000 + 2000 * (seed % 3)
    rng = np.random.default_rng(seed + (100 if failing else 0))
    scalars: dict[int, dict[str, float]] = {}
    for step in range(1000, 20001, 100):
        high = failing and step >= onset - LEAD
        jump = 60.0 if step == onset - LEAD else 50.0 + 5 * rng.random()  # each failing run's peak: at the jump
        row = {f"grad_norm/critic/{a}": (jump if high else 1.0 + rng.random()) for a in AGENTS}
        row |= {f"grad_norm/actor/{a}": 0.1 for a in AGENTS}
        row["optim/update_ratio/critic/agent_0"] = 0.5 if seed % 2 == 0 and step == 8000 else 0.1
        if failing:
            row["policy/entropy/agent_0"] = -1.0
        scalars[step] = row
    for step in range(2000, 20001, 2000):
        stats = COLLAPSED if failing and step >= onset else LIVELY
        scalars.setdefault(step, {}).update({f"eval/{k}/{a}": v for k, v in stats.items() for a in AGENTS})
    final = COLLAPSED if failing else LIVELY
    summary = {"status": "completed", "env_steps": 20000, "agents": list(AGENTS),
               "eval_history": [{"env_steps": s, "team_return": -50.0} for s in range(2000, 20001, 2000)],
               "action_stats": {a: final for a in AGENTS}, "collapse_step": onset if failing else None}
    return write_run(root / "runs" / ("failing" if failing else "healthy") / f"seed_{seed}", seed, scalars, summary)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "sweep"
    for seed in range(10):
        synthetic_run(root, True, seed)
        synthetic_run(root, False, seed)
    synthetic_run(root, False, 12)  # a seed in neither set: ignored
    pending = root / "runs" / "healthy" / "seed_13"  # in progress: config and events, no summary yet
    pending.mkdir(parents=True)
    (pending / "config.yaml").write_text(dump_yaml(load_config(None, ["seed=13"])))
    (pending / "events.out.tfevents.0.host.1.0").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def result(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> cal.Result:
    return cal.calibrate([corpus_dir], tmp_path_factory.mktemp("out") / "cal", quiet=True)


def _row(rows: list[Row], name: str) -> Row:
    return next(r for r in rows if r.name == name)


def test_separating_signal_threshold_recall_and_exact_lead(result: cal.Result):
    row = _row(result.signals, "critic_grad_norm")
    healthy_max = max(r.signals["critic_grad_norm"].max for r in result.corpus.records if not r.failing)
    assert healthy_max <= 2.0 < row.threshold <= 60.0 and not row.flagged
    assert row.calibration.recall == 1.0 and row.calibration.alarmed_healthy == 0
    h = row.held_out
    assert (h.n_failing, h.n_healthy) == (5, 5)
    assert (h.recall, h.precision, h.alarmed_healthy, h.false_alarm_rate) == (1.0, 1.0, 0, 0.0)
    assert h.leads == [LEAD] * 5 and h.median_lead == LEAD
    # sorted by held-out recall, false alarms, lead: it ties for first (with its growth ratio, also separating)
    assert result.signals[0].sort_key()[:3] == row.sort_key()[:3] == (-1.0, 0, -LEAD)
    verdict = result.report.split("## Verdict")[1]
    assert "The best signal on the held-out seeds is **critic_grad_" in verdict
    assert "warned in 5 of 5 failing runs, median 3,000 env steps before the onset, and in 0 of 5 healthy runs" in verdict


def test_non_separating_and_absent_signals(result: cal.Result):
    mixed = _row(result.signals, "update_ratio")  # spikes in even seeds of both groups
    assert mixed.flagged and mixed.threshold == pytest.approx(math.sqrt(0.1 * 0.5))  # middle of the gap 0.1 .. 0.5
    assert (mixed.calibration.alarmed_failing, mixed.calibration.alarmed_healthy) == (3, 3)
    assert (mixed.held_out.alarmed_failing, mixed.held_out.alarmed_healthy) == (2, 2)  # seeds 6 and 8
    assert mixed.held_out.recall < 1.0 and mixed.held_out.false_alarm_rate > 0
    for name in ("dormant_tau0", "dormant_tau0.1", "eff_rank_drop", "q_drift", "approx_kl"):
        row = _row(result.signals, name)
        assert row.threshold is None and row.held_out is None and row.note == "no calibration run logs it"
        assert all(r.signals[name] is None for r in result.corpus.records)  # n/a, not zero
    entropy = _row(result.signals, "entropy")  # failing runs only: no false alarm could ever be measured
    assert entropy.threshold is None and entropy.note == "no healthy calibration run logs it"
    report = result.report
    assert "| `dormant_tau0` (fraction) | n/a |" in report
    assert report.index("`critic_grad_norm`") < report.index("`update_ratio`") < report.index("`dormant_tau0`")


def test_labels_groups_and_detector_rows(result: cal.Result):
    c = result.corpus
    assert len(c.records) == 20 and c.ignored == 1
    assert len(c.skipped) == 1 and "seed_13" in c.skipped[0] and "summary.json" in c.skipped[0]
    failing = [r for r in c.records if r.group == "failing"]
    assert all(r.label == "collapsed" and r.onset == 10000 + 2000 * (r.seed % 3) for r in failing)
    assert {r.label for r in c.records if r.group == "healthy"} == {"healthy"}
    assert len({r.group_key for r in failing}) == 1 and failing[0].sweep == "sweep"
    collapse = _row(result.detectors, "collapse")  # fired exactly at the onset in every failing run
    assert collapse.held_out.recall == 1.0 and collapse.held_out.leads == [0] * 5
    assert "entropy_collapse" in [r.name for r in result.detectors]
    assert _row(result.detectors, "explosion").held_out.n_failing == 5  # fed: grad_norm tags exist
    assert "| failing | `" in result.report and "| held-out | 5 | 0 | 5 | 0 | 0 | saturated 5 | 12,000 |" in result.report


def test_outputs_and_from_records_rerender(result: cal.Result, tmp_path: Path, corpus_dir: Path):
    out = tmp_path / "first"
    cal.write_outputs(result, out)
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["signals"]["critic_grad_norm"]["threshold"] == _row(result.signals, "critic_grad_norm").threshold
    assert thresholds["signals"]["dormant_tau0"]["threshold"] is None
    cal.calibrate([], tmp_path / "again", from_records=out / "records.json", quiet=True)
    for name in cal.OUTPUTS:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    # new seed sets from the same records: thresholds from seeds 5-9 scored on 0-4
    swapped = cal.calibrate([], tmp_path / "swap", "5-9", "0-4", from_records=out / "records.json", quiet=True)
    assert _row(swapped.signals, "critic_grad_norm").held_out.leads == [LEAD] * 5


# ---------------------------------------------------------------------------------------------- labels, onsets
def _summary(**kw: Any) -> RunSummary:
    return RunSummary.model_validate({"status": "completed", "env_steps": 5000, "agents": ["agent_0"], **kw})


def _evals(per_step: dict[int, dict[str, float]], agent: str = "agent_0", same: bool = True) -> dict[str, list]:
    out: dict[str, list] = {}
    for step, stats in sorted(per_step.items()):
        for k, v in stats.items():
            if k != "batch_same_action" or same:
                out.setdefault(f"eval/{k}/{agent}", []).append((step, v))
    return out


CFG = load_config(None).to_dict()


def test_diverged_labels_and_onsets():
    assert label_run(_summary(nonfinite_step=1234), CFG, {})[:3] == ("diverged", 1234, "")
    assert label_run(_summary(status="diverged", nonfinite_step=700), CFG, {})[:2] == ("diverged", 700)
    label, onset, note, *_ = label_run(_summary(status="diverged", env_steps=900), CFG, {})
    assert (label, onset) == ("diverged", 900) and "no non-finite step" in note


def test_collapsed_onset_is_the_start_of_the_final_collapsed_stretch():
    evals = {1000: COLLAPSED, 2000: LIVELY, 3000: COLLAPSED, 4000: COLLAPSED, 5000: COLLAPSED}
    s = _summary(action_stats={"agent_0": COLLAPSED})
    assert label_run(s, CFG, _evals(evals)) == ("collapsed", 3000, "", ["agent_0"], "saturated")
    assert collapse_onset(_evals(evals), "agent_0", load_config(None).detectors.model_dump()) == (3000, "")
    # no eval/batch_same_action tags: the detector thresholds alone decide, and the note says so
    label, onset, note, *_ = label_run(s, CFG, _evals(evals, same=False))
    assert (label, onset) == ("collapsed", 3000) and "thresholds alone" in note
    # tags that do not show the end state: the final evaluation's step, noted
    s2 = _summary(action_stats={"agent_0": COLLAPSED}, eval_history=[{"env_steps": 5000}])
    label, onset, note, *_ = label_run(s2, CFG, _evals({5000: LIVELY}))
    assert (label, onset) == ("collapsed", 5000) and "final evaluation" in note


def test_collapse_uses_the_run_config_thresholds_and_the_same_action_rate():
    almost = {**COLLAPSED, "repeat_rate": 0.85}
    s = _summary(action_stats={"agent_0": almost})
    assert label_run(s, CFG, _evals({5000: almost}))[0] == "healthy"  # default repeat_threshold 0.9
    lenient = load_config(None, ["detectors.repeat_threshold=0.8"]).to_dict()
    assert label_run(s, lenient, _evals({5000: almost}))[:2] == ("collapsed", 5000)
    speaker = {**COLLAPSED, "batch_same_action": 0.36}  # saturated, insensitive, but one message per goal
    assert label_run(_summary(action_stats={"agent_0": speaker}), CFG, {})[0] == "healthy"
    assert label_run(_summary(action_stats={"agent_0": LIVELY}), CFG, {})[:2] == ("healthy", None)


def test_a_constant_policy_collapses_with_or_without_saturation():
    """Saturation is the kind of a collapse, not a condition of it: a tanh scaled to the bounds can stop responding
    in the middle of the range."""
    unsaturated = {**COLLAPSED, "saturation": 0.0}
    lab = label_run(_summary(action_stats={"agent_0": unsaturated}), CFG, _evals({5000: unsaturated}))
    assert (lab.label, lab.kind, lab.onset) == ("collapsed", "unsaturated", 5000)
    assert label_run(_summary(action_stats={"agent_0": COLLAPSED}), CFG, _evals({5000: COLLAPSED})).kind == "saturated"


def _history(returns: list[float], every: int = 1000) -> list[dict[str, Any]]:
    return [{"env_steps": every * (i + 1), "team_return": r} for i, r in enumerate(returns)]


def test_a_run_that_ends_below_doing_nothing_is_degraded_never_healthy():
    """What users see: a run that learned to -57 and fell back to -78 (do-nothing: -73.5) is not healthy."""
    noisy = [-60.0, -58.0, -57.0, -59.0, -57.5, -62.0, -70.0, -76.0, -78.0, -77.0, -79.0]
    s = _summary(action_stats={"agent_0": LIVELY}, eval_history=_history(noisy), final_return=noisy[-1])
    assert label_run(s, CFG, {})[::4] == ("degraded", "dropped")  # without an anchor the drop rule alone sees it
    lab = label_run(s, CFG, {}, do_nothing=-73.5)
    assert (lab.label, lab.kind) == ("degraded", "below_do_nothing")
    assert lab.onset == 9000  # the first trailing mean (of 3) at or below -73.5 that stays there
    # never better than doing nothing: degraded from the first evaluation
    flat = _summary(action_stats={"agent_0": LIVELY}, eval_history=_history([-75.0, -76.0, -74.0, -75.5]))
    assert label_run(flat, CFG, {}, do_nothing=-73.5)[::4] == ("degraded", "below_do_nothing")
    # fewer evaluations than the trailing median's window: the median of those there are (a short run, e.g. a cure
    # trial judged after two evaluations at -81.9, is not called healthy); above doing nothing it is healthy
    for short, label in (([-92.0, -81.9], "degraded"), ([-80.0], "degraded"), ([-70.0, -65.0], "healthy")):
        s = _summary(action_stats={"agent_0": LIVELY}, eval_history=_history(short), final_return=short[-1])
        assert label_run(s, CFG, {}, do_nothing=-73.5).label == label, short


def test_a_sustained_drop_beyond_the_evaluation_noise_is_degraded():
    rng = np.random.default_rng(0)
    rising = list(-60 + np.linspace(0, 20, 30) + rng.normal(0, 1.0, 30))  # learns, noise ~1
    dropped = rising + list(-52 + rng.normal(0, 1.0, 8))  # then loses ~8: far beyond DROP_Z x noise
    s = _summary(action_stats={"agent_0": LIVELY}, eval_history=_history(dropped))
    lab = label_run(s, CFG, {}, do_nothing=-73.5)
    assert (lab.label, lab.kind) == ("degraded", "dropped") and 30_000 < lab.onset <= 38_000
    kept = _summary(action_stats={"agent_0": LIVELY}, eval_history=_history(rising))
    assert label_run(kept, CFG, {}, do_nothing=-73.5).label == "healthy"
    drop, noise = drop_from_best(dropped)
    assert drop > DROP_Z * noise and 0.5 < noise < 2.0


# ---------------------------------------------------------------------------------------------- signals, rule
def _series(steps: list[int], values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(steps, np.int64), np.array(values, np.float64)


def test_transforms():
    p = SignalParams(baseline_updates=3, slope_window=4)
    steps, values = growth(_series([10, 20, 30, 40, 50], [1.0, 2.0, 3.0, 8.0, 20.0]), None, p)
    assert steps.tolist() == [30, 40, 50] and values.tolist() == [1.5, 4.0, 10.0]  # causal: from the 3rd value on
    assert len(growth(_series([10, 20], [1.0, 2.0]), None, p)[0]) == 0
    xs = [0, 10000, 20000, 30000, 40000, 40000]
    steps, slope = log_slope(_series(xs, [math.exp(0.5 * x / 1e4) for x in xs]), None, p)
    assert steps.tolist() == [30000, 40000, 40000] and np.allclose(slope, 0.5)  # e-folds per 10k env steps
    same = log_slope(_series([5] * 6, [1.0, 2, 3, 4, 5, 6]), None, p)[1]
    assert np.isnan(same).all()  # one env step (an on-policy update's minibatches): no slope
    steps, ratio = drift_ratio(_series([1, 2, 3], [10.0, -30.0, 5.0]), _series([1, 2], [-10.0, -10.0]), p)
    assert steps.tolist() == [1, 2] and ratio.tolist() == [1.0, 3.0]
    agg = aggregate([_series([1, 2, 2], [1.0, 5.0, np.nan]), _series([2, 3], [4.0, np.nan])], "up")
    assert agg[0].tolist() == [1, 2] and agg[1].tolist() == [1.0, 5.0]
    assert aggregate([_series([1, 1], [3.0, -2.0])], "down")[1].tolist() == [-2.0]


def test_trace_alarm_step_and_learning_start():
    t = trace_of(_series([1, 2, 3, 4, 5], [1.0, 0.5, 3.0, 2.0, np.inf]), "up")
    assert (t.steps, t.values) == ([1, 3, 5], [1.0, 3.0, math.inf])
    assert [t.alarm_step(x) for x in (0.2, 1.0, 1.5, 3.0, 1e9)] == [1, 1, 3, 3, 5]
    down = trace_of(_series([1, 2, 3], [0.0, -1.0, -0.5]), "down")
    assert down.alarm_step(-0.9) == 2 and down.alarm_step(-2.0) is None
    scalars = {"grad_norm/critic/a": [(500, 1.0), (600, 2.0)], "eval/saturation/a": [(100, 1.0), (700, 0.2)]}
    sig = traces(scalars, SignalParams())
    assert sig["saturation"].steps == [700] and sig["critic_grad_norm"].first_step == 500  # warm-up eval dropped
    assert sig["entropy"] is None


def _rec(failing: bool, trace: Trace, onset: Optional[int] = 1000, seed: int = 0) -> LabelledRun:
    return LabelledRun(run_dir="r", group="g", group_key="k", sweep="", seed=seed, status="completed", algo="maddpg",
                     env="e", env_steps=2000, label="collapsed" if failing else "healthy",
                     onset=onset if failing else None, onset_note="", signals={"critic_grad_norm": trace})


def _tr(points: list[tuple[int, float]]) -> Trace:
    return trace_of(_series([s for s, _ in points], [v for _, v in points]), "up")


def test_threshold_rule_zero_false_alarms_then_lead_then_conservative():
    healthy = _rec(False, _tr([(100, 1.0)]))
    a = _rec(True, _tr([(100, 2.0), (200, 3.0)]))
    b = _rec(True, _tr([(300, 5.0)]))
    row = choose([healthy, a, b], "critic_grad_norm", "up")
    # 2.0 and 3.0 alarm both; 2.0 alarms a earlier; reported in the middle of the gap to the healthy 1.0
    assert row.threshold == pytest.approx(math.sqrt(1.0 * 2.0)) and not row.flagged
    assert row.calibration.leads == [900, 700]
    # no zero-false-alarm threshold: fewest false alarms, most failing alarmed, then the more conservative
    loud = _rec(False, _tr([(100, 0.5), (200, 0.7), (300, 10.0)]))
    quiet_fail = _rec(True, _tr([(150, 0.8)]))
    row = choose([loud, quiet_fail], "critic_grad_norm", "up")
    assert row.flagged and row.threshold == pytest.approx(math.sqrt(0.7 * 0.8)) and row.calibration.alarmed_healthy == 1
    s = score([(a, 400), (b, None), (healthy, 50)])
    assert (s.recall, s.precision, s.false_alarm_rate, s.leads) == (0.5, 0.5, 1.0, [600])


# ---------------------------------------------------------------------------------------------- real tiny runs
TINY = ["maddpg.warmup_steps=200", "maddpg.batch_size=32", "maddpg.update_every=10", "train.eval_every=200",
        "train.eval_episodes=2", "train.checkpoint_every=600", "env.num_envs=2", "train.steps=600"]


def test_real_tiny_runs_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch):
    """Two seeds each of a tiny healthy run and the same run made to diverge (NaN critic loss from update 25).
    Runs this short cannot beat doing nothing (they would be labelled degraded: tested above), so the do-nothing
    anchor is left out here."""
    from marl_stability.runs import anchors
    from marl_stability.training.trainer import Trainer

    monkeypatch.setattr(anchors, "do_nothing_of", lambda config: None)

    sweep = tmp_path / "tiny"
    for arm, extra in (("ok", []), ("nan", ["debug.inject_nonfinite_at_update=25"])):
        for seed in (0, 1):
            cfg = load_config(ROOT / "experiments" / "maddpg_spread.yaml", [*TINY, *extra, f"seed={seed}"])
            Trainer(cfg, sweep / "runs" / arm / f"seed_{seed}", quiet=True).run()
    out = tmp_path / "cal"
    main(["calibrate", str(sweep), "--out", str(out), "--calibration-seeds", "0", "--held-out-seeds", "1"])  # returns
    printed = capsys.readouterr().out
    assert "4 runs labelled (2 calibration, 2 held-out)" in printed and "critic_grad_norm" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(cal.OUTPUTS)
    corpus = cal.read_records(out / "records.json")
    labels = {(Path(r.run_dir).parent.name, r.seed): r for r in corpus.records}
    assert {k: r.label for k, r in labels.items()} == {("ok", 0): "healthy", ("ok", 1): "healthy",
                                                       ("nan", 0): "diverged", ("nan", 1): "diverged"}
    for r in labels.values():
        assert (r.onset == r.detectors["nonfinite"]) if r.failing else r.detectors["nonfinite"] is None
        grad = r.signals["critic_grad_norm"]
        assert grad is not None and grad.points > 0 and grad.first_step == r.learning_start >= 200
    nonfinite = _row(cal.analyse(corpus).detectors, "nonfinite")
    assert nonfinite.held_out.recall == 1.0 and nonfinite.held_out.alarmed_healthy == 0


# ---------------------------------------------------------------------------------------------- error contract
def _fails(args: list[str], capsys: pytest.CaptureFixture[str], *text: str) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["calibrate", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for t in text:
        assert t in err, err


def test_errors_are_one_line_and_write_nothing(corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              snapshot: Any):
    before = snapshot(corpus_dir)
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    healthy_only = corpus_dir / "runs" / "healthy"
    failing_only = corpus_dir / "runs" / "failing"
    bad_records = tmp_path / "bad.json"
    bad_records.write_text("{not json")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        ([str(empty)], "no run directories"),
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(corpus_dir), "--calibration-seeds", "0-4", "--held-out-seeds", "4-9"], "overlap", "seed 4"),
        ([str(corpus_dir), "--calibration-seeds", "0-"], "--calibration-seeds"),
        ([str(corpus_dir), "--held-out-seeds", "a"], "--held-out-seeds"),
        ([str(corpus_dir), "--held-out-seeds", "9-5"], "backwards"),
        ([str(healthy_only)], "no failing"),
        ([str(failing_only)], "no healthy"),
        ([str(corpus_dir), "--held-out-seeds", "20-29"], "no run with a held-out seed"),
        ([], "not both and not neither"),
        ([str(corpus_dir), "--from-records", str(bad_records)], "not both"),
        (["--from-records", str(bad_records)], "not a calibration records file"),
        (["--from-records", str(tmp_path / "none.json")], "no such file"),
        ([str(corpus_dir), "--slope-window", "1"], "--slope-window"),
        ([str(corpus_dir / "runs" / "healthy" / "seed_13")], "no finished run", "1 skipped"),
        ([str(corpus_dir), "--calibration-seeds", "30", "--held-out-seeds", "31"], "no finished run", "21 ignored"),
    ]
    for args, *text in cases:
        _fails([*args, "--out", str(out), "--quiet"], capsys, *text)
        assert not out.exists(), args
    _fails([str(corpus_dir), "--out", str(a_file)], capsys, "not a directory")
    assert a_file.read_text() == "x"
    assert snapshot(corpus_dir) == before


def test_error_through_a_real_process(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "marl_stability", "calibrate", str(tmp_path / "nowhere"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'nowhere'} does not exist\n"
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_given_thresholds_are_scored_on_both_splits(result: cal.Result, tmp_path: Path):
    """--score SIGNAL=THETA: a threshold the user picked, scored like the chosen ones; bad pairs are one-line errors."""
    out = tmp_path / "first"
    cal.write_outputs(result, out)
    # the synthetic failing runs jump to 60 then stay in [50, 55]; healthy runs stay in [1, 2]
    scored = cal.calibrate([], tmp_path / "scored", from_records=out / "records.json", quiet=True,
                           scores=["critic_grad_norm=40", "critic_grad_norm=1.5", "critic_grad_norm=100"])
    hi, lo, never = scored.scored
    assert (hi.threshold, hi.held_out.recall, hi.held_out.alarmed_healthy) == (40.0, 1.0, 0)
    assert hi.held_out.leads == [LEAD] * 5 and hi.calibration.recall == 1.0
    assert lo.held_out.alarmed_healthy > 0  # 1.5 is inside the healthy runs' range
    assert never.held_out.alarmed_failing == 0 and never.calibration.alarmed_failing == 0
    report = (tmp_path / "scored" / "report.md").read_text()
    assert "## Thresholds given with --score" in report and "| >= 40 |" in report
    given = json.loads((tmp_path / "scored" / "thresholds.json").read_text())["scored"]
    assert [g["threshold"] for g in given] == [40.0, 1.5, 100.0] and given[0]["signal"] == "critic_grad_norm"
    for bad in ("nope=3", "critic_grad_norm", "critic_grad_norm=abc", "critic_grad_norm=inf"):
        with pytest.raises(cal.UserError):
            cal.calibrate([], tmp_path / "bad", from_records=out / "records.json", quiet=True, scores=[bad])
    assert not (tmp_path / "bad").exists()


def test_a_lucky_first_evaluation_is_no_best_and_frozen_returns_still_drop():
    """The best is a mean over complete windows (a single lucky first evaluation is not a best to fall from), and
    evaluations that repeat one return (zero measured noise) still show a real drop."""
    lucky = [-15.0, -30.0, -31.0, -30.0, -31.0, -30.0, -31.0, -30.0]
    assert label_run(_summary(action_stats={"agent_0": LIVELY}, eval_history=_history(lucky)), CFG, {}).label == "healthy"
    frozen = [-60.0, -40.0, -30.0, -25.0, -25.0, -80.0, -80.0, -80.0, -80.0, -80.0, -80.0]
    lab = label_run(_summary(action_stats={"agent_0": LIVELY}, eval_history=_history(frozen)), CFG, {})
    assert lab[::4] == ("degraded", "dropped")
    # a task whose team return mixes two opposing teams: the drop of the sum is not judged
    assert label_run(_summary(action_stats={"agent_0": LIVELY}, eval_history=_history(frozen)), CFG, {},
                     judge_drop=False).label == "healthy"
