"""Ablation sweeps: design expansion, up-front validation, a tiny sweep end to end on the local process pool,
a failing trial, and resume after ``kill -9`` of the sweep process. The runner builds no report; these tests
build it afterwards with ``report.build_report``, as the ``ablate`` command does."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from marl_stability.cli.ablate import main as ablate_main
from marl_stability.errors import UserError
from marl_stability.studies import sweep
from marl_stability.studies.report import build_report

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "ablation_tiny.yaml"
BASELINE = ROOT / "experiments" / "no_fix_baseline.yaml"
ALL_TINY = {"base/seed_0", "base/seed_1", "+grad_clip/seed_0", "+grad_clip/seed_1"}


def write_ablation(tmp_path: Path, body: str, name: str = "abl.yaml") -> Path:
    """An ablation file next to a copy-free reference to the repository's baseline preset."""
    path = tmp_path / name
    path.write_text(f"base:\n  config: {BASELINE}\n" + body)
    return path


FACTORS = """
factors:
  clip:
    set_on:
      fixes.grad_clip.critic: {mode: global_norm, max: 1.0}
  obs: {key: fixes.obs_norm.enabled, on: true, off: false}
  lr: {key: actor_optim.lr, on: 0.001}
"""


def arms_of(path: Path) -> dict[str, dict[str, Any]]:
    return {a.name: a.overrides for a in sweep.expand_design(sweep.load_ablation(path))}


# ---------------------------------------------------------------------------------------------- design
def test_one_at_a_time(tmp_path: Path) -> None:
    arms = arms_of(write_ablation(tmp_path, FACTORS + "design: one_at_a_time\nsteps: 1000\n"))
    clip_on = {"fixes.grad_clip.critic.mode": "global_norm", "fixes.grad_clip.critic.max": 1.0}
    assert list(arms) == ["base", "+clip", "+obs", "+lr"]
    # Factors without an explicit off level leave the base preset's value alone; steps is applied to every arm.
    assert arms["base"] == {"fixes.obs_norm.enabled": False, "train.steps": 1000}
    assert arms["+clip"] == {**clip_on, "fixes.obs_norm.enabled": False, "train.steps": 1000}
    assert arms["+obs"] == {"fixes.obs_norm.enabled": True, "train.steps": 1000}
    assert arms["+lr"] == {"fixes.obs_norm.enabled": False, "actor_optim.lr": 0.001, "train.steps": 1000}


def test_leave_one_out(tmp_path: Path) -> None:
    arms = arms_of(write_ablation(tmp_path, FACTORS + "design: leave_one_out\n"))
    clip_on = {"fixes.grad_clip.critic.mode": "global_norm", "fixes.grad_clip.critic.max": 1.0}
    assert list(arms) == ["all", "-clip", "-obs", "-lr"]
    assert arms["all"] == {**clip_on, "fixes.obs_norm.enabled": True, "actor_optim.lr": 0.001}
    assert arms["-clip"] == {"fixes.obs_norm.enabled": True, "actor_optim.lr": 0.001}
    assert arms["-obs"] == {**clip_on, "fixes.obs_norm.enabled": False, "actor_optim.lr": 0.001}
    assert arms["-lr"] == {**clip_on, "fixes.obs_norm.enabled": True}
    ab = sweep.load_ablation(tmp_path / "abl.yaml")
    assert sweep.default_reference(ab, sweep.expand_design(ab)) == "all"


def test_factorial(tmp_path: Path) -> None:
    body = """
factors:
  obs: {key: fixes.obs_norm.enabled, on: true, off: false}
  lr: {key: actor_optim.lr, on: 0.001, off: 0.01}
design: factorial
base:
  config: %s
  set: {train.eval_episodes: 3}
""" % BASELINE
    path = tmp_path / "f.yaml"
    path.write_text(body)
    ab = sweep.load_ablation(path)
    specs = sweep.expand_design(ab)
    assert [(a.name, a.levels) for a in specs] == [
        ("base", {"obs": "off", "lr": "off"}), ("obs", {"obs": "on", "lr": "off"}),
        ("lr", {"obs": "off", "lr": "on"}), ("obs+lr", {"obs": "on", "lr": "on"}),
    ]
    assert specs[3].overrides == {"train.eval_episodes": 3, "fixes.obs_norm.enabled": True, "actor_optim.lr": 0.001}
    assert specs[0].overrides == {"train.eval_episodes": 3, "fixes.obs_norm.enabled": False, "actor_optim.lr": 0.01}


def test_explicit_arms_levels_and_plan(tmp_path: Path) -> None:
    path = write_ablation(tmp_path, """
factors:
  lr: {key: actor_optim.lr, on: 0.001}
design: arms
arms:
  slow: {actor_optim.lr: 0.001, critic_optim: {lr: 0.001}}
  base: {}
  huber: {maddpg.critic_loss: huber}
seeds: [3, 7]
""")
    assert arms_of(path)["slow"] == {"actor_optim.lr": 0.001, "critic_optim.lr": 0.001}  # dict values set leaves
    plan = sweep.make_plan(path)
    assert [a.name for a in plan.arms] == ["slow", "base", "huber"] and plan.reference == "base"
    assert plan.seeds == [3, 7]
    assert plan.arm("slow").levels == {"lr": "on"} and plan.arm("huber").levels == {"lr": "off"}
    # Every arm is a complete, validated config; the dict override merged instead of replacing critic_optim.
    assert plan.arm("slow").config["critic_optim"] == {"name": "adam", "lr": 0.001, "eps": 1e-8, "momentum": 0.0}
    assert plan.arm("huber").config["maddpg"]["critic_loss"] == "huber"
    assert sweep.make_plan(path, seeds=2).seeds == [0, 1]
    assert sweep.Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    # fresh seeds of one's own: an offset (of the file's seeds or of 0..N-1), or a list
    choice = sweep.SeedChoice.parse
    assert sweep.make_plan(path, seeds=choice(None, 1000, None)).seeds == [1003, 1007]
    assert sweep.make_plan(path, seeds=choice(3, 1000, None)).seeds == [1000, 1001, 1002]
    assert sweep.make_plan(path, seeds=choice(None, None, "11,20-22")).seeds == [11, 20, 21, 22]
    assert choice(None, None, None) is None


@pytest.mark.parametrize("count, offset, listed, message", [
    (2, None, "5,6", "--seed-list names the seeds itself"), (None, 3, "5", "--seed-list names the seeds itself"),
    (0, None, None, "--seeds must be >= 1"), (None, -1, None, "--seed-offset must be >= 0"),
    (None, None, "5-3", "runs backwards"), (None, None, "a,b", "expected seeds like"),
])
def test_bad_seed_choices_are_one_line_errors(count, offset, listed, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match=message):
        sweep.SeedChoice.parse(count, offset, listed)


@pytest.mark.parametrize(
    "body, message",
    [
        (FACTORS.replace("fixes.obs_norm.enabled", "fixes.obs_norm.enabeld") + "design: one_at_a_time\n",
         "factor obs (on): "),
        (FACTORS + "design: one_at_a_time\nsteps: 0\n", "steps"),
        (FACTORS + "design: one_at_a_time\nbogus: 1\n", "bogus: unknown key"),
        (FACTORS + "design: sideways\n", "design"),
        (FACTORS + "design: one_at_a_time\narms: {a: {}}\n", "arms only goes with design: arms"),
        (FACTORS + "  lr2: {key: actor_optim.lr, on: 0.1}\ndesign: one_at_a_time\n", "both set actor_optim.lr"),
        (FACTORS + "design: one_at_a_time\nreference: nope\n", "reference 'nope' is not an arm"),
        ("factors:\n  x: {key: actor.output, on: tanh_scaled, set_on: {a: 1}}\ndesign: one_at_a_time\n", "either key"),
        ("design: arms\narms: {a: {actor_optim.lr: -1}}\n", "arm a: "),
        ("design: arms\narms: {a: {env.kwargs.bogus: 1}}\n", "arm a: "),  # the env probe, before any trial
        ("design: arms\narms: {.hidden: {}}\n", "not a plain folder name"),
        ("design: one_at_a_time\nfactors: {base: {key: actor.output, on: tanh_scaled}}\n", "factor name"),
        (FACTORS + "design: one_at_a_time\nseeds: [1, 1]\n", "distinct"),
    ],
)
def test_bad_ablation_fails_before_any_trial(tmp_path: Path, body: str, message: str) -> None:
    path = write_ablation(tmp_path, body)
    out = tmp_path / "sweep"
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        sweep.run_sweep(path, out, workers=1, quiet=True)
    assert not out.exists()  # nothing on disk


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_ablation(tmp_path, FACTORS.replace("actor_optim.lr", "actor_optim.rate") + "design: one_at_a_time\n")
    with pytest.raises(SystemExit) as e:
        ablate_main(["ablate", "-c", str(bad), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: factor lr (on): ") and "actor_optim.rate" in err
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        ablate_main(["ablate", "--out", str(tmp_path / "none"), "--resume"])
    assert e.value.code == 2 and "holds no sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        ablate_main(["ablate", "-c", str(TINY), "--out", str(tmp_path / "o"), "--backend", "slurm"])
    assert e.value.code == 2 and "unknown backend" in capsys.readouterr().err


def test_ray_backend_without_ray_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError even where it is installed
    with pytest.raises(UserError, match=r"pip install -e \.\[ray\]"):
        sweep.make_backend("ray", 2)


# ---------------------------------------------------------------------------------------------- end to end
def read_csv(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def summary_files(out: Path) -> dict[str, tuple[int, bytes]]:
    """trial id -> (mtime_ns, bytes) of every summary.json with a final status."""
    found = {}
    for p in sorted((out / "runs").glob("*/seed_*/summary.json")):
        summary = sweep.read_summary(p.parent)
        if summary is not None and summary.status in sweep.FINAL_STATUSES:
            found[f"{p.parent.parent.name}/{p.parent.name}"] = (p.stat().st_mtime_ns, p.read_bytes())
    return found


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny ablation on 2 workers with one injected failure, then resumed so the failed trial reruns."""
    out = tmp_path_factory.mktemp("tiny") / "sweep"
    os.environ[sweep.FAIL_ENV_VAR] = "+grad_clip/seed_1"
    try:
        first = sweep.run_sweep(TINY, out, workers=2, quiet=True)
    finally:
        del os.environ[sweep.FAIL_ENV_VAR]
    build_report(out)
    state = {
        "first": first,
        "index": json.loads((out / "index.json").read_text()),
        "csv": read_csv(out / "results.csv"),
        "report": (out / "report.md").read_text(),
        "summaries": summary_files(out),
    }
    state["second"] = sweep.run_sweep(None, out, workers=2, resume=True, quiet=True)
    build_report(out)
    state["out"] = out
    return state


def test_sweep_end_to_end_with_a_failing_trial(tiny_sweep: dict[str, Any]) -> None:
    out: Path = tiny_sweep["out"]
    first = tiny_sweep["first"]
    # The failure is recorded with its one-line error; the other trials went on.
    assert first.counts == {"pending": 0, "running": 0, "completed": 3, "diverged": 0, "failed": 1}
    assert set(first.ran) == ALL_TINY
    trials = tiny_sweep["index"]["trials"]
    assert set(trials) == ALL_TINY
    assert trials["+grad_clip/seed_1"]["state"] == "failed"
    assert trials["+grad_clip/seed_1"]["error"].startswith("RuntimeError: injected failure for +grad_clip/seed_1")
    for tid in ALL_TINY - {"+grad_clip/seed_1"}:
        assert trials[tid]["state"] == "completed" and trials[tid]["summary"] == f"runs/{tid}/summary.json"
    # Files of the sweep: the plan, the ablation file as given, a run directory per trial.
    assert (out / "ablation.yaml").read_text() == TINY.read_text()
    plan = json.loads((out / "arms.json").read_text())
    assert [a["name"] for a in plan["arms"]] == ["base", "+grad_clip"] and plan["reference"] == "base"
    assert plan["arms"][1]["config"]["fixes"]["grad_clip"]["critic"]["mode"] == "global_norm"
    assert plan["arms"][0]["config"]["train"]["steps"] == 600
    for tid in ALL_TINY:
        run = out / "runs" / tid
        assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    # The report of the first pass lists the failure instead of stopping.
    rows = tiny_sweep["csv"]
    assert [(r["arm"], r["seed"], r["status"]) for r in rows] == [
        ("base", "0", "completed"), ("base", "1", "completed"), ("+grad_clip", "0", "completed"), ("+grad_clip", "1", "failed")]
    assert "`+grad_clip/seed_1` failed: RuntimeError: injected failure" in tiny_sweep["report"]


def test_resume_reruns_only_the_failed_trial(tiny_sweep: dict[str, Any]) -> None:
    out: Path = tiny_sweep["out"]
    second = tiny_sweep["second"]
    assert second.ran == ["+grad_clip/seed_1"]
    assert second.counts["completed"] == 4 and second.counts["failed"] == 0
    index = json.loads((out / "index.json").read_text())
    assert {e["state"] for e in index["trials"].values()} == {"completed"}
    assert index["trials"]["+grad_clip/seed_1"]["attempts"] == 2
    after = summary_files(out)
    for tid, before in tiny_sweep["summaries"].items():
        assert after[tid] == before, f"{tid} was rewritten"


def test_results_csv_report_and_figures(tiny_sweep: dict[str, Any]) -> None:
    out: Path = tiny_sweep["out"]
    rows = read_csv(out / "results.csv")
    required = ["arm", "seed", "status", "final_return", "best_return", "collapse_step", "explosion_step",
                "max_critic_grad_norm", "repeated_action_rate", "saturation_rate", "action_sensitivity",
                "wall_seconds", "grad_clip"]
    assert all(c in rows[0] for c in required)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert [r["grad_clip"] for r in rows] == ["off", "off", "on", "on"]
    for r in rows:
        summary = json.loads((out / r["run_dir"] / "summary.json").read_text())
        assert float(r["final_return"]) == summary["final_return"]
        assert float(r["max_critic_grad_norm"]) == summary["max_grad_norm"]["critic"]
        assert summary["env_steps"] == 600 and summary["seed"] == int(r["seed"])
    text = (out / "report.md").read_text()
    assert "| `base` | 2 |" in text and "| `+grad_clip` | 2 |" in text
    assert "`+grad_clip` vs `base`" in text and "n = 2 vs 2 seeds" in text
    for name in ("learning_curves", "final_return", "failure_rates"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_sweep_is_never_overwritten(tiny_sweep: dict[str, Any]) -> None:
    out: Path = tiny_sweep["out"]
    with pytest.raises(UserError, match="already holds a sweep"):
        sweep.run_sweep(TINY, out, workers=1, quiet=True)
    other = write_ablation(out.parent, "factors: {x: {key: actor.output, on: tanh_scaled}}\ndesign: one_at_a_time\n"
                           "seeds: 2\nsteps: 600\n", name="other.yaml")
    with pytest.raises(UserError, match="does not match the sweep"):
        sweep.run_sweep(other, out, resume=True, workers=1, quiet=True)


def test_ablate_command_builds_the_report(tiny_sweep: dict[str, Any], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``ablate`` (not the runner) writes the report: on a finished sweep, --resume runs nothing and rebuilds it."""
    out = tmp_path / "copy"
    shutil.copytree(tiny_sweep["out"], out)
    for name in ("report.md", "results.csv"):
        (out / name).unlink()
    ablate_main(["ablate", "--out", str(out), "--resume"])
    printed = capsys.readouterr().out
    assert "4 completed" in printed and "(0 run now)" in printed and f"report: {out / 'report.md'}" in printed
    assert read_csv(out / "results.csv") == read_csv(tiny_sweep["out"] / "results.csv")
    assert "| `+grad_clip` | 2 |" in (out / "report.md").read_text()


def test_resume_after_kill_9(tiny_sweep: dict[str, Any], tmp_path: Path) -> None:
    """kill -9 the sweep after its first trial ends; --resume runs only the rest and gives the same table."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "marl_stability.cli.ablate", "ablate", "-c", str(TINY), "--out", str(out),
           "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while not summary_files(out):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial finished in 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1.0)  # the orphaned worker notices its parent is gone (and would be fenced by the trial lock)
    done = summary_files(out)
    assert 1 <= len(done) < 4
    index = json.loads((out / "index.json").read_text())
    assert any(e["state"] in ("running", "pending") for e in index["trials"].values())

    resumed = sweep.run_sweep(None, out, workers=2, resume=True, quiet=True)
    build_report(out)
    assert set(resumed.ran) == ALL_TINY - set(done)
    assert resumed.counts["completed"] == 4
    after = summary_files(out)
    for tid, before in done.items():
        assert after[tid] == before, f"{tid} was rewritten"
    # Same numbers as the sweep that was never killed (timing aside).
    reference = read_csv(tiny_sweep["out"] / "results.csv", drop=("wall_seconds",))
    assert read_csv(out / "results.csv", drop=("wall_seconds",)) == reference


def test_dead_worker_process_is_retried_then_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process that dies (OOM kill, segfault) breaks the pool: the sweep restarts it, retries the
    trials that were in flight, and records the one that keeps dying as failed."""
    path = tmp_path / "crash.yaml"
    path.write_text(TINY.read_text().replace("seeds: 2", "seeds: 1").replace("config: no_fix_baseline.yaml",
                                                                           f"config: {BASELINE}"))
    monkeypatch.setenv(sweep.FAIL_ENV_VAR, "crash:+grad_clip/seed_0")
    outcome = sweep.run_sweep(path, tmp_path / "sweep", workers=1, quiet=True)
    index = json.loads((tmp_path / "sweep" / "index.json").read_text())["trials"]
    assert index["+grad_clip/seed_0"]["state"] == "failed"
    assert index["+grad_clip/seed_0"]["error"] == f"worker process died ({sweep.MAX_ATTEMPTS} attempts)"
    assert index["+grad_clip/seed_0"]["attempts"] == sweep.MAX_ATTEMPTS
    assert index["base/seed_0"]["state"] == "completed" and outcome.counts["completed"] == 1


def test_tiny_ablation_on_a_local_ray_instance(tiny_sweep: dict[str, Any], tmp_path: Path) -> None:
    """The same trials as Ray tasks on a local Ray instance (token authentication on, Ray's default) give the
    same results as the local process pool: training is deterministic per (config, seed)."""
    import ray  # installed by the test extras

    out = tmp_path / "ray_sweep"
    outcome = sweep.run_sweep(TINY, out, workers=2, backend="ray", quiet=True)
    build_report(out)
    assert not ray.is_initialized()  # the backend shut down the instance it started
    assert outcome.counts["completed"] == 4 and outcome.counts["failed"] == 0
    drop = ("wall_seconds",)
    ray_rows = read_csv(out / "results.csv", drop=drop)
    local_rows = {(r["arm"], r["seed"]): r for r in read_csv(tiny_sweep["out"] / "results.csv", drop=drop)}
    for row in ray_rows:
        assert row == local_rows[(row["arm"], row["seed"])]
    assert (out / "report.md").is_file()


def test_learning_table_of_a_sweep(tiny_sweep: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from marl_stability.studies import learning_table as lt

    out: Path = tiny_sweep["out"]
    arms = {a.arm: a for a in lt.load(out)}
    assert set(arms) == {"base", "+grad_clip"} and all(a.seeds == [0, 1] for a in arms.values())
    for name, a in arms.items():
        finals = [sweep.read_summary(out / "runs" / name / f"seed_{s}").final_return for s in a.seeds]
        assert a.finals == finals
        curve = a.mean_curve()  # the seeds evaluate at the same steps: the mean is taken at every one of them
        assert [s for s, _ in curve] == [s for s, _ in a.curves[0]]
        assert curve[-1][1] == pytest.approx((a.curves[0][-1][1] + a.curves[1][-1][1]) / 2)
    base = arms["base"]
    target = max(base.finals)  # exactly one seed reaches it (unless both tie)
    text = lt.render([base], target, [300, 600])
    expected_hits = sum(f >= target for f in base.finals)
    assert f"| {expected_hits}/2 |" in text and "| base |" in text
    lt.main([str(out), "--target", "0", "--at", "300"])
    assert "| base |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        lt.main([str(out), "--at", "x"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: --at")
    with pytest.raises(SystemExit) as e:
        lt.main([str(out / "runs")])  # not a sweep directory
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")
