"""Cross-task records from a real (tiny) sweep: every finished run gets its label, and the collapsed agents the tables
count are the ones the collapse rule finds in the run's final evaluation."""

from __future__ import annotations

from pathlib import Path

from marl_stability.analysis import cross_task as ct
from marl_stability.runs.labels import LABELS, detector_thresholds, is_collapsed
from marl_stability.runs.record import RunRecord
from marl_stability.studies.sweep.runner import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train.steps": 1200, "maddpg.warmup_steps": 200, "maddpg.batch_size": 32, "maddpg.update_every": 10,
        "train.eval_every": 200, "train.eval_episodes": 2, "env.num_envs": 2}


def test_records_of_a_real_sweep_carry_labels_and_the_collapse_rule(tmp_path: Path) -> None:
    sweep = tmp_path / "single_fixes.yaml"
    sweep.write_text(f"""name: tiny_reference
base:
  config: {ROOT / 'experiments' / 'repeated_action_failure.yaml'}
  set:
    env.id: simple_reference_v3
    env.kwargs: {{local_ratio: 0.5, max_cycles: 25, continuous_actions: true}}
design: arms
arms:
  failure: {{}}
  lower_lr: {{config: {ROOT / 'experiments' / 'repeated_action_fix_lower_lr.yaml'}}}
reference: failure
seeds: 1
""")
    out = tmp_path / "out"
    run_sweep(sweep, out, quiet=True, extra=TINY)
    records = ct.load_records(out)
    assert sorted(r.arm for r in records) == ["failure", "lower_lr"]
    for r in records:
        run = RunRecord(out / "runs" / r.arm / f"seed_{r.seed}")
        assert r.label in LABELS and r.label == run.label.label and r.label_kind == run.label.kind
        det = detector_thresholds(run.config)
        assert r.collapsed_agents == [a for a, st in r.action_stats.items() if is_collapsed(st, det)]
        assert r.task == "simple_reference_v3" and r.sweep == "single_fixes"
    text = ct.render(records)
    assert "n/a" not in "\n".join(line for line in text.splitlines() if line.startswith("| single_fixes"))
