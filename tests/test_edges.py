"""Sharp edges (issue 14, items 6-9): ``train`` without ``--config``, an environment that fails at the boundary
(status ``env_error``), torch threads per sweep worker, and preset names that resolve from any folder (the wheel
install itself is tested in ``tests/test_wheel.py``).

The failing environments are ``tests/faulty_envs.py``; the thread count a trial really ran with is measured
inside its worker by the hook ``tests/thread_hook.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import faulty_envs
import numpy as np
import pytest
import torch
import yaml
from marl_stability.envs.fast_mpe import FastMPEVectorEnv
from marl_stability.envs.vector import EnvOutputError, SyncVectorEnv

from marl_stability.cli.main import main
from marl_stability.config import (
    DEFAULT_PRESET,
    dump_yaml,
    load_config,
    preset_names,
    resolve_preset,
)
from marl_stability.errors import UserError
from marl_stability.studies import sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
# A few hundred env steps with tiny, frequent updates, one env copy: seconds per run.
TINY = {"maddpg.warmup_steps": 50, "maddpg.batch_size": 16, "maddpg.update_every": 10, "train.eval_every": 100,
        "train.eval_episodes": 2, "train.checkpoint_every": 100, "maddpg.buffer_size": 1000, "env.num_envs": 1}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def run_cli(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``marl-stability ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


# ---------------------------------------------------------------------------------------------- 6: default preset
def test_train_without_config_runs_the_default_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert DEFAULT_PRESET == "maddpg_spread"
    code, _, err = run_cli(["train", "--logdir", tmp_path, "--steps", 120, "-q", *TINY_ARGS], capsys)
    assert code == 0, err
    run = tmp_path / "maddpg_spread_simple_spread_v3_s0"  # <preset>_<env>_s<seed>, the preset being the default
    expected = load_config(EXPERIMENTS / "maddpg_spread.yaml", [f"{k}={v}" for k, v in TINY.items()] + ["train.steps=120"])
    assert (run / "config.yaml").read_text() == dump_yaml(expected)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 120 and summary["updates"] > 0
    # --resume without --config takes the run's own config.yaml, not the default preset: a run whose config
    # differs from the default (another seed and learning rate) continues, and its config is unchanged.
    code, _, err = run_cli(["train", "--logdir", tmp_path, "--name", "other", "--steps", 120, "--seed", 3, "-q",
                            "--set", "actor_optim.lr=0.005", "--set", "train.checkpoints=resume", *TINY_ARGS], capsys)
    assert code == 0, err
    written = (tmp_path / "other" / "config.yaml").read_text()
    code, _, err = run_cli(["train", "--logdir", tmp_path, "--name", "other", "--resume", "--steps", 160, "-q"], capsys)
    assert code == 0, err
    resumed = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["env_steps"] == 160 and resumed["seed"] == 3
    assert (tmp_path / "other" / "config.yaml").read_text() == written


def test_train_help_names_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "default: maddpg_spread" in text and "Without --config it trains the maddpg_spread preset" in text


def test_docs_state_the_default_and_env_error() -> None:
    commands, ablations = ((ROOT / "docs" / p).read_text() for p in ("commands.md", "ablations.md"))
    assert "without `--config`" in commands and "`maddpg_spread`" in commands
    assert "`env_error`" in commands and "threads_per_worker" in ablations


# ---------------------------------------------------------------------------------------------- 9: preset names
def test_preset_names_resolve_path_first_then_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository
    want = EXPERIMENTS / "maddpg_spread.yaml"
    for name in ("maddpg_spread", "maddpg_spread.yaml", "experiments/maddpg_spread.yaml"):
        assert resolve_preset(name).resolve() == want.resolve(), name
    assert set(preset_names()) == {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    # A path that exists wins over a preset of the same name, with or without the .yaml suffix.
    (tmp_path / "maddpg_spread.yaml").write_text("seed: 7\n")
    (tmp_path / "no_fix_baseline").write_text("seed: 8\n")
    assert resolve_preset("maddpg_spread.yaml") == Path("maddpg_spread.yaml")
    assert load_config(resolve_preset("no_fix_baseline")).seed == 8
    with pytest.raises(UserError) as info:
        resolve_preset("maddpg_sprad")
    message = str(info.value)
    assert "maddpg_sprad" in message and "maddpg_spread_fast" in message and "no_fix_baseline" in message
    with pytest.raises(UserError, match="config file not found"):
        resolve_preset("some/dir/maddpg_spread.yaml")  # a path with folders is a path, never a preset name


def test_cli_config_and_train_take_preset_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["config", "--config", "repeated_action_failure"], capsys)
    assert code == 0, err
    assert out == dump_yaml(load_config(EXPERIMENTS / "repeated_action_failure.yaml"))
    code, _, err = run_cli(["config", "--config", "nope"], capsys)
    line = one_error_line(code, err)
    assert "nope" in line and "maddpg_spread" in line and "reproduce" in line
    code, _, err = run_cli(["train", "--config", "nope", "--logdir", tmp_path / "runs"], capsys)
    assert "presets: " in one_error_line(code, err)
    assert not (tmp_path / "runs").exists()


def test_pyproject_packages_cover_the_source_tree() -> None:
    """Packages are listed in pyproject.toml (the presets are a mapped folder): a new subpackage must be listed."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(("marl_stability",) * (top != "marl_stability") + p.parent.relative_to(ROOT).parts)
               for top in ("marl_stability", "envs", "agents") for p in (ROOT / top).rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"marl_stability.presets"}
    assert tool["package-dir"] == {"marl_stability.presets": "experiments", "marl_stability.envs": "envs",
                                   "marl_stability.agents": "agents"}
    assert tool["package-data"]["marl_stability.presets"] == ["*.yaml"]


# ---------------------------------------------------------------------------------------------- 7: env boundary
FAILURES = [
    # (fail, at, agent, the message's parts, env step in the summary)
    ("nan_obs", 140, 1, ["returned a non-finite observation (nan) for agent a_1 at env step 139",
                         "(env copy 0, episode step 15)"], 139),
    ("nan_reward", 140, 0, ["returned a non-finite reward (nan) for agent a_0 at env step 139",
                            "(env copy 0, episode step 15)"], 139),
    ("raise_step", 140, 1, ["raised in step at env step 139 (env copy 0, episode step 15): "
                            "RuntimeError: simulator diverged on step 140"], 139),
    ("raise_reset", 6, 1, ["raised in reset(seed=", "at env step 124 (env copy 0): RuntimeError: simulator lost its "
                           "license on reset 6"], 124),
]


@pytest.mark.parametrize("fail, at, agent, parts, env_step", FAILURES, ids=[f[0] for f in FAILURES])
def test_failing_user_env_ends_as_env_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], fail: str, at: int,
                                            agent: int, parts: list[str], env_step: int) -> None:
    args = ["train", "--env", "faulty_envs:make", "--set", f"env.kwargs.fail={fail}", "--set", f"env.kwargs.at={at}",
            "--set", f"env.kwargs.agent={agent}", "--logdir", tmp_path, "--name", "bad", "--steps", 300, "-q",
            *TINY_ARGS]
    code, out, err = run_cli(args, capsys)
    line = one_error_line(code, err)
    assert line.startswith("env faulty_envs:make ")
    for part in parts:
        assert part in line
    run = tmp_path / "bad"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "env_error" and summary["error"] == line
    assert summary["env_steps"] == env_step and summary["eval_history"][0]["env_steps"] == 100
    # The last checkpoint (env step 100) is kept: nothing newer was written from the failed step.
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["env_steps"] == 100
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    code, out, _ = run_cli(["doctor", run], capsys)  # says the env failed, not that the run was healthy
    assert code == 0 and f"the environment failed: {line}\nverdict: no training instability; fix the environment" in out


def test_env_failing_in_evaluation_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each evaluation builds fresh env copies: their 24th step fails, long before the training env's.
    args = ["train", "--env", "faulty_envs:make", "--set", "env.kwargs.fail=nan_obs", "--set", "env.kwargs.at=24",
            "--logdir", tmp_path, "--name", "ev", "--steps", 300, "-q", *TINY_ARGS, "--set", "train.eval_every=20"]
    line = one_error_line(*run_cli(args, capsys)[::2])
    assert line == ("env faulty_envs:make returned a non-finite observation (nan) for agent a_1 at env step 20 "
                    "(evaluation 1, env copy 0, episode step 24)")
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["status"] == "env_error" and summary["env_steps"] == 20 and summary["error"] == line


def test_sync_vector_env_checks_every_copy() -> None:
    """The generic vector env names the env copy whose output was bad: copy 1 of 3, on its third step."""
    made: list[faulty_envs.FaultyEnv] = []

    def fn() -> faulty_envs.FaultyEnv:
        made.append(faulty_envs.FaultyEnv("inf_reward" if len(made) == 1 else "none", at=3, agent=0))
        return made[-1]

    vec = SyncVectorEnv(fn, 3, seed=0, name="mine:make")
    vec.reset()
    zeros = np.zeros((3, 2, 2), np.float32)
    vec.step(zeros)
    vec.step(zeros)
    with pytest.raises(EnvOutputError) as info:
        vec.step(zeros)
    e = info.value
    assert (e.env_id, e.env_index, e.agent, e.field, e.episode_step) == ("mine:make", 1, "a_0", "reward", 3)
    assert str(e) == "env mine:make returned a non-finite reward (inf) for agent a_0 (env copy 1, episode step 3)"


def test_sync_vector_env_refuses_malformed_observations() -> None:
    class Short(faulty_envs.FaultyEnv):
        def _obs(self, poison: bool) -> dict[str, np.ndarray]:
            return {a: o[:2] for a, o in super()._obs(poison).items()}

    with pytest.raises(EnvOutputError, match=r"env short returned an observation of size 2 \(its space has 3\) "
                                             r"for agent a_0 \(env copy 0, episode step 0\)"):
        SyncVectorEnv(Short, 1, seed=0, name="short").reset()


def test_fast_port_reports_a_physics_nan() -> None:
    """Two agents on the same spot: the contact force divides 0 by 0 (in mpe2 too); the port reports it."""
    venv = FastMPEVectorEnv("simple_spread_v3", {"N": 3, "continuous_actions": True}, 4, seed=0)
    venv.reset()
    venv._s.pos[:, 1, 2] = venv._s.pos[:, 0, 2]  # env copy 2: agent_1 on top of agent_0
    with np.errstate(invalid="ignore", divide="ignore"), pytest.raises(EnvOutputError) as info:
        venv.step(np.full((4, 3, 5), 0.5, np.float32))
    e = info.value
    assert (e.env_id, e.env_index, e.field, e.episode_step) == ("simple_spread_v3", 2, "observation", 1)
    assert e.agent in ("agent_0", "agent_1", "agent_2")


# ---------------------------------------------------------------------------------------------- 8: sweep threads
def _two_thread_preset(tmp_path: Path) -> Path:
    """A preset asking for two torch threads (as maddpg_spread_fast.yaml does), with the tiny budget."""
    path = tmp_path / "two_threads.yaml"
    body = {"base": str(EXPERIMENTS / "maddpg_spread.yaml"), "train": {"torch_threads": 2}}
    path.write_text(yaml.safe_dump(body))
    return path


def _ablation(tmp_path: Path, arms: dict[str, Any], extra: str = "", steps: int = 200) -> Path:
    path = tmp_path / "threads.yaml"
    base_set = {**TINY, "train.hooks": ["thread_hook:ThreadsSeen"]}
    path.write_text(yaml.safe_dump({"base": {"config": str(_two_thread_preset(tmp_path)), "set": base_set},
                                    "design": "arms", "arms": arms, "seeds": 1, "steps": steps}) + extra)
    return path


def test_threads_are_capped_in_the_plan(tmp_path: Path) -> None:
    plan = sweep.make_plan(_ablation(tmp_path, {"a": {}}), probe=False)
    assert plan.arms[0].config["train"]["torch_threads"] == 1  # the preset's 2, capped
    plan = sweep.make_plan(_ablation(tmp_path, {"a": {}}, "threads_per_worker: 2\n"), probe=False)
    assert plan.arms[0].config["train"]["torch_threads"] == 2
    with pytest.raises(UserError, match="arm a: train.torch_threads=4 is above threads_per_worker=2"):
        sweep.make_plan(_ablation(tmp_path, {"a": {"train.torch_threads": 4}}, "threads_per_worker: 2\n"), probe=False)
    with pytest.raises(UserError, match="threads_per_worker"):
        sweep.make_plan(_ablation(tmp_path, {"a": {}}, "threads_per_worker: 0\n"), probe=False)


def test_ray_tasks_reserve_their_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without starting Ray: a task reserves as many CPUs as its trial's threads; a local instance gets
    workers x threads CPUs."""
    calls: dict[str, Any] = {}

    class Task:
        def options(self, **kw: Any) -> "Task":
            calls.setdefault("options", []).append(kw)
            return self

        def remote(self, trial: Any) -> str:
            return trial.id

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.update(init=kw),
                                 remote=lambda **kw: (calls.update(remote=kw), lambda fn: Task())[1])
    monkeypatch.setitem(sys.modules, "ray", fake)
    backend = sweep.make_backend("ray", 3, None, threads=2)
    assert calls["init"]["num_cpus"] == 6
    trial = sweep.Trial("a", 0, "/tmp/x", {"train": {"torch_threads": 2}})
    assert backend.submit(trial) == "a/seed_0" and calls["options"] == [{"num_cpus": 2}]


def test_a_trial_runs_the_threads_its_plan_allows(tmp_path: Path) -> None:
    """The file may ask for more: with threads_per_worker 2 the preset's 2 threads run (measured in the trial)."""
    # 80 steps, 3 updates: two threads on a shared 2-core machine are slow to synchronise.
    plan = sweep.make_plan(_ablation(tmp_path, {"a": {}}, "threads_per_worker: 2\n", steps=80), probe=False)
    before = torch.get_num_threads()
    try:
        result = sweep.run_trial(sweep.Trial("a", 0, str(tmp_path / "run"), plan.arms[0].config))
    finally:
        torch.set_num_threads(before)
    assert result.state == "completed", result.error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["hooks"]["threads_seen"]["torch_threads"] == [2]


def test_pool_worker_runs_one_thread(tmp_path: Path) -> None:
    """--workers 2 and a preset asking for 2 threads: the trial's config says 1 and its pool worker ran 1."""
    out = tmp_path / "sweep"
    outcome = sweep.run_sweep(_ablation(tmp_path, {"spread": {}}), out, workers=2, quiet=True)
    assert outcome.counts["completed"] == 1, outcome.failed
    run = out / "runs" / "spread" / "seed_0"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["torch_threads"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["hooks"]["threads_seen"]["torch_threads"] == [1]


def test_trial_whose_env_fails_is_failed_with_the_env_error(tmp_path: Path) -> None:
    """What a worker returns for a trial whose env fails: failed, with the env's one-line error (the sweep puts it
    in index.json and the report's list of failed trials), and the run's summary says env_error."""
    (tmp_path / "faulty.yaml").write_text(yaml.safe_dump({
        "base": "two_threads.yaml", "env": {"id": "faulty_envs:make", "kwargs": {"fail": "nan_obs", "at": 120}}}))
    plan = sweep.make_plan(_ablation(tmp_path, {"broken": {"config": "faulty.yaml"}}))  # an arm on another preset
    result = sweep.run_trial(sweep.Trial("broken", 0, str(tmp_path / "run"), plan.arms[0].config))
    assert result.state == "failed"
    assert result.error.startswith("EnvOutputError: env faulty_envs:make returned a non-finite observation (nan) for "
                                   "agent a_1 at env step 119 (env copy 0, episode step 20)")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "env_error"


@pytest.mark.slow
def test_ray_workers_run_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real local Ray instance (~30 s to start here): the trial's worker ran the capped thread count."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "ray"
    outcome = sweep.run_sweep(_ablation(tmp_path, {"spread": {}}), out, workers=2, backend="ray", quiet=True)
    assert outcome.counts["completed"] == 1, outcome.failed
    summary = json.loads((out / "runs" / "spread" / "seed_0" / "summary.json").read_text())
    assert summary["hooks"]["threads_seen"]["torch_threads"] == [1]


def test_a_users_own_envs_and_agents_packages_break_nothing(tmp_path: Path) -> None:
    """A project folder with its own ``envs/`` and ``agents/`` packages (common in RL): the documented commands
    run from it, and each side imports its own package (ours are marl_stability.envs / marl_stability.agents)."""
    for name in ("envs", "agents"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    listed = subprocess.run([sys.executable, "-m", "marl_stability", "envs", "simple_spread_v3"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and "agent_0" in listed.stdout and not listed.stderr.strip(), listed.stderr
    both = ("import envs, agents\nfrom marl_stability import envs as ours, agents as our_agents\n"
            "print(envs.OWNER, agents.OWNER, ours.make.__module__, our_agents.__name__)")
    out = subprocess.run([sys.executable, "-c", both], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["user", "envs", "user", "agents", "marl_stability.envs.registry",
                                  "marl_stability.agents"]
