"""The mechanism a run took (explosion-first, saturation-first, neither), and doctor's ranking of the fixes by
the measured single-fix tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pytest

from marl_stability.fixes import evidence
from marl_stability.analysis import doctor, fix_evidence
from marl_stability.analysis.mechanism import classify
from marl_stability.config import load_config
from marl_stability.core.summary import RunSummary

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(None).to_dict()  # explosion_growth 1000, baseline 20 updates, saturation threshold 0.9
AGENT = "agent_0"
COLLAPSED = {"repeat_rate": 1.0, "saturation": 1.0, "sensitivity": 0.0, "batch_same_action": 1.0}
LIVELY = {"repeat_rate": 0.3, "saturation": 0.2, "sensitivity": 0.4, "batch_same_action": 0.01}


def scalars(grad: dict[int, float], evals: dict[int, dict[str, float]], actor: float = 0.5) -> dict[str, list]:
    """Updates every 100 env steps from 1000 (critic norm from ``grad``: the last key at or before the step),
    evaluations at the given steps."""
    out: dict[str, list] = {"grad_norm/critic/agent_0": [], "grad_norm/actor/agent_0": []}
    keys = sorted(grad)
    for step in range(1000, 20001, 100):
        level = grad[max(k for k in keys if k <= step)]
        out["grad_norm/critic/agent_0"].append((step, level))
        out["grad_norm/actor/agent_0"].append((step, actor))
    for step, stats in sorted(evals.items()):
        for k, v in stats.items():
            out.setdefault(f"eval/{k}/{AGENT}", []).append((step, v))
    return out


def summary(final: dict[str, float], **kw: Any) -> RunSummary:
    return RunSummary.model_validate({"status": "completed", "env_steps": 20000, "agents": [AGENT],
                                      "action_stats": {AGENT: final}, **kw})


def evals(collapse_from: Optional[int]) -> dict[int, dict[str, float]]:
    return {s: (COLLAPSED if collapse_from is not None and s >= collapse_from else LIVELY) for s in range(2000, 20001, 2000)}


def events(d: dict[str, Any]) -> list[tuple[int, str]]:
    return [(e["env_step"], e["event"].split(" (")[0]) for e in d["timeline"]]


def test_explosion_first_growth_before_saturation():
    # early level 2; 30x at 5000, 1500x at 7000; saturated and collapsed from 10000
    d = classify(summary(COLLAPSED), CFG, scalars({0: 2.0, 5000: 60.0, 7000: 3000.0}, evals(10000)))
    assert d["mechanism"] == "explosion-first" and d["label"] == "collapsed" and d["onset"] == 10000
    assert "7000" in d["why"] and "10000" in d["why"]
    got = events(d)
    assert got[0] == (1000, "first gradient update")
    assert (5000, "critic gradient norm >= 10x its early level") in got
    assert (7000, "critic gradient norm >= 1000x its early level") in got
    assert (10000, "collapse onset") in got
    assert [s for s, _ in got] == sorted(s for s, _ in got)


def test_saturation_first_with_a_late_explosion_and_without_one():
    late = classify(summary(COLLAPSED), CFG, scalars({0: 2.0, 14000: 5000.0}, evals(4000)))
    assert late["mechanism"] == "saturation-first"
    assert "4000" in late["why"] and "it got there at env step 14000" in late["why"]
    flat = classify(summary(COLLAPSED), CFG, scalars({0: 2.0}, evals(4000)))
    assert flat["mechanism"] == "saturation-first" and "for the whole run" in flat["why"]


def test_vanished_actor_gradient_is_on_the_timeline():
    sc = scalars({0: 2.0}, evals(4000), actor=0.5)
    sc["grad_norm/actor/agent_0"] = [(s, 0.5 if s < 6000 else 1e-4) for s, _ in sc["grad_norm/actor/agent_0"]]
    assert (6000, "an actor's gradient norm < 0.01x its early level") in events(classify(summary(COLLAPSED), CFG, sc))


def test_neither_healthy_warning_and_unexplained_divergence():
    healthy = classify(summary(LIVELY), CFG, scalars({0: 2.0}, evals(None)))
    assert healthy["mechanism"] == "neither" and healthy["label"] == "healthy" and "warning" not in healthy["why"]
    warned = classify(summary(LIVELY), CFG, scalars({0: 2.0, 9000: 4000.0}, evals(None)))
    assert warned["mechanism"] == "neither" and "9000" in warned["why"] and "warning without a failure" in warned["why"]
    diverged = classify(summary(LIVELY, status="diverged", nonfinite_step=8000), CFG, scalars({0: 2.0}, evals(None)))
    assert diverged["mechanism"] == "neither" and diverged["label"] == "diverged"
    assert (8000, "first non-finite value") in events(diverged)
    exploded = classify(summary(LIVELY, status="diverged", nonfinite_step=8000), CFG,
                        scalars({0: 2.0, 6000: 1e5}, evals(None)))
    assert exploded["mechanism"] == "explosion-first"


def test_online_rule_details_nonfinite_min_norm_missing_tags_and_undetermined():
    # a norm that only turns inf at the non-finite step is no growth (online, non-finite norms are skipped)
    sc = scalars({0: 2.0}, evals(None))
    sc["grad_norm/critic/agent_0"] = [(st, math.inf if st >= 8000 else v) for st, v in sc["grad_norm/critic/agent_0"]]
    nan_only = classify(summary(LIVELY, status="diverged", nonfinite_step=8000), CFG, sc)
    assert nan_only["growth_step"] is None and nan_only["mechanism"] == "neither"
    # a tiny critic gradient growing 2000x stays under explosion_min_norm (10), as online
    tiny = classify(summary(COLLAPSED), CFG, scalars({0: 0.002, 3000: 4.0}, evals(10000)))
    assert tiny["growth_step"] is None
    # no critic tags: no evidence either way
    sc = scalars({0: 2.0}, evals(4000))
    del sc["grad_norm/critic/agent_0"]
    blind = classify(summary(COLLAPSED), CFG, sc)
    assert blind["mechanism"] == "neither" and "no critic gradient norms" in blind["why"]
    # growth between the last unsaturated evaluation (4000) and the first saturated one (6000): cannot tell
    mid = classify(summary(COLLAPSED), CFG, scalars({0: 2.0, 5000: 4000.0}, evals(6000)))
    assert mid["mechanism"] == "undetermined" and "4000" in mid["why"] and "6000" in mid["why"]
    # the baseline is explosion_baseline updates: 20 logged values at log_every 1, 2 at the default 10
    every = load_config(None, ["train.log_every=1"]).to_dict()
    assert classify(summary(COLLAPSED), every, scalars({0: 2.0, 2500: 4000.0}, evals(10000)))["growth_step"] == 3000
    assert classify(summary(COLLAPSED), CFG, scalars({0: 2.0, 2500: 4000.0}, evals(10000)))["growth_step"] == 2500


def test_a_run_that_diverges_before_the_baseline_exists_is_still_classified():
    # log_every 1: the baseline is 20 logged values, but the critic went non-finite after 17 (updates every 8 env
    # steps from 1000): the early level is the median of the first half (8 values of ~100), 1e7 is 1e5x that.
    every = load_config(None, ["train.log_every=1"]).to_dict()
    norms = [100.0, 130.0, 90.0, 300.0, 60.0, 110.0, 95.0, 170.0, 320.0, 280.0, 2e3, 6e4, 2e3, 180.0, 2e4, 1e7, 3e12]
    sc = {"grad_norm/critic/agent_0": [(1000 + 8 * i, v) for i, v in enumerate(norms)] + [(1136, math.inf)],
          "grad_norm/actor/agent_0": [(1000 + 8 * i, 0.5) for i in range(18)]}
    d = classify(summary(LIVELY, status="diverged", nonfinite_step=1136), every, sc)
    assert d["label"] == "diverged" and d["mechanism"] == "explosion-first"
    assert d["growth_step"] == 1000 + 8 * 15  # 1e7 > 1000 x median(first 8) = 1.05e5; 6e4 and 2e4 are not
    assert "median of the first half" in d["why"]
    # a single finite value is no level at all
    one = {"grad_norm/critic/agent_0": [(1000, 100.0), (1008, math.inf)]}
    assert classify(summary(LIVELY, status="diverged", nonfinite_step=1008), every, one)["growth_step"] is None


def test_the_run_config_sets_the_growth_threshold():
    cfg = load_config(None, ["detectors.explosion_growth=20"]).to_dict()
    d = classify(summary(COLLAPSED), cfg, scalars({0: 2.0, 3000: 60.0}, evals(10000)))
    assert d["explosion_growth"] == 20.0 and d["mechanism"] == "explosion-first"
    assert classify(summary(COLLAPSED), CFG, scalars({0: 2.0, 3000: 60.0}, evals(10000)))["mechanism"] == "saturation-first"


# ---------------------------------------------------------------------------------------------- fix ranking
def arm(name: str, fix: Optional[str], labels: list[str], ret: float) -> dict[str, Any]:
    return {"arm": name, "fix": fix, "labels": labels, "n": len(labels), "healthy": labels.count("healthy"), "mean_final_return": ret}


EVIDENCE = {"mechanisms": {"explosion-first": {"sweep": "single_fixes_explosion", "env": "simple_spread_v3",
                                               "env_steps": 50000, "arms": {
    "failure": arm("failure", None, ["diverged"] * 3, -80.0),
    "clip": arm("clip", "clip gradients (global L2 norm)", ["healthy"] * 3, -60.0),
    "lower_lr": arm("lower_lr", "lower the learning rate", ["healthy", "healthy", "diverged"], -55.0),
    "adam": arm("adam", "Adam instead of SGD", ["healthy"] * 3, -65.0),
    "obs_norm": arm("obs_norm", "normalize observations", ["diverged"] * 3, -90.0),
}}}}


def test_ranked_by_healthy_share_then_return():
    ranked = fix_evidence.ranked(EVIDENCE, "explosion-first")
    assert [r["arm"] for r in ranked] == ["clip", "adam", "lower_lr", "obs_norm"]
    assert fix_evidence.ranked(EVIDENCE, "saturation-first") == [] and fix_evidence.ranked({}, "explosion-first") == []


def test_doctor_ranks_fixes_by_the_mechanism_table(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(evidence, "load", lambda path=None: EVIDENCE)
    measured = doctor._measured("explosion-first")
    fixes = [doctor.Fix(1, "normalize observations", []), doctor.Fix(2, "small last-layer init", []),
             doctor.Fix(3, "lower the learning rate", []), doctor.Fix(4, "clip gradients (global L2 norm)", []),
             doctor.Fix(5, "residual blocks", [])]
    order = [f.name for f in doctor._rank_by_evidence(fixes, measured)]
    assert order == ["clip gradients (global L2 norm)", "lower the learning rate", "small last-layer init",
                     "residual blocks", "normalize observations"]
    assert "single_fixes_explosion" in measured[""]["source"]
    assert doctor._rank_by_evidence(fixes, {}) == fixes  # nothing measured: order kept
    text = doctor._measured_text(measured["lower the learning rate"])
    assert text == "left 2/3 seeds healthy (healthy, healthy, diverged), mean final team return -55.0"


def test_fix_evidence_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for bad in (["nonsense"], ["boiling-first=x"], ["explosion-first=" + str(tmp_path / "missing")],
                ["explosion-first=a", "explosion-first=b"]):
        with pytest.raises(SystemExit) as e:
            fix_evidence.main([*bad, "--out", str(tmp_path / "out.json")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(SystemExit) as e:
        fix_evidence.main([f"explosion-first={tmp_path}", "--out", str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: --out")
    assert fix_evidence.load(tmp_path / "missing.json") == {}


# ---------------------------------------------------------------------------------------------- the table over runs
def _write(run: Path, seed: int, series: dict[str, list], final: dict[str, float], **kw: Any) -> None:
    from marl_stability.atomic import atomic_write_json
    from marl_stability.config import dump_yaml
    from marl_stability.core.sinks import TensorBoardSink

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(load_config(None, [f"seed={seed}"])))
    by_step: dict[int, dict[str, float]] = {}
    for tag, points in series.items():
        for step, v in points:
            by_step.setdefault(step, {})[tag] = v
    sink = TensorBoardSink(run)
    for step in sorted(by_step):
        sink.scalar_batch(by_step[step], step)
    sink.close()
    atomic_write_json(run / "summary.json", summary(final, seed=seed, **kw).to_json())


def test_mechanism_table_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from marl_stability.analysis import mechanism

    root = tmp_path / "sweep" / "runs"
    for seed in range(2):
        _write(root / "explode" / f"seed_{seed}", seed, scalars({0: 2.0, 5000 + 1000 * seed: 4000.0}, evals(10000)), COLLAPSED)
        _write(root / "saturate" / f"seed_{seed}", seed, scalars({0: 2.0}, evals(4000)), COLLAPSED)
    _write(root / "healthy" / "seed_0", 0, scalars({0: 2.0}, evals(None)), LIVELY)
    _write(root / "unfinished" / "seed_0", 0, scalars({0: 2.0}, evals(None)), LIVELY, status="running")
    bad = root / "badconfig" / "seed_0"
    _write(bad, 0, scalars({0: 2.0}, evals(None)), LIVELY)
    (bad / "config.yaml").write_text((bad / "config.yaml").read_text().replace("saturation_threshold: 0.9",
                                                                             "saturation_threshold: abc"))
    mechanism.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "mech.md")])
    out, err = capsys.readouterr()
    assert "skipped" in err and "status 'running'" in err and "detectors.saturation_threshold" in err
    assert "| sweep/explode | 2 | 0 | 2 | 0 | 0 | 2 | 0 | 0 | 0 |" in out  # degraded: the 6th column
    assert "| sweep/saturate | 2 | 0 | 2 | 0 | 0 | 0 | 2 | 0 | 0 |" in out
    assert "| sweep/healthy | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |" in out
    assert "| sweep/explode | 1 | collapsed | explosion-first | 6000 | 10000 | 10000 | 2e+03 |" in out
    assert (tmp_path / "mech.md").read_text() == out
    with pytest.raises(SystemExit) as e:
        mechanism.main([str(root / "unfinished")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "status 'running'" in err and err.splitlines()[-1].startswith("error: no finished run")
    with pytest.raises(SystemExit) as e:
        mechanism.main([str(tmp_path / "sweep"), "--out", str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: --out")


def test_fix_evidence_from_a_real_tiny_single_fix_sweep(tmp_path: Path):
    """Two arms (failure, clip), one seed, 400 env steps each: labels from the final evaluation, the doctor's fix
    name for the clip arm, counts and returns from the runs' summaries; the packaged file is not touched."""
    from marl_stability.cli.main import main as cli

    spec = tmp_path / "tiny_fixes.yaml"
    spec.write_text(
        f"name: tiny_fixes\nbase:\n  config: {ROOT / 'experiments' / 'no_fix_baseline.yaml'}\n  set:\n"
        "    maddpg.warmup_steps: 200\n    maddpg.batch_size: 32\n    maddpg.update_every: 10\n"
        "    train.eval_every: 200\n    train.eval_episodes: 2\n    train.checkpoint_every: 400\n    env.num_envs: 2\n"
        "design: arms\narms:\n  failure: {}\n  clip:\n    fixes.grad_clip.critic: {mode: global_norm, max: 1.0}\n"
        "seeds: 1\nsteps: 400\n")
    try:
        cli(["ablate", "-c", str(spec), "--out", str(tmp_path / "sweep"), "--quiet"])
    except SystemExit as e:  # typer may exit 0 after the command
        assert e.code in (0, None)
    before = fix_evidence.PACKAGED.read_bytes() if fix_evidence.PACKAGED.exists() else None
    from marl_stability.atomic import atomic_write_json

    atomic_write_json(tmp_path / "ev.json", {"mechanisms": {"saturation-first": {"sweep": "kept"}}})
    fix_evidence.main([f"explosion-first={tmp_path / 'sweep'}", "--out", str(tmp_path / "ev.json")])
    data = fix_evidence.load(tmp_path / "ev.json")
    assert data["mechanisms"]["saturation-first"] == {"sweep": "kept"}  # the other mechanism's table is kept
    table = data["mechanisms"]["explosion-first"]
    assert table["sweep"] == "tiny_fixes" and table["env"] == "simple_spread_v3" and table["env_steps"] == 400
    assert set(table["arms"]) == {"failure", "clip"}
    clip = table["arms"]["clip"]
    assert clip["fix"] == "clip gradients (global L2 norm)" and clip["n"] == 1 and clip["seeds"] == [0]
    from marl_stability.core.summary import read_summary

    run = read_summary(tmp_path / "sweep" / "runs" / "clip" / "seed_0" / "summary.json")
    assert clip["final_returns"] == [run.final_return] and clip["mean_final_return"] == run.final_return
    assert clip["healthy"] + clip["collapsed"] + clip["diverged"] + clip["degraded"] == 1
    assert table["arms"]["failure"]["fix"] is None
    assert [r["arm"] for r in fix_evidence.ranked(data, "explosion-first")] == ["clip"]
    assert (fix_evidence.PACKAGED.read_bytes() if fix_evidence.PACKAGED.exists() else None) == before
