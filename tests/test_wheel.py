"""``pip install`` of a built wheel (not editable) gives a working ``marl-stability`` whose presets resolve by name,
run from a folder outside the repository (issue 14, item 9).

The test builds the wheel from a copy of the sources (nothing is written into the checkout), makes a fresh virtual
environment whose site-packages reaches this environment's through a ``.pth`` line (torch and the other
dependencies without a download) and installs the wheel there with ``pip --no-deps --no-index``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from marl_stability.config import dump_yaml, load_config
from marl_stability.studies import sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
TINY = ["--set", "maddpg.warmup_steps=50", "--set", "maddpg.batch_size=16", "--set", "maddpg.update_every=10",
        "--set", "train.eval_every=100", "--set", "train.eval_episodes=2", "--set", "env.num_envs=1"]


def _fresh_venv_with_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of the sources, make a venv whose site-packages reaches this environment's
    (a .pth line: torch and the other dependencies without a download) and pip-install the wheel into it."""
    src = tmp / "src"
    for part in ("marl_stability", "envs", "agents", "experiments"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("marl_stability-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True)
    return venv


def test_wheel_install_runs_outside_the_repository(tmp_path: Path) -> None:
    venv = _fresh_venv_with_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}

    def cli(*args: Any) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "marl-stability"), *map(str, args)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([venv / "bin" / "python", "-c", "import marl_stability.config as c; print(c.__file__); "
                            "print(c.presets_dir())"], cwd=work, env=env, capture_output=True, text=True, check=True)
    module, presets = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(presets).is_relative_to(venv)  # the wheel's, not the repo's
    assert sorted(p.name for p in Path(presets).glob("*.yaml")) == sorted(p.name for p in EXPERIMENTS.glob("*.yaml"))
    done = cli("--help")
    assert done.returncode == 0 and "train" in done.stdout
    done = cli("config", "--config", "maddpg_spread")
    assert done.returncode == 0 and done.stdout == dump_yaml(load_config(EXPERIMENTS / "maddpg_spread.yaml"))
    done = cli("train", "--config", "experiments/repeated_action_failure.yaml", "--steps", 120, "-q", *TINY)
    assert done.returncode == 0, done.stderr
    summary = json.loads((work / "runs" / "repeated_action_failure_simple_spread_v3_s0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 120
    done = cli("config", "--config", "maddpg_sprad")
    assert done.returncode == 2 and re.fullmatch(r"error: config file not found: maddpg_sprad .*presets: .*\n",
                                                 done.stderr)
    # reproduce's and ablate's default files and their base presets resolve inside the wheel: the same plans as
    # from the repository.
    names = ("reproduce", "ablation_spread", "reproduce_single_fixes")
    check = ("import json, sys; from marl_stability.config import resolve_preset; "
             "from marl_stability.studies.reproduce import DEFAULT_CONFIG; from marl_stability.studies.sweep import make_plan; "
             "assert DEFAULT_CONFIG == 'reproduce'; "
             "print(json.dumps([make_plan(resolve_preset(n), probe=False).to_json() for n in sys.argv[1:]]))")
    done = subprocess.run([venv / "bin" / "python", "-c", check, *names], cwd=work, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    expected = [sweep.make_plan(EXPERIMENTS / f"{n}.yaml", probe=False).to_json() for n in names]
    assert json.loads(done.stdout) == json.loads(json.dumps(expected))
